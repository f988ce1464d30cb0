"""train.py / eval.py end to end: run, logs, checkpoints, resume, signals, bad flags."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelrl.build import check_resume_config, run_directory
from pixelrl.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from pixelrl.config import (
    ConfigError,
    EnvConfig,
    ReplayConfig,
    RunConfig,
    SACConfig,
    TrainConfig,
    to_dict,
    validate,
)
from pixelrl.envs import ACHIEVED_GOAL
from pixelrl.trainer import Trainer, TrainState
from pixelrl.vector_env import VecStep

ROOT = Path(__file__).resolve().parents[1]


def tiny(tmp_path, pixels=True, **run) -> TrainConfig:
    env = EnvConfig(
        env_id="FetchReach-v4",
        n_envs=2,
        image_size=48,
        no_pixels=not pixels,
        vector="async" if pixels else "sync",
    )
    return TrainConfig(
        env=env,
        replay=ReplayConfig(buffer_size=2000),
        sac=SACConfig(batch_size=8, learning_starts=60),
        run=RunConfig(
            **{
                "total_steps": 200,
                "checkpoint_freq": 100,
                "log_interval": 40,
                "runs_dir": str(tmp_path),
                "progress": False,
                **run,
            }
        ),
    )


def cli(cfg: TrainConfig) -> list[str]:
    """The train.py flags for a `tiny` config."""
    e, s, r = cfg.env, cfg.sac, cfg.run
    args = [
        "--env-id",
        e.env_id,
        "--n-envs",
        str(e.n_envs),
        "--image-size",
        str(e.image_size),
        "--vector",
        e.vector,
        "--buffer-size",
        str(cfg.replay.buffer_size),
        "--batch-size",
        str(s.batch_size),
        "--learning-starts",
        str(s.learning_starts),
        "--total-steps",
        str(r.total_steps),
        "--checkpoint-freq",
        str(r.checkpoint_freq),
        "--log-interval",
        str(r.log_interval),
        "--runs-dir",
        r.runs_dir,
        "--no-progress",
    ]
    if e.no_pixels:
        args.append("--no-pixels")
    return args + [f"--max-worker-restarts-per-hour={r.max_worker_restarts_per_hour}"]


def _script_env() -> dict:
    return {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}


def run_script(script: str, args: list[str], timeout: float = 300, **kwargs):
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        env=_script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def start_train(cfg: TrainConfig, capture: bool, new_group: bool = False) -> subprocess.Popen:
    """train.py in the background (to signal or kill it); new_group: in its own process
    group, as a job scheduler starts it."""
    stream = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *cli(cfg)],
        cwd=ROOT,
        env=_script_env(),
        stdout=stream,
        stderr=stream,
        text=True,
        start_new_session=new_group,
    )


def final_state(run_dir):
    path, state, meta = latest_checkpoint(run_dir)
    return path, state, meta


def test_end_to_end_run_and_eval(tmp_path):
    cfg = tiny(tmp_path)
    result = run_script("train.py", cli(cfg))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = run_directory(cfg)
    assert json.loads((run_dir / "config.json").read_text())["env"]["env_id"] == "FetchReach-v4"
    assert list(run_dir.glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "rollout/success_rate",
        "rollout/ep_rew_mean",
        "rollout/ep_len_mean",
        "rollout/achieved_goal_moved",
        "train/critic_loss",
        "train/actor_loss",
        "train/ent_coef",
        "train/n_updates",
        "time/fps",
        "encoder/spatial_softmax_temperature",
        "encoder/pixels_std_across_batch",
        "encoder/keypoints_std_across_batch",
        "encoder/proprioception_std_across_batch",
        "probe/achieved_goal_r2",
        "probe/achieved_goal_median_error_cm",
        "probe/state_estimate_median_error_cm",
        "estimate/stored_error_cm",
        "estimate/staleness_cm",
        "estimate/age_env_steps",
        "train/aux_loss",
    } <= tags
    assert [e.step for e in events.Scalars("time/fps")] == [40, 80, 120, 160, 200]
    steps = [int(p.name.split("_")[1]) for p in list_checkpoints(run_dir)]
    assert steps == [200, 100]
    state, meta = load_checkpoint(list_checkpoints(run_dir)[0])
    assert meta["step"] == 200 and meta["config"]["sac"]["batch_size"] == 8
    assert {"git_commit", "wall_time_s", "success_rate", "episodes"} <= set(meta)
    assert state["counters"]["episodes"] == 4 and state["counters"]["n_updates"] > 0
    # Only the newest checkpoint keeps the (large) replay.
    assert (list_checkpoints(run_dir)[0] / "replay").is_dir()
    assert not (list_checkpoints(run_dir)[1] / "replay").exists()

    video = tmp_path / "rollout.gif"
    result = run_script(
        "eval.py",
        [
            "--checkpoint",
            str(run_dir),
            "--episodes",
            "3",
            "--video",
            str(video),
            "--video-episodes",
            "1",
            "--video-size",
            "128",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((list_checkpoints(run_dir)[0] / "eval.json").read_text())
    assert report["episodes"] == 3 and len(report["per_episode"]) == 3
    assert report["checkpoint_step"] == 200 and report["seed"] == 10_000
    assert 0.0 <= report["success_rate"] <= 1.0
    for episode in report["per_episode"]:
        assert episode["final_distance"] >= 0 and -50 <= episode["return"] <= 0
        assert "achieved_goal_moved" in episode  # its values: tests/test_evaluation.py
    from PIL import Image

    gif = Image.open(video)
    assert gif.size == (128, 128) and gif.n_frames == 51


def test_train_state_measures_how_far_the_achieved_goal_moved_in_each_episode():
    def step(goal, done=(False, False), lost=(False, False), next_goal=None):
        obs = {ACHIEVED_GOAL: np.array(goal, np.float32)}
        nxt = obs if next_goal is None else {ACHIEVED_GOAL: np.array(next_goal, np.float32)}
        done, lost = np.array(done), np.array(lost)
        return VecStep(
            to_act_on=obs,
            next_obs=nxt,
            reward=np.zeros(2),
            terminated=np.zeros(2, bool),
            truncated=done,
            is_success=done,
            lost=lost,
        )

    state = TrainState(n_envs=2)
    state.restart_episodes(np.ones(2, bool), {ACHIEVED_GOAL: np.zeros((2, 3), np.float32)})
    state.record(step([[0.1, 0, 0], [0, 0, 0]]))
    # Env 1's worker fails: its partial episode is dropped and the next starts where it is.
    state.record(step([[0.2, 0, 0], [0, 0.5, 0]], lost=(False, True)))
    # Both episodes end; the envs' next episodes start at new positions (to_act_on).
    state.record(
        step(
            [[9, 9, 9], [9, 9, 9]],
            done=(True, True),
            next_goal=[[0.3, 0.4, 0], [0, 0.5, 0.2]],
        )
    )
    assert state.recent["achieved_goal_moved"] == pytest.approx([0.5, 0.2])
    assert state.rollout_scalars()["rollout/achieved_goal_moved"] == pytest.approx(0.35)
    np.testing.assert_array_equal(state.episode_start_achieved_goal, np.full((2, 3), 9.0))

    # A checkpoint saved before this statistic resumes; its episodes under way are measured
    # from where the envs stand at the resume.
    saved = state.state_dict()
    del saved["episode_start_achieved_goal"], saved["recent"]["achieved_goal_moved"]
    resumed = TrainState(n_envs=2)
    resumed.load_state_dict(saved)
    resumed.restart_episodes(np.zeros(2, bool), {ACHIEVED_GOAL: np.ones((2, 3), np.float32)})
    np.testing.assert_array_equal(resumed.episode_start_achieved_goal, np.ones((2, 3)))
    assert "rollout/achieved_goal_moved" not in resumed.rollout_scalars()


def _replay_arrays(path):
    return {p.name: np.load(p) for p in sorted((path / "replay").glob("*.npy"))}


@pytest.mark.parametrize("split", [100, 130])  # at an episode boundary, and mid-episode
def test_resume_equals_uninterrupted_run(tmp_path, split):
    whole = tiny(tmp_path / "whole", total_steps=260, checkpoint_freq=1000)
    assert Trainer(whole).run() == 0
    first = tiny(tmp_path / "parts", total_steps=split, checkpoint_freq=1000)
    assert Trainer(first).run() == 0
    second = replace(first, run=replace(first.run, total_steps=260, resume=True))
    assert Trainer(second).run() == 0
    path_a, state_a, meta_a = final_state(run_directory(whole))
    path_b, state_b, meta_b = final_state(run_directory(second))
    assert state_a["counters"] == state_b["counters"]
    # The episode statistics too, the one under way at a mid-episode split included.
    assert (
        state_a["recent"] == state_b["recent"]
        and len(state_a["recent"]["achieved_goal_moved"]) == 4
    )
    assert torch.equal(
        state_a["episode_start_achieved_goal"], state_b["episode_start_achieved_goal"]
    )
    assert meta_a["step"] == meta_b["step"] == 260
    arrays_a, arrays_b = _replay_arrays(path_a), _replay_arrays(path_b)
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)
    for part in ("networks", "estimator"):  # SAC's, and the state estimator's (the default)
        for key, value in state_a["agent"][part].items():
            assert torch.equal(value, state_b["agent"][part][key]), key
    # The input normalization statistics are part of what resume restores exactly.
    assert state_b["agent"]["networks"]["normalizer.stats.goal.count"] > 0


def test_overlapped_and_sequential_loops_agree(tmp_path):
    overlapped = tiny(tmp_path / "a", total_steps=160)
    sequential = tiny(tmp_path / "b", total_steps=160, overlap=False)
    assert Trainer(overlapped).run() == 0 and Trainer(sequential).run() == 0
    path_a, state_a, _ = final_state(run_directory(overlapped))
    path_b, state_b, _ = final_state(run_directory(sequential))
    assert state_a["counters"] == state_b["counters"] and state_a["counters"]["n_updates"] > 0
    arrays_a, arrays_b = _replay_arrays(path_a), _replay_arrays(path_b)
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)


def _wait_for(predicate, timeout, proc):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def test_sigkill_resumes_from_last_checkpoint_and_corrupt_newest_is_skipped(tmp_path):
    cfg = tiny(tmp_path, pixels=False, total_steps=100_000, checkpoint_freq=200)
    run_dir = run_directory(cfg)
    proc = start_train(cfg, capture=False)
    try:
        assert _wait_for(lambda: len(list_checkpoints(run_dir)) >= 3, 240, proc)
    finally:
        proc.kill()
        proc.wait()
    checkpoints = list_checkpoints(run_dir)
    newest, previous = checkpoints[0], checkpoints[1]
    # Damage the newest: a truncated state file must be skipped for the previous one.
    state_file = newest / "state.pt"
    state_file.write_bytes(state_file.read_bytes()[:100])
    path, _, _ = latest_checkpoint(run_dir)
    assert path == previous
    resume_step = int(previous.name.split("_")[1])
    total = resume_step + 100
    resumed = run_script("train.py", [*cli(cfg), "--resume", "--total-steps", str(total)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"env step {resume_step:,}" in resumed.stdout
    assert "skipping checkpoint" in resumed.stdout
    path, state, meta = latest_checkpoint(run_dir)
    assert meta["step"] == total and state["counters"]["env_step"] == total


def test_sigint_writes_a_checkpoint_and_exits_0(tmp_path):
    cfg = tiny(tmp_path, pixels=False, total_steps=100_000, checkpoint_freq=50_000)
    run_dir = run_directory(cfg)
    proc = start_train(cfg, capture=True)
    try:
        assert _wait_for(lambda: list(run_dir.glob("events.out.*")), 120, proc)
        time.sleep(3)  # let it train a little
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "SIGINT" in out
    path, state, meta = latest_checkpoint(run_dir)
    assert 0 < meta["step"] < 100_000 and meta["step"] % 2 == 0
    assert state["counters"]["env_step"] == meta["step"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    cfg = tiny(tmp_path, pixels=False, total_steps=400, checkpoint_freq=100)
    cfg = replace(cfg, sac=replace(cfg.sac, gradient_steps=1))  # one update per vector step
    trainer = Trainer(cfg)
    real_update = trainer.agent.update
    calls = {"n": 0}

    def update(batch):
        calls["n"] += 1
        metrics = real_update(batch)
        # Updates start once an episode is complete (env step 100); update k runs at env
        # step 100 + 2(k-1): update 30 at 158, after the checkpoint at 100.
        if calls["n"] == 30:
            metrics["critic_loss"] = torch.tensor(float("nan"))
        return metrics

    trainer.agent.update = update
    assert trainer.run() == 1
    out = capsys.readouterr().out
    assert "non-finite critic_loss in the updates between env step 120 and 160" in out
    steps = [int(p.name.split("_")[1]) for p in list_checkpoints(run_directory(cfg))]
    assert steps == [100]  # the last good one, and nothing written after the NaN
    assert "step_000000000100" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--encoder", "resnet"], "--encoder"),
        (["--env-id", "FetchFly-v1"], "invalid choice 'FetchFly-v1' for argument '--env-id'"),
        (["--full-state", "--no-pixels"], "--full-state and --no-pixels"),
        (["--image-size", "16"], "--image-size 16"),
        (["--ent-coef", "lots"], "--ent-coef 'lots'"),
        (["--encoder-grad", "both"], "--encoder-grad"),
        (["--buffer-size", "0"], "--buffer-size 0"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--buffer-size", "100000000000"], "the largest --buffer-size that fits"),
        (["--device", "tpu"], "--device 'tpu'"),
        (["--full-state", "--no-proprioception"], "--no-proprioception needs the pixels mode"),
        (["--drq"], "--drq: DrQ's random shift is not in pixelrl"),
        (["--estimator-batch-size", "0"], "--estimator-batch-size 0"),
    ],
)
def test_bad_flags_exit_2_before_starting_anything(tmp_path, args, message):
    result = run_script("train.py", [*args, "--runs-dir", str(tmp_path)], timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert not any(tmp_path.iterdir())  # no run directory, so no worker and no buffer


def test_config_tag_names_what_differs():
    from pixelrl.compat import config_tag

    cfg = TrainConfig(env=EnvConfig(full_state=True, goal_mode="both", frame_stack=4))
    assert config_tag(cfg) == "manip_fullState_buf300000_lr0.001_gs4"
    cfg = TrainConfig(env=EnvConfig(env_id="FetchReach-v4"), sac=SACConfig(batch_size=64))
    assert config_tag(cfg) == (
        "manip_FetchReach-v4_goal-desired_fs1_buf300000_lr0.001_bs64_estimatorEnc_gs4"
    )


SB3_PROTOTYPE_COMMAND = (
    "python train.py --goal-mode both --frame-stack 4 --learning-rate 1e-4 --gradient-steps 1 "
    "--buffer-size 500000 --encoder-grad critic"
)


def test_the_sb3_prototypes_settings_are_one_command_of_the_readme():
    """Its hyperparameters (4 stacked frames, both goals as inputs, lr 1e-4, one update per
    vector step, batch 256, 500K buffer) with the image in the critic's update."""
    import shlex

    import tyro

    readme = " ".join((ROOT / "README.md").read_text().replace("\\\n", " ").split())
    assert SB3_PROTOTYPE_COMMAND in readme
    cfg = tyro.cli(
        TrainConfig,
        args=shlex.split(SB3_PROTOTYPE_COMMAND)[2:],
        config=(tyro.conf.OmitArgPrefixes,),
    )
    validate(cfg)
    assert (cfg.env.goal_mode, cfg.env.frame_stack, cfg.replay.buffer_size) == ("both", 4, 500_000)
    assert (cfg.sac.learning_rate, cfg.sac.gradient_steps, cfg.sac.batch_size) == (1e-4, 1, 256)
    assert cfg.sac.encoder_grad == "critic"


def test_resume_check_names_what_differs_and_reads_older_runs_through_compat():
    from pixelrl.compat import full_dict

    cfg = TrainConfig(env=EnvConfig(no_pixels=True))
    saved = to_dict(cfg)
    check_resume_config(saved, cfg)
    moved = to_dict(cfg)  # a run directory copied to another machine resumes there
    moved["run"]["runs_dir"] = "/elsewhere/runs"
    check_resume_config(moved, cfg)
    saved["sac"]["batch_size"] = 7
    with pytest.raises(ConfigError, match=r"--batch-size \(run: 7, now: 256\)"):
        check_resume_config(saved, cfg)
    # A run saved before the study's switches were retired, at the values kept: it resumes.
    older = full_dict(TrainConfig())  # every field, the retired ones at the values kept
    assert older["network"]["keypoint_trunk"] == "running"
    older["env"]["mp_context"] = "spawn"  # a flag pixelrl never had under this name
    check_resume_config(older, TrainConfig())
    # At a retired value: the error names the commit that resumes it.
    older["sac"]["next_obs_encoder"] = "target"
    with pytest.raises(ConfigError, match="--next-obs-encoder target.*git checkout"):
        check_resume_config(older, TrainConfig())


@pytest.mark.slow
def test_full_state_reach_learns_within_10k_steps(tmp_path):
    args = [
        "--env-id",
        "FetchReach-v4",
        "--full-state",
        "--total-steps",
        "10000",
        "--vector",
        "sync",
        "--learning-rate",
        "1e-3",
        "--gradient-steps",
        "4",
        "--buffer-size",
        "100000",
        "--checkpoint-freq",
        "10000",
        "--runs-dir",
        str(tmp_path),
        "--no-progress",
    ]
    result = run_script("train.py", args, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next(tmp_path.iterdir()) / "seed0"
    result = run_script("eval.py", ["--checkpoint", str(run_dir), "--episodes", "50"])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((list_checkpoints(run_dir)[0] / "eval.json").read_text())
    assert report["success_rate"] >= 0.9, report["success_rate"]


def test_checkpoint_save_is_atomic_and_prunes_old_replays(tmp_path):
    from pixelrl.checkpoint import save_checkpoint

    class FakeReplay:
        def save(self, directory):
            Path(directory).mkdir()
            (Path(directory) / "data.npy").write_bytes(b"x" * 1000)

    for step in (100, 200):
        save_checkpoint(tmp_path, step, {"w": torch.ones(3) * step}, {"config": {}}, FakeReplay())
    newest, older = list_checkpoints(tmp_path)
    assert (newest / "replay").is_dir() and not (older / "replay").exists()
    state, meta = load_checkpoint(older)  # still complete after its replay was dropped
    assert meta["replay_saved"] is False and torch.equal(state["w"], torch.ones(3) * 100)
    assert not list((tmp_path / "checkpoints").glob(".tmp*"))
    # A leftover temporary directory (a crash mid-save) is never taken for a checkpoint.
    (tmp_path / "checkpoints" / ".tmpstep_000000000300.123").mkdir()
    assert latest_checkpoint(tmp_path)[0] == newest


def test_resume_of_a_finished_run_says_so_and_leaves_its_events_alone(tmp_path, capsys):
    cfg = tiny(tmp_path, pixels=False, total_steps=120, checkpoint_freq=1000)
    assert Trainer(cfg).run() == 0
    run_dir = run_directory(cfg)
    before = {p: p.read_bytes() for p in run_dir.glob("events.out.*")}
    again = replace(cfg, run=replace(cfg.run, resume=True))
    assert Trainer(again).run() == 0
    assert "already at env step 120 >= --total-steps 120; nothing to do" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in run_dir.glob("events.out.*")} == before
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_000000000120"]


def test_a_resume_stopped_before_its_first_step_keeps_the_checkpoint_it_loaded(tmp_path):
    """Rewriting it would cost a full replay write, and the old one is deleted first."""
    cfg = tiny(tmp_path, pixels=False, total_steps=120, checkpoint_freq=1000)
    assert Trainer(cfg).run() == 0
    (checkpoint,) = list_checkpoints(run_directory(cfg))
    inode = checkpoint.stat().st_ino
    longer = replace(cfg, run=replace(cfg.run, resume=True, total_steps=240))
    trainer = Trainer(longer)
    trainer.request_stop()  # as a signal right after start would
    assert trainer.run() == 0
    assert list_checkpoints(run_directory(cfg)) == [checkpoint]
    assert checkpoint.stat().st_ino == inode  # the same directory, not a rewritten one
