"""The seeds' three-panel training figure from TensorBoard events.

    python -m pixelrl.plot runs/manip/seed0 runs/manip_DrQ/seed0 --out curves.png

Panels, sharing the step axis: rollout/success_rate, train/critic_loss, train/actor_loss. Each
run directory (or any directory holding event files) is one curve, labelled by its path; a
directory with several seed*/ runs below it contributes each of them. Needs matplotlib
(`pip install -e .[plot]`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PANELS = (
    ("rollout/success_rate", "success rate"),
    ("train/critic_loss", "critic loss"),
    ("train/actor_loss", "actor loss"),
)


def find_runs(paths) -> list[Path]:
    """Directories that directly hold TensorBoard event files, under the given paths."""
    runs = []
    for path in map(Path, paths):
        found = sorted({p.parent for p in path.rglob("events.out.tfevents.*")})
        if not found:
            raise FileNotFoundError(f"{path}: no TensorBoard event files found")
        runs.extend(found)
    return runs


def read_scalars(run: Path) -> dict[str, tuple[list[int], list[float]]]:
    """{tag: (steps, values)} for the plotted tags; the last write of a step wins (resume)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    out = {}
    for tag, _ in PANELS:
        if tag in events.Tags()["scalars"]:
            by_step = {e.step: e.value for e in events.Scalars(tag)}
            steps = sorted(by_step)
            out[tag] = (steps, [by_step[s] for s in steps])
    return out


def label_for(run: Path, runs: list[Path]) -> str:
    parts = [run.parts for run in runs]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return "/".join(run.parts[common:]) or run.name


def plot(paths, out: str | Path, title: str | None = None) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise SystemExit("the plot needs matplotlib: pip install -e .[plot]") from err
    runs = find_runs(paths)
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for run in runs:
        scalars = read_scalars(run)
        label = label_for(run, runs)
        for ax, (tag, _) in zip(axes, PANELS, strict=True):
            if tag in scalars:
                steps, values = scalars[tag]
                ax.plot(steps, values, label=label, linewidth=1.2)
    for ax, (_, name) in zip(axes, PANELS, strict=True):
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("env steps")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (or parents of them)")
    parser.add_argument("--out", default="curves.png", help="PNG to write")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        path = plot(args.runs, args.out, args.title)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
