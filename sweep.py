"""Run a grid of training configs x seeds on Ray (one machine or a cluster) and report the
mean and spread of their final eval success.

    pip install -e ".[sweep]"
    python sweep.py --env-id FetchReach-v4 --full-state --total-steps 400 \\
        --grid learning-rate=0.001,0.0003 --seeds 0 1
    python sweep.py --encoder manip --grid encoder-grad=critic,actor --grid drq=true,false \\
        --seeds 0 1 2 --gpus-per-trial 0.25 --address auto       # on a Ray cluster
    python sweep.py --report runs                               # the table, at any time

Any train.py flag sets the base config; `--grid flag=v1,v2` (repeatable) varies one; every
combination runs once per seed, each in its usual runs/<tag>/seed<N>/. Running the same
command again skips finished trials and resumes interrupted ones from their checkpoints.
The report goes to <runs-dir>/sweep_report.md and .json. Every flag: python sweep.py --help
"""

import os
import sys
from dataclasses import dataclass, field
from typing import Annotated

os.environ.setdefault("MUJOCO_GL", "egl")  # inherited by the Ray workers started from here
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import tyro

from pixelrl.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class SweepArgs:
    """A grid of pixelrl training runs on Ray."""

    train: TrainConfig = field(default_factory=TrainConfig)
    grid: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """A training flag and the values to try: --grid learning-rate=0.001,0.0003; repeat it to
    vary several flags (every combination runs). Booleans take true,false."""
    seeds: tuple[int, ...] = (0,)
    """Seeds to run each config with (--seed is ignored)."""
    address: str | None = None
    """Ray cluster to join: auto, or ray://host:port. Default: start a local Ray."""
    num_cpus: int | None = None
    """CPUs of the local Ray (default: all of this machine's)."""
    gpus_per_trial: float = 0.0
    """GPU share each trial asks Ray for (0.25: four trials per GPU)."""
    max_retries: int = 2
    """Times Ray re-runs a trial whose process died; each retry resumes from its checkpoint."""
    eval_episodes: int = 20
    """Episodes of eval.py on each trial's last checkpoint."""
    report: str | None = None
    """Only write and print the report for this runs directory, then exit."""


def main() -> int:
    args = tyro.cli(SweepArgs, config=(tyro.conf.OmitArgPrefixes,), description=__doc__)
    from pixelrl.sweep import report, run_sweep

    try:
        if args.report is not None:
            if not os.path.isdir(args.report):
                raise ConfigError(f"--report {args.report}: no such directory")
            print(report(args.report)["markdown"])
            return 0
        if not args.seeds:
            raise ConfigError("--seeds: give at least one seed")
        return run_sweep(
            args.train,
            args.grid,
            args.seeds,
            address=args.address,
            gpus_per_trial=args.gpus_per_trial,
            eval_episodes=args.eval_episodes,
            max_retries=args.max_retries,
            num_cpus=args.num_cpus,
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
