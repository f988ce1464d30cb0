"""Grids of configs x seeds on Ray, and the report of their results.

A sweep is a base training config, a grid over some of its fields (named as their train.py
flags) and a list of seeds. Each (config, seed) is one trial: one ordinary training run in
its usual directory runs/<config tag>/seed<N>/, so eval.py, the plot, --resume and
TensorBoard work on it unchanged. Trials are Ray tasks with resource requests (CPUs: the
learner plus one per env worker; a GPU fraction, so that several trials share a GPU), on a
local Ray or a cluster.

The run directories are the sweep's state: a trial whose latest checkpoint has reached
--total-steps and holds its eval.json is finished and skipped, any other resumes from its
latest checkpoint (or starts; a trained one only evaluates). So running the same sweep
again runs nothing twice, and resumes what was stopped.
Ray re-runs a trial whose process died (--max-retries; each retry resumes too), and a trial
that fails is reported with its error while the others go on.

The report (`report(runs_dir)`) evaluates nothing itself: it reads each seed's latest
checkpoint and the eval.json that the trial wrote beside it (eval.py, deterministic policy),
and gives per config the mean and std across seeds of the final eval success, the steps and
the wall time.

Ray is an optional extra (pip install -e ".[sweep]"); nothing else in pixelrl imports it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import tyro

from pixelrl.build import run_directory
from pixelrl.checkpoint import latest_checkpoint, list_checkpoints
from pixelrl.compat import config_tag
from pixelrl.config import ConfigError, TrainConfig, validate

SECTIONS = ("env", "replay", "network", "sac", "run")
# Fields a grid may not vary: they say where and how a run is stored, not what it learns.
NOT_GRIDDABLE = {"seed", "runs_dir", "resume", "progress"}
REPORT_NAME = "sweep_report"


# ---------------------------------------------------------------------------- the grid
def field_section(name: str) -> str:
    """The config section holding a field given as its flag name (learning-rate)."""
    field_name = name.replace("-", "_")
    for section in SECTIONS:
        cls = type(getattr(TrainConfig(), section))
        if field_name in {f.name for f in dataclasses.fields(cls)}:
            if field_name in NOT_GRIDDABLE:
                break
            return section
    names = sorted(
        f.name.replace("_", "-")
        for section in SECTIONS
        for f in dataclasses.fields(type(getattr(TrainConfig(), section)))
        if f.name not in NOT_GRIDDABLE
    )
    raise ConfigError(f"--grid {name}: not a training flag a grid can vary; one of {names}")


def parse_grid(specs) -> list[tuple[str, list[str]]]:
    """['learning-rate=0.001,0.0003', ...] -> [('learning-rate', ['0.001', '0.0003']), ...]"""
    grid = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name or not values:
            raise ConfigError(
                f"--grid {spec!r}: write it as flag=value1,value2, e.g. learning-rate=0.001,0.0003"
            )
        field_section(name)
        grid.append((name.replace("_", "-"), values.split(",")))
    if len({name for name, _ in grid}) != len(grid):
        raise ConfigError("--grid: each flag at most once")
    return grid


def grid_configs(base: TrainConfig, grid: list[tuple[str, list[str]]]) -> list[TrainConfig]:
    """One config per point of the grid (the product of the value lists), each value parsed
    and checked exactly as train.py would, by tyro and `validate`."""
    configs = []
    for values in itertools.product(*(v for _, v in grid)) if grid else [()]:
        args = []
        for (name, _), value in zip(grid, values, strict=True):
            args += _flag(base, name, value)
        try:
            cfg = tyro.cli(
                TrainConfig,
                args=args,
                default=base,
                config=(tyro.conf.OmitArgPrefixes,),
                console_outputs=False,
            )
        except SystemExit as err:
            raise ConfigError(f"--grid: {' '.join(args)} is not a valid setting") from err
        validate(cfg)
        configs.append(cfg)
    return configs


def _flag(base: TrainConfig, name: str, value: str) -> list[str]:
    section = field_section(name)
    field_name = name.replace("-", "_")
    if isinstance(getattr(getattr(base, section), field_name), bool):
        truth = value.strip().lower()
        if truth not in ("true", "false"):
            raise ConfigError(f"--grid {name}={value}: use true or false")
        return [f"--{name}" if truth == "true" else f"--no-{name}"]
    return [f"--{name}", value]


def with_seed(cfg: TrainConfig, seed: int) -> TrainConfig:
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed))


def is_finished(cfg: TrainConfig) -> bool:
    """Trained to --total-steps and evaluated (a trial stopped during its eval reruns it)."""
    found = latest_checkpoint(run_directory(cfg))
    return (
        found is not None
        and found[2]["step"] >= cfg.run.total_steps
        and (found[0] / "eval.json").is_file()
    )


def trial_resources(cfg: TrainConfig, gpus_per_trial: float) -> dict:
    """CPUs the trial occupies: its learner, plus one per env worker process (none with
    --vector sync, where the envs run in the learner); the GPU share it asks for."""
    workers = cfg.env.n_envs if cfg.env.vector == "async" else 0
    return {"num_cpus": 1 + workers, "num_gpus": gpus_per_trial}


# ---------------------------------------------------------------------------- a trial
def run_trial(cfg: TrainConfig, eval_episodes: int) -> dict:
    """Train (resuming whatever the run directory holds) and evaluate the last checkpoint.

    Runs inside a Ray worker process; it is also a plain function (tests, notebooks).
    """
    from pixelrl.evaluation import EvalArgs, evaluate
    from pixelrl.trainer import Trainer

    run_dir = run_directory(cfg)
    resume = bool(list_checkpoints(run_dir))  # an interrupted trial continues
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=resume, progress=False))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "trial.pid").write_text(str(os.getpid()))  # to find (or stop) a trial
    exit_code = Trainer(cfg).run()
    if exit_code != 0:
        raise RuntimeError(f"{run_dir}: training stopped with exit code {exit_code}")
    result = evaluate(EvalArgs(checkpoint=str(run_dir), episodes=eval_episodes))
    return {"run_dir": str(run_dir), "success_rate": result["success_rate"]}


# ---------------------------------------------------------------------------- the report
@dataclass
class SeedResult:
    seed: int
    steps: int
    wall_time_s: float
    success_rate: float | None  # eval.json of the latest checkpoint, if it was evaluated


def collect(runs_dir: str | os.PathLike) -> dict[str, list[SeedResult]]:
    """{config tag: [one SeedResult per seed directory with a checkpoint]}"""
    results: dict[str, list[SeedResult]] = {}
    for seed_dir in sorted(Path(runs_dir).glob("*/seed*")):
        found = latest_checkpoint(seed_dir)
        if found is None or not seed_dir.name[4:].isdigit():
            continue
        path, _, meta = found
        eval_file = path / "eval.json"
        success = json.loads(eval_file.read_text())["success_rate"] if eval_file.is_file() else None
        results.setdefault(seed_dir.parent.name, []).append(
            SeedResult(int(seed_dir.name[4:]), meta["step"], meta["wall_time_s"], success)
        )
    return results


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def report(runs_dir: str | os.PathLike) -> dict:
    """Per config: eval success mean +- std across seeds, steps, wall time. Writes
    sweep_report.md and sweep_report.json into runs_dir and returns the JSON's content."""
    rows = {}
    for tag, seeds in collect(runs_dir).items():
        evaluated = [s.success_rate for s in seeds if s.success_rate is not None]
        mean, std = _mean_std(evaluated) if evaluated else (None, None)
        rows[tag] = {
            "seeds": [s.seed for s in seeds],
            "evaluated_seeds": len(evaluated),
            "success_mean": mean,
            "success_std": std,
            "steps": [s.steps for s in seeds],
            "wall_time_s": [s.wall_time_s for s in seeds],
            "per_seed": [dataclasses.asdict(s) for s in seeds],
        }
    lines = [
        "| config | seeds | eval success (mean +- std) | env steps | wall time (mean) |",
        "|---|---|---|---|---|",
    ]
    for tag, row in rows.items():
        success = (
            f"{row['success_mean']:.1%} +- {row['success_std']:.1%}"
            if row["success_mean"] is not None
            else "not evaluated"
        )
        steps = sorted(set(row["steps"]))
        steps_text = f"{steps[0]:,}" if len(steps) == 1 else f"{steps[0]:,}-{steps[-1]:,}"
        wall = sum(row["wall_time_s"]) / len(row["wall_time_s"])
        lines.append(
            f"| {tag} | {len(row['seeds'])} ({row['evaluated_seeds']} evaluated) | {success} "
            f"| {steps_text} | {wall / 60:.1f} min |"
        )
    out = Path(runs_dir)
    (out / f"{REPORT_NAME}.md").write_text("\n".join(lines) + "\n")
    (out / f"{REPORT_NAME}.json").write_text(json.dumps(rows, indent=2))
    return {"rows": rows, "markdown": "\n".join(lines)}


# ---------------------------------------------------------------------------- the sweep
def run_sweep(
    base: TrainConfig,
    grid_specs,
    seeds,
    address: str | None = None,
    gpus_per_trial: float = 0.0,
    eval_episodes: int = 20,
    max_retries: int = 2,
    num_cpus: int | None = None,
) -> int:
    """Run every unfinished trial of the grid on Ray; 0 when all finished, 1 otherwise."""
    configs = grid_configs(base, parse_grid(grid_specs))
    trials = [with_seed(cfg, seed) for cfg in configs for seed in seeds]
    tags = [config_tag(cfg) for cfg in configs]
    if len(set(tags)) != len(tags):
        raise ConfigError(f"--grid gives configs with the same run directory: {tags}")
    todo = [cfg for cfg in trials if not is_finished(cfg)]
    print(
        f"sweep: {len(configs)} config(s) x {len(seeds)} seed(s) = {len(trials)} trials; "
        f"{len(trials) - len(todo)} finished, {len(todo)} to run"
    )
    failures = {}
    if todo:
        import ray

        ray.init(
            address=address,
            num_cpus=num_cpus if address is None else None,
            include_dashboard=False,
            configure_logging=False,
            ignore_reinit_error=True,
        )
        try:
            remote_trial = ray.remote(run_trial)
            cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
            pending = {}
            for cfg in todo:
                options = trial_resources(cfg, gpus_per_trial)
                if options["num_cpus"] > cluster_cpus:  # else Ray would wait for it forever
                    print(
                        f"  note: a trial wants {options['num_cpus']} CPUs, the cluster has "
                        f"{cluster_cpus}; it asks for {cluster_cpus}"
                    )
                    options["num_cpus"] = cluster_cpus
                ref = remote_trial.options(**options, max_retries=max_retries).remote(
                    cfg, eval_episodes
                )
                pending[ref] = cfg
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                cfg = pending.pop(done[0])
                name = f"{config_tag(cfg)}/seed{cfg.run.seed}"
                try:
                    result = ray.get(done[0])
                    print(f"  done   {name}: eval success {result['success_rate']:.1%}")
                except Exception as err:  # a failed trial is reported; the others go on
                    failures[name] = f"{type(err).__name__}: {err}".splitlines()[0]
                    print(f"  FAILED {name}: {failures[name]}")
        finally:
            ray.shutdown()
    summary = report(base.run.runs_dir)
    print(summary["markdown"])
    if failures:
        print(f"{len(failures)} trial(s) failed; run the same command again to resume them")
        return 1
    return 0
