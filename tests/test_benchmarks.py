"""benchmarks/cuda_suite.sh end to end on the CPU in smoke mode (the GPU path, in minutes)."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cuda_suite_runs_end_to_end_in_smoke_mode(tmp_path):
    out = tmp_path / "suite"
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks/cuda_suite.sh"), str(out), "--device", "cpu", "--smoke"],
        cwd=ROOT,
        env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    update = (out / "update.md").read_text()
    assert "| pixelrl (eager) | manip |" in update and "| pixelrl (compile) | manip |" in update
    assert "| SB3 DrQv2SACPolicy | manip |" in update
    assert "| pixelrl EpisodeReplay |" in (out / "buffer.md").read_text()
    fps = (out / "fps.md").read_text()
    assert "| pixelrl (eager) | native 84 |" in fps and "| SB3 (subproc) | native 84 |" in fps
    evals = (out / "push_evals.md").read_text().splitlines()
    assert len(evals) == 4 and evals[-1].startswith("| step_000000000300 | 300 |")
    assert (out / "push_curves.png").stat().st_size > 10_000
    assert "device: cpu" in (out / "machine.txt").read_text()
