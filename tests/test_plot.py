"""The three-panel figure from TensorBoard events."""

import json
import time

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from pixelrl.plot import group_seeds, main, read_evals, read_scalars, seed_band, short_names

pytest.importorskip("matplotlib")


def write_run(path, slope):
    writer = SummaryWriter(str(path))
    for step in range(0, 1000, 100):
        writer.add_scalar("rollout/success_rate", min(1.0, slope * step), step)
        writer.add_scalar("train/critic_loss", 1.0 / (1 + step), step)
        writer.add_scalar("train/actor_loss", -slope * step, step)
        writer.add_scalar("probe/achieved_goal_median_error_cm", 10 - slope * step, step)
        writer.add_scalar("estimate/stored_error_cm", 3 - slope * step, step)
        writer.add_scalar("estimate/staleness_cm", 2 - slope * step, step)
        writer.add_scalar("probe/state_estimate_median_error_cm", 1 - slope * step, step)
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


@pytest.mark.parametrize(
    "flag, panels, expected, taller",
    [
        ("--probe", "PROBE_PANELS", [10.0], 1.25),  # one panel more
        ("--estimate", "ESTIMATE_PANELS", [3.0, 2.0, 1.0], 1.9),  # three panels more
    ],
)
def test_extra_panels_draw_their_scalars(tmp_path, flag, panels, expected, taller):
    from PIL import Image

    import pixelrl.plot

    write_run(tmp_path / "runs" / "a" / "seed0", 0.001)
    plain, extra = tmp_path / "plain.png", tmp_path / "extra.png"
    assert main([str(tmp_path / "runs"), "--out", str(plain)]) == 0
    assert main([str(tmp_path / "runs"), "--out", str(extra), flag]) == 0
    assert Image.open(extra).size[1] > Image.open(plain).size[1] * taller
    tags = getattr(pixelrl.plot, panels)
    scalars = read_scalars(tmp_path / "runs" / "a" / "seed0", tags)
    assert [scalars[tag][1][0] for tag, _ in tags] == expected


def test_plot_reports_runs_without_the_plotted_scalars(tmp_path, capsys):
    writer = SummaryWriter(str(tmp_path / "run"))
    writer.add_scalar("time/fps", 1.0, 0)
    writer.close()
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "x.png")]) == 2
    assert "hold none of rollout/success_rate" in capsys.readouterr().err


def test_plot_reports_a_path_without_events(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "no TensorBoard event files" in capsys.readouterr().err


def test_seeds_of_a_config_become_one_band(tmp_path):
    for seed, slope in enumerate((0.001, 0.0005, 0.0002)):
        write_run(tmp_path / "runs" / "cfg" / f"seed{seed}", slope)
    write_run(tmp_path / "runs" / "other" / "seed0", 0.001)
    groups = group_seeds(sorted((tmp_path / "runs").glob("*/seed*")))
    assert sorted(groups) == ["cfg", "other"] and len(groups["cfg"]) == 3
    curves = [read_scalars(run)["rollout/success_rate"] for run in groups["cfg"]]
    steps, mean, low, high = seed_band(curves)
    assert list(steps[:3]) == [0, 100, 200]
    assert mean[5] == pytest.approx((0.5 + 0.25 + 0.1) / 3)
    assert low[5] == pytest.approx(0.1) and high[5] == pytest.approx(0.5)
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "band.png")]) == 0


def test_reading_a_resumed_run_prints_no_purge_warning(tmp_path, caplog):
    run = tmp_path / "run"
    write_run(run, 0.001)
    # A resume is a later process: its event file sorts after the first (names begin with the
    # second they were made; within one second they end with a per-process count, "9" > "10").
    time.sleep(1.1)
    writer = SummaryWriter(str(run), purge_step=500)  # a resume from step 500
    writer.add_scalar("rollout/success_rate", 0.4, 500)
    writer.close()
    with caplog.at_level("WARNING"):
        steps, values = read_scalars(run)["rollout/success_rate"]
    assert "out of order" not in caplog.text
    assert steps == [0, 100, 200, 300, 400, 500] and values[-1] == pytest.approx(0.4)


def test_a_group_keeps_its_colour_in_panels_other_groups_lack(tmp_path, monkeypatch):
    # Only the second run logs the estimate's errors: its lines there must have its colour
    # from the success panel, not the first free one.
    import matplotlib.figure

    writer = SummaryWriter(str(tmp_path / "runs" / "a" / "seed0"))
    for step in range(0, 1000, 100):
        writer.add_scalar("rollout/success_rate", step / 1000, step)
    writer.close()
    write_run(tmp_path / "runs" / "b" / "seed0", 0.0005)
    figures = []

    def keep_figure(figure, *args, **kwargs):
        figures.append(figure)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep_figure)
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "x.png"), "--estimate"]) == 0
    success_panel, estimate_panel = figures[0].axes[0], figures[0].axes[-1]
    colour_of = {line.get_label(): line.get_color() for line in success_panel.get_lines()}
    assert len(set(colour_of.values())) == 2
    (estimate_line,) = estimate_panel.get_lines()
    assert estimate_line.get_color() == colour_of[estimate_line.get_label()]


def write_report(path, runs_dir, config, seed, step, success, true_estimate=False, eval_seed=None):
    """A report as eval.py writes it: `success` per episode, even episodes' goals in the air."""
    from pixelrl.evaluation import success_by_goal_height

    path.parent.mkdir(parents=True, exist_ok=True)
    heights = [0.2 if i % 2 == 0 else 0.0 for i in range(len(success))]
    report = {
        "checkpoint": f"{runs_dir}/{config}/seed{seed}/checkpoints/step_{step:012d}",
        "checkpoint_step": step,
        "seed": 10000 + seed if eval_seed is None else eval_seed,
        "episodes": len(success),
        "true_estimate": true_estimate,
        "success_rate": float(np.mean(success)),
        "success_by_goal_height": success_by_goal_height(success, heights),
    }
    path.write_text(json.dumps(report))


def test_eval_reports_draw_one_line_per_run_with_the_goal_height_split(tmp_path, monkeypatch):
    import matplotlib.figure

    evals = tmp_path / "evals"
    cfg, other = "manip_Env_goal-desired_lr0.001", "manip_Env_noPix_lr0.001"
    # Seed 0 of cfg: steps written out of order; in the air (even episodes) 1 of 2, then 2 of 2.
    write_report(evals / "a_200.json", "/r", cfg, 0, 200, [True, True, True, False])
    write_report(evals / "a_100.json", "/r", cfg, 0, 100, [True, False, False, False])
    write_report(evals / "a_100_true.json", "/r", cfg, 0, 100, [True] * 4, true_estimate=True)
    write_report(evals / "b_100.json", "/r", other, 0, 100, [False] * 4)
    # Seed 1 of cfg, and seed 1 run again from scratch in another runs directory.
    write_report(evals / "c_100.json", "/r", cfg, 1, 100, [False, True, False, True])
    write_report(evals / "d_100.json", "/r2", cfg, 1, 100, [True] * 4)
    write_report(evals / "e_100.json", "/r2", cfg, 1, 100, [True] * 4, true_estimate=True)
    (evals / "heights.json").write_text(json.dumps({"by_height": {}}))  # not a report: skipped

    curves = read_evals([evals])
    assert sorted(curves) == [
        (cfg, "seed0", ""),
        (cfg, "seed0", "true estimate"),
        (cfg, "seed1 in r", ""),
        (cfg, "seed1 in r2", ""),
        (cfg, "seed1 in r2", "true estimate"),
        (other, "seed0", ""),
    ]
    assert [r["checkpoint_step"] for r in curves[(cfg, "seed0", "")]] == [100, 200]
    assert short_names([cfg, other]) == {cfg: "goal-desired", other: "noPix"}

    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda f, *a, **k: figures.append(f))
    assert main(["--evals", str(evals), "--out", str(tmp_path / "x.png")]) == 0
    overall, on_table, in_air = figures[0].axes
    lines = {
        panel: {line.get_label(): line for line in panel.get_lines()} for panel in figures[0].axes
    }
    seed0 = "goal-desired seed0"
    assert list(lines[overall][seed0].get_xdata()) == [100, 200]
    assert list(lines[overall][seed0].get_ydata()) == [0.25, 0.75]
    assert list(lines[in_air][seed0].get_ydata()) == [0.5, 1.0]
    assert list(lines[on_table][seed0].get_ydata()) == [0.0, 0.5]
    assert list(lines[overall]["goal-desired seed0 (true estimate)"].get_ydata()) == [1.0]
    # One colour per config, another line style and marker per seed and variant.
    same_config = [lines[overall][label] for label in lines[overall] if "goal-desired" in label]
    assert len({line.get_color() for line in same_config}) == 1
    assert lines[overall]["noPix seed0"].get_color() != same_config[0].get_color()
    assert len({(line.get_linestyle(), line.get_marker()) for line in same_config}) == 5


def test_eval_reports_of_other_goals_are_another_line(tmp_path):
    evals = tmp_path / "evals"
    write_report(evals / "a.json", "/r", "cfg", 0, 100, [True, False])
    write_report(evals / "b.json", "/r", "cfg", 0, 100, [True, True], eval_seed=7)
    assert sorted(variant for _, _, variant in read_evals([evals])) == [
        "eval seed 10000, 2 episodes",
        "eval seed 7, 2 episodes",
    ]


def test_evals_without_reports_or_with_event_panels_are_refused(tmp_path, capsys):
    (tmp_path / "heights.json").write_text(json.dumps({"by_height": {}}))
    assert main(["--evals", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "no eval.py reports found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--evals", str(tmp_path), "--probe"])
    assert "--probe and --estimate read TensorBoard events" in capsys.readouterr().err
