"""The three-panel figure from TensorBoard events."""

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from pixelrl.plot import main, read_scalars

pytest.importorskip("matplotlib")


def write_run(path, slope):
    writer = SummaryWriter(str(path))
    for step in range(0, 1000, 100):
        writer.add_scalar("rollout/success_rate", min(1.0, slope * step), step)
        writer.add_scalar("train/critic_loss", 1.0 / (1 + step), step)
        writer.add_scalar("train/actor_loss", -slope * step, step)
    writer.close()


def test_plot_writes_a_png_with_the_curves(tmp_path):
    write_run(tmp_path / "runs" / "a" / "seed0", 0.001)
    write_run(tmp_path / "runs" / "b" / "seed0", 0.0005)
    out = tmp_path / "curves.png"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    from PIL import Image

    image = np.asarray(Image.open(out).convert("L"))
    assert image.shape[0] > 500 and image.shape[1] > 500
    # Not a blank canvas: lines of two colours were drawn.
    colours = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(colours // 32, axis=0)) > 5
    scalars = read_scalars(tmp_path / "runs" / "a" / "seed0")
    assert scalars["rollout/success_rate"][0][:3] == [0, 100, 200]
    assert scalars["rollout/success_rate"][1][-1] == pytest.approx(0.9)


def test_plot_reports_a_path_without_events(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "no TensorBoard event files" in capsys.readouterr().err
