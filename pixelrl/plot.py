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

With --evals the paths are eval.py's reports (JSON files, or directories searched for them)
and the figure is their success rate against the checkpoint's step: one line per run seed,
one colour per config, with panels for the goals on the table and in the air where the
reports split them. It needs nothing but the reports, so a results page's eval curve can be
redrawn from the repository after the runs are gone.

    python -m pixelrl.plot --evals results/evals/pickandplace --out pickandplace_eval.png
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


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise SystemExit("the plot needs matplotlib: pip install -e .[plot]") from err
    return plt


def finish(fig, axes, out: str | Path, title: str | None, xlabel: str) -> Path:
    """Legend, axis label and title; writes the PNG and frees the figure."""
    axes[0].legend(loc="upper left", fontsize=7)
    axes[-1].set_xlabel(xlabel)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    pyplot().close(fig)
    return out


def plot(
    paths, out: str | Path, title: str | None = None, probe: bool = False, estimate: bool = False
) -> Path:
    """The figure of the runs under `paths`; `probe` adds a panel, the held-out linear probe's
    median error of the achieved goal from the image features; `estimate` three, the state
    estimates' errors (ESTIMATE_PANELS)."""
    plt = pyplot()
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
    return finish(fig, axes, out, title, "env steps")


EVAL_PANELS = (
    (None, "eval success"),
    ("on_table", "eval success,\ngoals on the table"),
    ("in_air", "eval success,\ngoals in the air"),
)


def read_evals(paths) -> dict[tuple[str, str, str], list[dict]]:
    """{(config, run seed, variant): reports sorted by checkpoint step} from eval.py's JSON
    reports under `paths`; files that are not eval reports (other JSONs beside them) are
    skipped. A checkpoint path .../<config>/seed<N>/checkpoints/step_M names the config and
    the seed (and the runs directory, where one seed ran twice); the variant tells apart
    evaluations of one run that differ in what they ran: the actor handed the true position
    (--true-estimate), or other goals (eval seed, episodes)."""
    import json

    files = []
    for path in map(Path, paths):
        found = sorted(path.rglob("*.json")) if path.is_dir() else [path]
        if not found:
            raise FileNotFoundError(f"{path}: no JSON files found")
        files.extend(found)
    runs: dict[Path, list[dict]] = {}  # by run directory
    for file in files:
        report = json.loads(file.read_text())
        if not {"checkpoint", "checkpoint_step", "success_rate"} <= set(report):
            continue
        checkpoint = Path(report["checkpoint"])
        run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else file
        runs.setdefault(run, []).append(report)
    if not runs:
        raise FileNotFoundError(f"{', '.join(map(str, paths))}: no eval.py reports found")
    names = {run: (run.parent.name, run.name) for run in runs}
    twice = {name for name in names.values() if list(names.values()).count(name) > 1}
    for run, (config, seed) in names.items():
        if (config, seed) in twice:  # a seed run again in another --runs-dir: say which
            names[run] = (config, f"{seed} in {run.parent.parent.name}")
    curves: dict[tuple[str, str, str], list[dict]] = {}
    for run, reports in runs.items():
        config, seed = names[run]
        goal_sets = {(r["seed"], r["episodes"]) for r in reports}
        for report in reports:
            variant = []
            if report.get("true_estimate"):
                variant.append("true estimate")
            if len(goal_sets) > 1:
                variant.append(f"eval seed {report['seed']}, {report['episodes']} episodes")
            key = (config, seed, "; ".join(variant))
            curves.setdefault(key, []).append(report)
    for reports in curves.values():
        reports.sort(key=lambda r: r["checkpoint_step"])
    return curves


def short_names(configs: list[str]) -> dict[str, str]:
    """{config: its name without the _-separated words every config shares} (the env, the
    buffer, the learning rate...), so the legend says what differs."""
    words = [config.split("_") for config in configs]
    shared = set.intersection(*map(set, words)) if len(configs) > 1 else set()
    return {
        config: "_".join(w for w in split if w not in shared) or config
        for config, split in zip(configs, words, strict=True)
    }


def eval_rate(report: dict, part: str | None) -> float | None:
    if part is None:
        return report["success_rate"]
    split = report.get("success_by_goal_height") or {}
    return (split.get(part) or {}).get("success_rate")


def plot_evals(paths, out: str | Path, title: str | None = None) -> Path:
    """The figure of eval.py's reports under `paths` (see the module's docstring)."""
    plt = pyplot()
    curves = read_evals(paths)
    reports = [r for rs in curves.values() for r in rs]
    split = any(eval_rate(r, "in_air") is not None for r in reports)
    panels = EVAL_PANELS if split else EVAL_PANELS[:1]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3 * len(panels)), sharex=True)
    axes = list(axes) if len(panels) > 1 else [axes]
    configs = list(dict.fromkeys(config for config, _, _ in curves))
    names = short_names(configs)
    variants = list(dict.fromkeys((seed, variant) for _, seed, variant in curves))
    styles = ("-", "--", ":", "-.")
    markers = ("o", "s", "^", "D", "v", "x")  # apart where the four line styles repeat
    for (config, seed, variant), runs in curves.items():
        color = f"C{configs.index(config) % 10}"
        index = variants.index((seed, variant))
        style, marker = styles[index % len(styles)], markers[index % len(markers)]
        label = " ".join(filter(None, (names[config], seed, variant and f"({variant})")))
        for ax, (part, _) in zip(axes, panels, strict=True):
            points = [(r["checkpoint_step"], eval_rate(r, part)) for r in runs]
            steps = [step for step, rate in points if rate is not None]
            rates = [rate for _, rate in points if rate is not None]
            if steps:
                ax.plot(steps, rates, style, marker=marker, markersize=3, color=color,
                        linewidth=1.2, label=label)  # fmt: skip
    for ax, (_, name) in zip(axes, panels, strict=True):
        ax.set_ylabel(name)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    return finish(fig, axes, out, title, "env steps (checkpoint)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", nargs="+", help="run directories (or parents of them); with --evals, eval reports"
    )
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
    parser.add_argument(
        "--evals",
        action="store_true",
        help="the paths are eval.py's JSON reports (or directories of them): eval success by step",
    )
    args = parser.parse_args(argv)
    if args.evals and (args.probe or args.estimate):
        parser.error("--probe and --estimate read TensorBoard events; --evals reads eval reports")
    try:
        if args.evals:
            path = plot_evals(args.runs, args.out, args.title)
        else:
            path = plot(args.runs, args.out, args.title, probe=args.probe, estimate=args.estimate)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
