"""benchmarks/: the speed benchmarks measure what they name (update_cost.py: the update with
the image in it, SAC's with the state estimator's stored estimates, the no-pixels control's)."""

import importlib.util
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(script: str):
    spec = importlib.util.spec_from_file_location(script, ROOT / f"benchmarks/{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_update_cost_times_the_end_to_end_and_the_estimator_update_beside_the_control(
    monkeypatch,
):
    """Pixel Push with the image in SAC's update (end to end), SAC with the state estimator
    (no image in its update), and the no-pixels control, whose heads read as many numbers."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # its `timing` import
    cost = _load("update_cost")
    end_to_end = cost.make_agent(cost.config("pixels", "critic"), "cpu")
    split = cost.make_agent(cost.config("pixels"), "cpu")
    no_pixels = cost.make_agent(cost.config("no-pixels"), "cpu")
    assert end_to_end.image is not None and split.sac.image is None and no_pixels.image is None
    assert split.sac.critic_keys[-1] == "achieved_goal"  # the privileged critic
    rows = cost.main(["--batch-sizes", "4", "--seconds", "0"])
    assert [row["batch"] for row in rows] == [4]
    assert all(math.isfinite(value) and value > 0 for row in rows for value in row.values())
