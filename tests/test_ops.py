"""ops/gpu_run.sh: its plan fits one 10-minute window, and its whole path runs on the CPU in
smoke mode (in minutes)."""

import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINDOW_S = 600  # the command's time on the GPU machine
SPARE_S = 60  # starting the machine and copying the results back


def gpu_run(*args, timeout=60):
    return subprocess.run(
        ["bash", str(ROOT / "ops/gpu_run.sh"), *args],
        cwd=ROOT,
        env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_plan_fits_one_call_with_a_minute_to_spare():
    result = gpu_run("--plan")
    assert result.returncode == 0, result.stderr
    caps = {
        name.strip(): int(cap)
        for name, cap in re.findall(r"^\| ([^|]+) \| (\d+) \|$", result.stdout, re.M)
    }
    total = caps.pop(next(name for name in caps if name.startswith("total")))
    assert total == sum(caps.values()) <= WINDOW_S - SPARE_S
    assert caps["pixel FetchPush learning run"] >= 120  # the rest goes to learning
    assert "bash ops/gpu_run.sh" in (ROOT / "README.md").read_text()
    assert gpu_run("--plan", "--budget", "300").returncode == 2  # too short to learn


def test_gpu_run_goes_end_to_end_in_smoke_mode_and_leaves_at_most_8_files(tmp_path):
    out = tmp_path / "out"
    # --no-install: this environment has the packages (a checkout may hold .whl/ for 3.12).
    result = gpu_run("--device", "cpu", "--smoke", "--no-install", "--out", str(out), timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir()), files
    summary = (out / "summary.md").read_text()
    assert "| pixel FetchPush learning run |" in summary and "device cpu" in summary
    update = (out / "update.md").read_text()
    assert "| pixelrl (eager) | manip |" in update and "| SB3 DrQv2SACPolicy | manip |" in update
    fps = (out / "fps.md").read_text()
    assert "| pixelrl (eager) | native 84 |" in fps and "| SB3 (subproc) | native 84 |" in fps
    assert "nan" not in fps  # every phase measured, SB3's short slice included
    evals = (out / "push.md").read_text().splitlines()
    assert len(evals) >= 3 and evals[2].startswith("| step_")
    assert (out / "push_curves.png").stat().st_size > 10_000  # the plot refuses empty runs
    with tarfile.open(out / "logs.tar.gz") as logs:  # the Push run was the measured command
        member = next(m for m in logs.getmembers() if m.name.endswith("push_config.json"))
        push_config = json.load(logs.extractfile(member))
    assert push_config["env"]["goal_mode"] == "desired" and push_config["env"]["frame_stack"] == 1
    assert push_config["sac"]["encoder_grad"] == "estimator"  # train.py's default recipe
    assert "failed (" not in result.stdout  # (a stage stopped at its cap keeps what it had)
