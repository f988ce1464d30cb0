"""Evaluate a checkpoint with the deterministic policy (tanh of the mean action).

    python eval.py --checkpoint runs/manip/seed0                      # its latest checkpoint
    python eval.py --checkpoint runs/manip/seed0/checkpoints/step_000000500000 --episodes 100
    python eval.py --checkpoint runs/manip/seed0 --video rollout.gif   # or .mp4 (imageio-ffmpeg)

Uses the training run's env settings; writes eval.json beside the checkpoint.
"""

import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
# Idle OpenMP threads sleep instead of spinning: on a small CPU, spinning torch threads take
# the cores the env workers render on (collection 97 -> 130 env steps/s on 2 cores; the
# update speed does not change). Read when torch loads, so it is set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import tyro

from pixelrl.config import ConfigError
from pixelrl.evaluation import EvalArgs, evaluate


def main() -> int:
    args = tyro.cli(EvalArgs, description=__doc__)
    try:
        evaluate(args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
