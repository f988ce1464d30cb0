"""Training curves from TensorBoard events, in the three panels the SB3 pipeline drew.

    python -m pixelrl.plot runs/<tag1>/seed0 runs/<tag2>/seed0 --out curves.png

Panels, sharing the step axis: rollout/success_rate, train/critic_loss, train/actor_loss, with
--probe the encoder probe's median error of the achieved goal (cm), and with --estimate how far
the state estimates SAC trains on are from the truth and from the current estimator, beside
the current estimator's own error (cm; pixelrl/agents/estimator.py). Each
run directory (or any directory holding event files) is one curve, labelled by its path. Runs
that are seeds of one config (runs/<tag>/seed0, seed1, ...) become one curve: the mean
across seeds with a band from the lowest to the highest seed, up to the step all of them
reached. Needs matplotlib (`pip install -e .[plot]`).

    python -m pixelrl.plot runs/manip_lr0.001 runs/manip_lr0.0003 --out sweep.png   # 2 bands
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

PANELS = (
    ("rollout/success_rate", "success rate"),
    ("train/critic_loss", "critic loss"),
    ("train/actor_loss", "actor loss"),
)
# --probe: does the encoder know where things are (pixelrl.diagnostics), next to success.
PROBE_PANELS = (("probe/achieved_goal_median_error_cm", "probe: median error (cm)"),)
# --estimate: the stored estimates' staleness (the state estimator's runs).
ESTIMATE_PANELS = (
    ("estimate/stored_error_cm", "stored estimate\nvs truth (cm)"),
    ("estimate/staleness_cm", "stored estimate vs\ncurrent estimator (cm)"),
    ("probe/state_estimate_median_error_cm", "current estimator\nvs truth (cm)"),
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


class _ResumePurgeNotice(logging.Filter):
    """Drops TensorBoard's "out of order event.step ... Purging" warning: a resumed run writes
    from its checkpoint's step again on purpose (the purge is what makes steps unique)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "out of order event.step" not in record.getMessage()


def read_scalars(run: Path, panels=PANELS) -> dict[str, tuple[list[int], list[float]]]:
    """{tag: (steps, values)} for the plotted tags; the last write of a step wins (resume)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    notice = _ResumePurgeNotice()
    logging.getLogger("tensorboard").addFilter(notice)
    try:
        events.Reload()
    finally:
        logging.getLogger("tensorboard").removeFilter(notice)
    out = {}
    for tag, _ in panels:
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


def group_seeds(runs: list[Path]) -> dict[str, list[Path]]:
    """{label: runs}: the seed<N> directories of one config share a label (the config's)."""
    groups: dict[str, list[Path]] = {}
    for run in runs:
        is_seed = run.name.startswith("seed") and run.name[4:].isdigit()
        key = run.parent if is_seed else run
        groups.setdefault(key, []).append(run)
    keys = list(groups)
    return {label_for(key, keys): groups[key] for key in keys}


def seed_band(curves: list[tuple[list[int], list[float]]]):
    """(steps, mean, min, max) across seeds on the steps of the first seed, up to the last
    step every seed reached; each seed's values are interpolated onto those steps."""
    import numpy as np

    last = min(steps[-1] for steps, _ in curves)
    grid = np.array([s for s in curves[0][0] if s <= last])
    values = np.stack([np.interp(grid, steps, vals) for steps, vals in curves])
    return grid, values.mean(0), values.min(0), values.max(0)


def plot(
    paths, out: str | Path, title: str | None = None, probe: bool = False, estimate: bool = False
) -> Path:
    """The figure of the runs under `paths`; `probe` adds a panel, the held-out linear probe's
    median error of the achieved goal from the image features; `estimate` three, the state
    estimates' errors (ESTIMATE_PANELS)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise SystemExit("the plot needs matplotlib: pip install -e .[plot]") from err
    groups = group_seeds(find_runs(paths))
    panels = (*PANELS, *(PROBE_PANELS if probe else ()), *(ESTIMATE_PANELS if estimate else []))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3 * len(panels)), sharex=True)
    drawn = 0
    for index, (label, runs) in enumerate(groups.items()):
        # One colour per group in every panel: a panel that only some groups log (--estimate)
        # must not hand their lines the next free colour.
        color = f"C{index % 10}"
        per_run = [read_scalars(run, panels) for run in runs]
        drawn += sum(len(scalars) for scalars in per_run)
        for ax, (tag, _) in zip(axes, panels, strict=True):
            curves = [scalars[tag] for scalars in per_run if tag in scalars]
            if not curves:
                continue
            if len(curves) == 1:
                ax.plot(*curves[0], label=label, color=color, linewidth=1.2)
                continue
            steps, mean, low, high = seed_band(curves)
            ax.plot(steps, mean, label=f"{label} ({len(curves)} seeds)", color=color, linewidth=1.2)
            ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
    if not drawn:
        plt.close(fig)
        raise FileNotFoundError(
            f"{', '.join(map(str, paths))}: the event files hold none of "
            f"{', '.join(tag for tag, _ in panels)} (a run shorter than --log-interval?)"
        )
    for ax, (tag, name) in zip(axes, panels, strict=True):
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if tag.endswith("_cm"):  # errors fall from metres to centimetres: a log axis shows both
            ax.set_yscale("log")
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
    parser.add_argument(
        "--probe", action="store_true", help="add the encoder probe's median error (cm)"
    )
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="add the stored state estimates' error against the truth and the current estimator",
    )
    args = parser.parse_args(argv)
    try:
        path = plot(args.runs, args.out, args.title, probe=args.probe, estimate=args.estimate)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
