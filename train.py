"""Train SAC + HER on a Fetch task from pixels.

    python train.py --encoder manip --no-drq            # the recipe (see README)
    python train.py --env-id FetchReach-v4 --full-state --total-steps 10000
    python train.py --resume                            # continue the run from its last checkpoint

Every flag: python train.py --help
"""

import os
import signal
import sys
from contextlib import contextmanager

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering in the env workers
# Idle OpenMP threads sleep instead of spinning: on a small CPU, spinning torch threads take
# the cores the env workers render on (collection 97 -> 130 env steps/s on 2 cores; the
# update speed does not change). Read when torch loads, so it is set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import tyro

from pixelrl.config import ConfigError, TrainConfig
from pixelrl.trainer import Trainer


@contextmanager
def stop_on_signals(trainer: Trainer):
    """Ctrl-C or SIGTERM (to this process or its whole group): finish the step, checkpoint,
    exit 0. A second one stops at once."""

    def request_stop(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.request_stop()
        # os.write, not print: a signal that lands while the loop prints would make print
        # raise ("reentrant call") and lose the checkpoint.
        message = f"\n{signal.Signals(signum).name}: finishing this step, then checkpointing\n"
        os.write(sys.stdout.fileno(), message.encode())

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main() -> int:
    cfg = tyro.cli(TrainConfig, config=(tyro.conf.OmitArgPrefixes,), description=__doc__)
    try:
        trainer = Trainer(cfg)
    except (ConfigError, MemoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with stop_on_signals(trainer):
        return trainer.run()


if __name__ == "__main__":
    sys.exit(main())
