"""pixelrl: from-scratch PyTorch SAC + HER on gymnasium-robotics Fetch tasks from pixels."""

__version__ = "0.1.0"
