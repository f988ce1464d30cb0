"""sweep.py on a local Ray: grids, resumable trials, failures, and the report."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tyro

from pixelrl.checkpoint import latest_checkpoint, list_checkpoints
from pixelrl.compat import config_tag
from pixelrl.config import ConfigError, TrainConfig
from pixelrl.sweep import grid_configs, is_finished, parse_grid, report, trial_resources

ROOT = Path(__file__).resolve().parents[1]


def base(*flags: str) -> TrainConfig:
    return tyro.cli(TrainConfig, args=list(flags), config=(tyro.conf.OmitArgPrefixes,))


def test_grid_is_the_product_of_values_parsed_as_train_py_would():
    configs = grid_configs(
        base("--env-id", "FetchReach-v4"),
        parse_grid(["learning-rate=1e-3,3e-4", "native-render=true,false"]),
    )
    assert [(c.sac.learning_rate, c.env.native_render) for c in configs] == [
        (1e-3, True),
        (1e-3, False),
        (3e-4, True),
        (3e-4, False),
    ]
    assert len({config_tag(c) for c in configs}) == 4
    assert all(c.env.env_id == "FetchReach-v4" for c in configs)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("learning-rate", "write it as flag=value1,value2"),
        ("seed=0,1", "--grid seed: not a training flag a grid can vary"),
        ("no-such-flag=1", "--grid no-such-flag"),
        ("learning-rate=fast", "--learning-rate fast is not a valid setting"),
        ("encoder=resnet", "--encoder resnet is not a valid setting"),
        ("native-render=yes", "--grid native-render=yes: use true or false"),
        ("batch-size=0", "--batch-size 0: must be >= 1"),
    ],
)
def test_bad_grids_are_clear_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        grid_configs(base(), parse_grid([spec]))


def test_report_means_and_stds_come_from_each_seeds_eval_json(tmp_path):
    import torch

    from pixelrl.checkpoint import save_checkpoint

    successes = {"configA": [0.5, 0.7, 0.9], "configB": [0.2]}
    for tag, values in successes.items():
        for seed, value in enumerate(values):
            run_dir = tmp_path / tag / f"seed{seed}"
            meta = {"wall_time_s": 60.0 * (seed + 1), "config": {}}
            for step in (100, 200):  # the latest checkpoint counts, not an older one
                path = save_checkpoint(run_dir, step, {"w": torch.zeros(1)}, meta)
                rate = value if step == 200 else 0.0
                (path / "eval.json").write_text(json.dumps({"success_rate": rate}))
    (tmp_path / "configB" / "seed1").mkdir()  # no checkpoint yet: not counted
    rows = report(tmp_path)["rows"]
    assert rows["configA"]["success_mean"] == pytest.approx(0.7)
    assert rows["configA"]["success_std"] == pytest.approx(0.2)  # sample std, ddof=1
    assert rows["configA"]["steps"] == [200, 200, 200]
    assert rows["configB"]["success_mean"] == pytest.approx(0.2)
    assert rows["configB"]["success_std"] == 0.0 and rows["configB"]["seeds"] == [0]
    markdown = (tmp_path / "sweep_report.md").read_text()
    assert "| configA | 3 (3 evaluated) | 70.0% +- 20.0% | 200 | 2.0 min |" in markdown


def test_a_trial_counts_as_finished_only_once_its_last_checkpoint_is_evaluated(tmp_path):
    """A trial killed during its eval must run the eval again on the next invocation."""
    import torch

    from pixelrl.build import run_directory
    from pixelrl.checkpoint import save_checkpoint

    cfg = base("--full-state", "--total-steps", "200", "--runs-dir", str(tmp_path))
    run_dir = run_directory(cfg)
    save_checkpoint(run_dir, 100, {"w": torch.zeros(1)}, {"config": {}})
    assert not is_finished(cfg)  # not trained to --total-steps yet
    path = save_checkpoint(run_dir, 200, {"w": torch.zeros(1)}, {"config": {}})
    assert not is_finished(cfg)  # trained, not evaluated
    (path / "eval.json").write_text(json.dumps({"success_rate": 1.0}))
    assert is_finished(cfg)


def test_trial_resources_count_the_learner_and_its_env_workers():
    assert trial_resources(base("--n-envs", "4"), 0.25) == {"num_cpus": 5, "num_gpus": 0.25}
    assert trial_resources(base("--n-envs", "4", "--vector", "sync"), 0)["num_cpus"] == 1


SWEEP = [
    "--env-id", "FetchReach-v4", "--full-state", "--vector", "sync", "--n-envs", "1",
    "--total-steps", "400", "--learning-starts", "100", "--buffer-size", "2000",
    "--batch-size", "16", "--checkpoint-freq", "100", "--no-progress",
    "--grid", "learning-rate=0.001,0.0003", "--seeds", "0", "1",
    "--num-cpus", "2", "--eval-episodes", "2", "--max-retries", "0",
]  # fmt: skip


def sweep(runs: Path, *extra: str, **kwargs):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "sweep.py"), *SWEEP, "--runs-dir", str(runs), *extra],
        cwd=ROOT,
        env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def test_sweep_runs_resumes_a_killed_trial_skips_finished_ones_and_reports(tmp_path):
    runs = tmp_path / "runs"
    train_flags = SWEEP[: SWEEP.index("--grid")]
    victim_tag = config_tag(base(*train_flags, "--learning-rate", "0.001"))
    victim = runs / victim_tag / "seed1"
    killed = {}

    def kill_mid_run():  # the trial's own process, after its first checkpoint
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            if list_checkpoints(victim) and (victim / "trial.pid").is_file():
                found = latest_checkpoint(victim)
                if found and found[2]["step"] < 400:
                    killed["step"] = found[2]["step"]
                    os.kill(int((victim / "trial.pid").read_text()), signal.SIGKILL)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_mid_run, daemon=True)
    killer.start()
    first = sweep(runs)
    out, _ = first.communicate(timeout=900)
    killer.join(timeout=5)
    assert killed, out[-3000:]
    assert first.returncode == 1, out[-3000:]
    assert "0 finished, 4 to run" in out
    assert f"FAILED {victim_tag}/seed1" in out
    assert out.count("  done   ") == 3  # the others went on

    second = sweep(runs)
    out, _ = second.communicate(timeout=900)
    assert second.returncode == 0, out[-3000:]
    assert "3 finished, 1 to run" in out
    assert "resume: " in out and "(env step " in out  # the killed trial continued
    seed_dirs = sorted(runs.glob("*/seed*"))
    assert len(seed_dirs) == 4
    for seed_dir in seed_dirs:
        path, _, meta = latest_checkpoint(seed_dir)
        assert meta["step"] == 400 and (path / "eval.json").is_file()

    checkpoints = {p: p.stat().st_mtime for p in runs.glob("*/seed*/checkpoints/*")}
    third = sweep(runs)
    out, _ = third.communicate(timeout=900)
    assert third.returncode == 0 and "4 finished, 0 to run" in out
    assert {p: p.stat().st_mtime for p in runs.glob("*/seed*/checkpoints/*")} == checkpoints

    # The report: 2 configs x 2 seeds, mean and std as computed from the eval files.
    rows = json.loads((runs / "sweep_report.json").read_text())
    assert len(rows) == 2
    for tag, row in rows.items():
        assert sorted(row["seeds"]) == [0, 1] and row["evaluated_seeds"] == 2
        values = [
            json.loads((latest_checkpoint(runs / tag / f"seed{s}")[0] / "eval.json").read_text())[
                "success_rate"
            ]
            for s in row["seeds"]
        ]
        mean = sum(values) / 2
        std = (sum((v - mean) ** 2 for v in values) / 1) ** 0.5
        assert row["success_mean"] == pytest.approx(mean) and row["success_std"] == pytest.approx(
            std
        )
    markdown = (runs / "sweep_report.md").read_text()
    assert markdown.count("| 2 (2 evaluated) |") == 2
    assert report(runs)["rows"] == rows  # --report at any time gives the same
