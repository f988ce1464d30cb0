"""pixelrl: from-scratch PyTorch SAC + HER on gymnasium-robotics Fetch tasks from pixels.

"The SB3 prototype", in docstrings and flag help, is the Stable-Baselines3 pipeline pixelrl
replaces, rebuilt as the speed baseline in benchmarks/sb3_pipeline.py: its research found the
recipe pixelrl starts from, and pixelrl keeps its command-line flags with their meaning.
"""

__version__ = "0.1.0"
