"""The worker pool survives its workers: kills, hangs and exceptions, with real processes."""

import os
import signal
import time
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
from fault_injection import FailingFetch

from pixelrl import vector_env
from pixelrl.config import EnvConfig
from pixelrl.envs import PROPRIOCEPTION
from pixelrl.vector_env import FetchVectorEnv, env_seed

REACH = EnvConfig(env_id="FetchReach-v4", no_pixels=True, n_envs=2, vector="async")
INITIAL_GRIP_POS = np.array([1.3418, 0.7491, 0.5347])  # Reach's reset pose of the gripper


def _random_actions(rng, n=2):
    return rng.uniform(-1, 1, (n, 4)).astype(np.float32)


def _failing_env(tmp_path, fault, at_step=3, env_index_marker="marker"):
    return partial(FailingFetch, REACH, fault, at_step, str(tmp_path / env_index_marker))


def test_killed_worker_is_replaced_and_the_step_reports_it():
    rng = np.random.default_rng(0)
    with FetchVectorEnv(REACH, seed=0) as venv:
        venv.reset()
        for _ in range(5):
            before = venv.step(_random_actions(rng))
        os.kill(venv.workers[1].pid, signal.SIGKILL)
        step = venv.step(_random_actions(rng))
        assert list(step.failures) == [1] and "SIGKILL" in step.failures[1]
        assert step.lost.tolist() == [False, True]
        assert venv.restart_counts == [0, 1]
        # The replaced env starts a new episode; env 0 just took its next step.
        np.testing.assert_allclose(
            step.to_act_on[PROPRIOCEPTION][1, :3], INITIAL_GRIP_POS, atol=1e-3
        )
        moved = step.next_obs[PROPRIOCEPTION][0, :3] - before.to_act_on[PROPRIOCEPTION][0, :3]
        assert 0 < np.linalg.norm(moved) < 0.1
        assert step.reward[1] == 0 and not step.done[1]
        follow = venv.step(_random_actions(rng))
        assert not follow.failures and venv.restart_counts == [0, 1]


def test_restarted_env_is_seeded_from_run_seed_index_and_restart_count(tmp_path):
    seeds = {env_seed(s, i, r) for s in range(3) for i in range(4) for r in range(3)}
    assert len(seeds) == 36 and env_seed(0, 1, 1) == env_seed(0, 1, 1)  # no two envs share one
    one_env = replace(REACH, n_envs=1)
    goals = []
    for attempt in range(2):  # the same failure twice gives the same new episode
        factory = partial(FailingFetch, one_env, "exit", 3, str(tmp_path / f"m{attempt}"))
        with FetchVectorEnv(one_env, seed=0, env_fn=factory) as venv:
            first_goal = venv.reset()["desired_goal"][0]
            for _ in range(3):
                step = venv.step(_random_actions(np.random.default_rng(1), n=1))
            assert list(step.failures) == [0]
            goals.append(step.to_act_on["desired_goal"][0].copy())
    np.testing.assert_array_equal(goals[0], goals[1])
    assert not np.array_equal(goals[0], first_goal)  # a new episode, not the seed-0 one


def test_exception_in_env_step_restarts_that_worker(tmp_path):
    with FetchVectorEnv(REACH, seed=0, env_fn=_failing_env(tmp_path, "raise")) as venv:
        venv.reset()
        failures = {}
        for _ in range(4):
            failures.update(venv.step(_random_actions(np.random.default_rng(2))).failures)
        assert len(failures) == 1
        (reason,) = failures.values()
        assert "FloatingPointError" in reason and "NaN in qacc" in reason
        assert venv.total_restarts == 1 and not venv.gave_up


def test_hung_worker_is_detected_within_the_timeout(tmp_path):
    factory = _failing_env(tmp_path, "hang")
    with FetchVectorEnv(REACH, seed=0, timeout_s=3.0, env_fn=factory) as venv:
        venv.reset()
        start = time.monotonic()
        failures = {}
        for _ in range(4):
            failures.update(venv.step(_random_actions(np.random.default_rng(3))).failures)
        assert time.monotonic() - start < 20
        (reason,) = failures.values()
        assert "no answer within 3 s" in reason


def test_a_restarted_worker_that_fails_too_is_restarted_again(tmp_path, capfd):
    factory = _failing_env(tmp_path, "exit, then reset raises")
    with FetchVectorEnv(REACH, seed=0, env_fn=factory) as venv:
        venv.reset()
        failed_steps = []
        for _ in range(4):
            step = venv.step(_random_actions(np.random.default_rng(6)))
            if step.failures:
                failed_steps.append(step)
        assert len(failed_steps) == 1 and venv.total_restarts == 2 and not venv.gave_up
        assert "its replacement failed too" in capfd.readouterr().err
        (step,) = failed_steps
        (index,) = step.failures
        assert venv.restart_counts[index] == 2  # the second replacement holds the env now
        np.testing.assert_allclose(
            step.to_act_on[PROPRIOCEPTION][index, :3], INITIAL_GRIP_POS, atol=1e-3
        )


def test_a_worker_hung_while_its_state_is_saved_is_replaced_at_the_next_step(tmp_path):
    """Its late answer must not be read as the next step's."""
    factory = _failing_env(tmp_path, "hang on get_state", at_step=2)
    with FetchVectorEnv(REACH, seed=0, timeout_s=3.0, env_fn=factory) as venv:
        venv.reset()
        for _ in range(2):
            venv.step(_random_actions(np.random.default_rng(7)))
        states = venv.get_states()
        assert sum(s is None for s in states) == 1
        hung = states.index(None)
        step = venv.step(_random_actions(np.random.default_rng(7)))
        assert list(step.failures) == [hung] and "asked for its state" in step.failures[hung]
        assert venv.restart_counts[hung] == 1
        follow = venv.step(_random_actions(np.random.default_rng(7)))
        assert not follow.failures and np.isfinite(follow.reward).all()


def test_past_the_restart_limit_the_env_stays_down_and_says_why():
    with FetchVectorEnv(REACH, seed=0, max_restarts_per_hour=0) as venv:
        venv.reset()
        os.kill(venv.workers[0].pid, signal.SIGKILL)
        step = venv.step(_random_actions(np.random.default_rng(4)))
        assert 0 in step.failures and venv.health[0].state == "down"
        assert "--max-worker-restarts-per-hour 0" in venv.gave_up
        assert venv.get_states()[0] is None and venv.get_states()[1] is not None
        again = venv.step(_random_actions(np.random.default_rng(4)))
        assert list(again.failures) == [0] and venv.restart_counts == [0, 0]


def test_set_states_starts_an_env_saved_without_a_worker_afresh():
    with FetchVectorEnv(REACH, seed=0) as venv:
        venv.reset()
        for _ in range(10):
            venv.step(_random_actions(np.random.default_rng(5)))
        states = venv.get_states()
        kept = venv.step(np.zeros((2, 4), np.float32)).to_act_on
    with FetchVectorEnv(REACH, seed=0) as restored:
        obs = restored.set_states([states[0], None])
        assert restored.restart_counts == [0, 1]
        np.testing.assert_allclose(obs[PROPRIOCEPTION][1, :3], INITIAL_GRIP_POS, atol=1e-3)
        step = restored.step(np.zeros((2, 4), np.float32))
        np.testing.assert_array_equal(step.to_act_on[PROPRIOCEPTION][0], kept[PROPRIOCEPTION][0])


def test_close_is_bounded_even_with_a_stopped_worker():
    venv = FetchVectorEnv(REACH, seed=0)
    venv.reset()
    stopped = venv.workers[1]
    os.kill(stopped.pid, signal.SIGSTOP)  # alive but answering nothing
    start = time.monotonic()
    venv.close()
    assert time.monotonic() - start < 15
    assert not stopped.is_alive()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_workers_ignore_sigint_and_sigterm(sig):
    with FetchVectorEnv(REACH, seed=0) as venv:
        venv.reset()
        for worker in venv.workers:
            os.kill(worker.pid, sig)
        time.sleep(0.5)
        step = venv.step(np.zeros((2, 4), np.float32))
        assert not step.failures and all(w.is_alive() for w in venv.workers)


def test_a_signal_while_workers_start_does_not_kill_them(monkeypatch):
    """SIGINT and SIGTERM reach each worker right after it was started, long before its
    Python is up (as a group signal from a scheduler can): it still lives and answers."""
    start = vector_env._ProcessWorker.__init__

    def start_then_signal(self, *args, **kwargs):
        start(self, *args, **kwargs)
        os.kill(self.pid, signal.SIGTERM)
        os.kill(self.pid, signal.SIGINT)

    monkeypatch.setattr(vector_env._ProcessWorker, "__init__", start_then_signal)
    with FetchVectorEnv(REACH, seed=0) as venv:
        venv.reset()
        step = venv.step(np.zeros((2, 4), np.float32))
        assert not step.failures and all(w.is_alive() for w in venv.workers)


def test_runs_with_neighbouring_seeds_share_no_env_goals():
    """seed + i would give runs 0 and 1 three envs in common (the same goal sequences)."""
    config = replace(REACH, n_envs=3, vector="sync")
    goals = []
    for seed in (0, 1):
        with FetchVectorEnv(config, seed=seed) as venv:
            goals.append(venv.reset()["desired_goal"])
    for a in goals[0]:
        assert not any(np.allclose(a, b) for b in goals[1])


def test_a_failed_reset_after_an_episode_keeps_the_finished_episode(tmp_path):
    """The final step and the reset share one request: when only the reset fails, the step
    is real (done, with its final observation) and a fresh worker starts the next episode."""
    factory = _failing_env(tmp_path, "reset after the episode raises", at_step=50)
    with FetchVectorEnv(REACH, seed=0, env_fn=factory) as venv:
        obs = venv.reset()
        for _ in range(50):
            step = venv.step(np.zeros((2, 4), np.float32))
            moved = np.abs(step.next_obs[PROPRIOCEPTION] - obs[PROPRIOCEPTION]).max()
            assert moved < 0.1  # every next_obs continues its episode
            obs = step.to_act_on
        assert step.done.all() and not step.lost.any()
        (index,) = step.failures
        assert "reset after the episode" in step.failures[index]
        assert venv.restart_counts[index] == 1
        assert step.new_episode.all()
        np.testing.assert_allclose(obs[PROPRIOCEPTION][index, :3], INITIAL_GRIP_POS, atol=1e-3)


def test_an_env_that_keeps_hanging_is_given_up_within_the_flags_bound(tmp_path):
    """No hour-long loop: 3 failures without a finished episode between end it, after about
    3 x --worker-timeout, whatever --max-worker-restarts-per-hour allows."""
    one_env = replace(REACH, n_envs=1)
    factory = partial(FailingFetch, one_env, "hang always", 1, str(tmp_path / "m"))
    with FetchVectorEnv(
        one_env, seed=0, timeout_s=2.0, max_restarts_per_hour=1000, env_fn=factory
    ) as venv:
        venv.reset()
        start = time.monotonic()
        steps = 0
        while not venv.gave_up:
            step = venv.step(np.zeros((1, 4), np.float32))
            steps += 1
            assert step.lost.all()
        assert time.monotonic() - start < 3 * (2.0 + 5.0)  # 3 hangs, plus starting workers
        assert steps == 3 and venv.restart_counts == [2]
        assert "--max-consecutive-worker-failures 3" in venv.gave_up
        assert venv.health[0].state == "down"


def test_a_replacement_that_cannot_be_built_is_one_more_failure(tmp_path, capfd):
    """An exception while starting a replacement (here the env's constructor, in-process)
    does not escape the step: it is retried like any failure."""
    sync = replace(REACH, vector="sync")
    factory = partial(FailingFetch, sync, "raise, then constructor raises", 3, str(tmp_path / "m"))
    with FetchVectorEnv(sync, seed=0, env_fn=factory) as venv:
        venv.reset()
        failed = [venv.step(np.zeros((2, 4), np.float32)) for _ in range(3)][-1]
        (index,) = failed.failures
        assert "FloatingPointError" in failed.failures[index]
        assert venv.restart_counts[index] == 2 and not venv.gave_up
        assert "could not start" in capfd.readouterr().err
        assert not venv.step(np.zeros((2, 4), np.float32)).failures


def test_a_worker_frozen_half_way_through_an_answer_is_a_hang(tmp_path):
    factory = _failing_env(tmp_path, "freeze mid-answer", at_step=2)
    with FetchVectorEnv(REACH, seed=0, timeout_s=2.0, env_fn=factory) as venv:
        venv.reset()
        start = time.monotonic()
        failures = {}
        for _ in range(3):
            failures.update(venv.step(np.zeros((2, 4), np.float32)).failures)
        assert time.monotonic() - start < 15
        (reason,) = failures.values()
        assert "half-way through an answer" in reason


def test_messages_are_cut_whole_from_the_bytes_as_they_arrive():
    import socket

    from pixelrl.worker import MessageBuffer, receive_message, send_message

    learner, worker = socket.socketpair()
    with learner, worker:
        send_message(worker, ("ok", np.arange(5)))
        send_message(worker, ("ok", "second"))
        data = learner.recv(1 << 16)
        buffer = MessageBuffer()
        buffer.feed(data[:20])  # a header and the start of the first message
        assert buffer.pop() is None and buffer.progress().startswith("12 of ")
        buffer.feed(data[20:])
        status, first = buffer.pop()
        np.testing.assert_array_equal(first, np.arange(5))
        assert buffer.pop() == ("ok", "second") and buffer.progress() == ""
        send_message(learner, ("step", 1.5))
        assert receive_message(worker) == ("step", 1.5)
        learner.close()
        with pytest.raises(EOFError):
            receive_message(worker)


def test_workers_import_neither_torch_nor_the_learners_main_module():
    with FetchVectorEnv(REACH, seed=0) as venv:
        venv.reset()
        for worker in venv.workers:
            with open(f"/proc/{worker.pid}/maps") as maps:
                assert "libtorch" not in maps.read()
