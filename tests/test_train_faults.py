"""A run survives its workers and its signals: real processes, no mocks of the vector env."""

import errno
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_train import _wait_for, cli, run_script, start_train, tiny

from pixelrl.analysis.replay_check import replay_problems
from pixelrl.build import run_directory
from pixelrl.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from pixelrl.envs import PROPRIOCEPTION
from pixelrl.trainer import Trainer

REACH_INITIAL_GRIP_POS = np.array([1.3418, 0.7491, 0.5347])


def async_vectors(tmp_path, pixels=False, **run):
    """FetchReach in 2 worker processes (proprioception only unless pixels: fast)."""
    cfg = tiny(tmp_path, pixels=pixels, **run)
    return replace(cfg, env=replace(cfg.env, vector="async"))


def _kill_worker_when(trainer: Trainer, env_index: int, at_env_step: int) -> threading.Thread:
    def kill():
        while trainer.state.env_step < at_env_step:
            time.sleep(0.01)
        os.kill(trainer.venv.workers[env_index].pid, signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def assert_only_real_episodes(replay):
    """Every stored episode is one whole real Fetch episode (the replay's own check: each step
    moved the gripper by the displacement the env reports), 50 steps from the reset pose."""
    n = replay.num_episodes
    assert n > 0
    assert replay_problems(replay) == []
    assert (replay.storage["lengths"][:n] == 50).all()
    start = replay.storage[PROPRIOCEPTION][:n, 0, :3].numpy()
    np.testing.assert_allclose(start, np.tile(REACH_INITIAL_GRIP_POS, (n, 1)), atol=1e-3)


def test_killed_worker_is_restarted_and_the_run_finishes(tmp_path, capsys):
    cfg = async_vectors(tmp_path, total_steps=400, checkpoint_freq=1000)
    trainer = Trainer(cfg)
    killer = _kill_worker_when(trainer, env_index=1, at_env_step=130)
    assert trainer.run() == 0
    killer.join(timeout=5)
    out = capsys.readouterr().out
    assert "warning: env 1's worker failed at env step" in out and "SIGKILL" in out
    # The killed worker's step was not collected and is not counted.
    assert trainer.state.env_step == 2 * trainer.state.vector_step - 1
    assert 400 <= trainer.state.env_step <= 401
    assert trainer.venv.restart_counts == [0, 1]
    assert_only_real_episodes(trainer.replay)
    # Env 1 lost its partial episode: fewer episodes than the 2 x 400 / 50 = 16 steps allow.
    assert trainer.replay.episodes_committed < 16
    _, state, _ = latest_checkpoint(run_directory(cfg))
    assert state["worker_restarts"] == [0, 1]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_directory(cfg)))
    events.Reload()
    assert events.Scalars("time/worker_restarts")[-1].value == 1


def test_too_many_worker_failures_stop_with_a_checkpoint_that_resumes(tmp_path, capsys):
    cfg = async_vectors(tmp_path, total_steps=400, checkpoint_freq=1000)
    cfg = replace(cfg, run=replace(cfg.run, max_worker_restarts_per_hour=0))
    trainer = Trainer(cfg)
    _kill_worker_when(trainer, env_index=0, at_env_step=130)
    assert trainer.run() == 1
    err = capsys.readouterr().err
    assert "more than --max-worker-restarts-per-hour 0" in err and "--resume" in err
    path, state, meta = latest_checkpoint(run_directory(cfg))
    stopped_at = meta["step"]
    assert 130 <= stopped_at < 400
    assert state["envs"][0] is None and state["envs"][1] is not None
    resumed = replace(cfg, run=replace(cfg.run, resume=True))
    resumed_trainer = Trainer(resumed)
    assert resumed_trainer.run() == 0
    # From the stop, two env steps per vector step up to --total-steps (or one past it).
    assert resumed_trainer.state.env_step == stopped_at + 2 * -(-(400 - stopped_at) // 2)
    assert resumed_trainer.venv.restart_counts == [1, 0]  # env 0 began a new episode
    assert_only_real_episodes(resumed_trainer.replay)


def test_failed_checkpoint_write_keeps_the_previous_one_and_stops(tmp_path, capsys):
    cfg = async_vectors(tmp_path, total_steps=400, checkpoint_freq=100)
    trainer = Trainer(cfg)
    real_save = trainer.replay.save
    calls = {"n": 0}

    def save_until_the_disk_is_full(directory):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        real_save(directory)

    trainer.replay.save = save_until_the_disk_is_full
    assert trainer.run() == 1
    err = capsys.readouterr().err
    checkpoints = run_directory(cfg) / "checkpoints"
    assert "No space left on device" in err and str(checkpoints) in err
    assert "step_000000000100" in err  # names the previous checkpoint, which is intact
    assert [p.name for p in list_checkpoints(run_directory(cfg))] == ["step_000000000100"]
    state, meta = load_checkpoint(checkpoints / "step_000000000100")
    assert meta["replay_saved"] and state["counters"]["env_step"] == 100
    assert not list(checkpoints.glob(".tmp*"))  # the half-written one is gone
    assert trainer.state.env_step == 200  # it stopped instead of training on


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_to_the_whole_process_group_checkpoints_exits_0_and_resumes(tmp_path):
    cfg = async_vectors(tmp_path, total_steps=100_000, checkpoint_freq=100)
    run_dir = run_directory(cfg)
    proc = start_train(cfg, capture=True, new_group=True)
    try:
        assert _wait_for(lambda: list_checkpoints(run_dir), 240, proc)  # it is training
        os.killpg(proc.pid, signal.SIGTERM)  # the learner and its workers alike
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM" in out and "warning: env" not in out  # no worker died of it
    path, state, meta = latest_checkpoint(run_dir)
    assert 100 <= meta["step"] < 100_000 and state["counters"]["env_step"] == meta["step"]
    total = meta["step"] + 100
    resumed = run_script("train.py", [*cli(cfg), "--resume", "--total-steps", str(total)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"env step {meta['step']:,}" in resumed.stdout
    assert latest_checkpoint(run_dir)[2]["step"] == total


def test_sigkill_of_the_learner_leaves_no_worker_behind(tmp_path):
    """The kernel kills the workers with their learner (PR_SET_PDEATHSIG, set on a worker's
    first line): killed here while its workers are still starting up, the slowest moment for
    a worker to notice on its own, none outlives it, however loaded the machine."""
    cfg = async_vectors(tmp_path, total_steps=100_000, checkpoint_freq=50_000)
    proc = start_train(cfg, capture=False)
    try:
        assert _wait_for(lambda: len(_live_children(proc.pid)) == 2, 120, proc)
        workers = _live_children(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10  # the kernel acts at once; this only bounds the wait
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)]


def _live_children(pid: int) -> list[int]:
    return [child for child in _children(pid) if _alive(child)]


@pytest.mark.parametrize("fault, pixels", [("raise", True), ("hang", False)])
def test_worker_exception_or_hang_in_a_run_is_a_warning_and_a_restart(
    tmp_path, capsys, fault, pixels
):
    """The same handling inside the trainer's loop, for an env that raises or hangs (with
    pixels: the failed env's frame stack restarts too)."""
    from functools import partial

    from fault_injection import FailingFetch

    from pixelrl.vector_env import FetchVectorEnv

    cfg = async_vectors(tmp_path, pixels=pixels, total_steps=200, checkpoint_freq=1000)
    cfg = replace(cfg, run=replace(cfg.run, worker_timeout=3.0))
    env_cfg = replace(cfg.env, n_envs=2)
    factory = partial(FailingFetch, env_cfg, fault, 70, str(tmp_path / "marker"))
    trainer = Trainer(cfg)
    trainer.make_vector_env = lambda: FetchVectorEnv(env_cfg, seed=0, timeout_s=3.0, env_fn=factory)
    assert trainer.run() == 0
    assert trainer.venv.total_restarts == 1
    assert trainer.state.env_step == 2 * trainer.state.vector_step - 1  # the lost step
    assert 200 <= trainer.state.env_step <= 201
    expected = "FloatingPointError" if fault == "raise" else "no answer within 3 s"
    assert expected in capsys.readouterr().out
    assert_only_real_episodes(trainer.replay)


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def checkpoint_sizes(tmp_path_factory):
    """Bytes on disk of the full-disk test's run: its first checkpoint (state and replay, as
    it stands while the second is written) and the second's state and replay. Measured, not
    written down: they follow the networks, which change."""
    sizes = {}
    for steps in (100, 200):
        runs = tmp_path_factory.mktemp(f"sizes{steps}")
        cfg = async_vectors(runs, pixels=True, total_steps=steps, checkpoint_freq=100)
        assert run_script("train.py", cli(cfg)).returncode == 0
        newest = list_checkpoints(run_directory(cfg))[0]
        if steps == 100:
            sizes["first"] = _bytes(run_directory(cfg))  # the checkpoint, events, config
        else:
            sizes["state"] = (newest / "state.pt").stat().st_size
            sizes["replay"] = _bytes(newest / "replay")
    return sizes


@pytest.mark.parametrize("full_while_writing", ["state", "replay"])
def test_a_really_full_disk_is_an_error_not_a_crash(tmp_path, checkpoint_sizes, full_while_writing):
    """On a full filesystem (a tmpfs sized so that the second checkpoint runs out of space
    half-way through its state.pt, or half-way through its replay) the run reports it and
    exits 1, with the first checkpoint intact. (torch.save's own writer failed with an opaque
    error here, and a memory-mapped replay write died of SIGBUS.)"""
    sizes = checkpoint_sizes
    room = sizes["first"] + sizes["state"] // 2
    if full_while_writing == "replay":
        room = sizes["first"] + sizes["state"] + sizes["replay"] // 2
    small = tmp_path / "small"
    small.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={room // 1024}K", "tmpfs", str(small)],
        capture_output=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        cfg = async_vectors(small, pixels=True, total_steps=400, checkpoint_freq=100)
        result = run_script("train.py", cli(cfg))
        assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
        assert "No space left on device" in result.stderr
        assert str(small) in result.stderr
        path, state, meta = latest_checkpoint(run_directory(cfg))
        assert meta["step"] == 100 and meta["replay_saved"]
        assert not list((run_directory(cfg) / "checkpoints").glob(".tmp*"))
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_chaos_soak_kills_freezes_then_sigterm_and_resume_lose_nothing(tmp_path):
    """ops/soak.py, short: a run whose workers are killed every few seconds and frozen
    (once shorter than --worker-timeout, once longer), then SIGTERM to its process group, then
    --resume. Every failure is replaced and counted, nothing half-written is stored."""
    result = run_script(
        "ops/soak.py",
        ["--seconds", "30", "--kill-every", "4", "--freeze-every", "9", "--worker-timeout", "5",
         "--checkpoint-freq", "500", "--runs-dir", str(tmp_path), "--json"],
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    soak = json.loads(result.stdout.strip().splitlines()[-1])
    assert soak["kills"] >= 4 and soak["short freezes"] >= 1 and soak["long freezes"] == 1
    caused = soak["kills"] + soak["long freezes"]  # a short freeze is no failure
    assert soak["failures reported"] == caused
    assert soak["restarts in checkpoint"] == caused == soak["restarts in TensorBoard"]
    assert soak["exit code after SIGTERM"] == 0 and soak["exit code of --resume"] == 0
    assert soak["env steps"] in (soak["target env steps"], soak["target env steps"] + 1)
    assert soak["replay problems"] == []
    # Only partial episodes of failed envs are dropped: at most 49 steps per failure.
    assert 0 < soak["steps dropped with partial episodes"] <= 49 * caused
    assert soak["transitions committed"] + soak["steps staged"] <= soak["env steps"]
