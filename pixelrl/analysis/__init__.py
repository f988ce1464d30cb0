"""Tools that read what a run stored, for studying how it learns (not for training):

    python -m pixelrl.analysis.probe RUN/checkpoints/step_N      # where the estimate errs
    python -m pixelrl.analysis.contact RUN/checkpoints/step_N    # reach, touch, push
    python -m pixelrl.analysis.localize RUN/checkpoints/step_N   # a fresh estimator, offline

Each reads a run's newest checkpoint (the one that keeps its replay). `replay_check` tells
whether a replay holds whole, real episodes.
"""
