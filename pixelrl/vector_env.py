"""N Fetch envs stepped in parallel worker processes, with the episode boundary made explicit
and a run that outlives its workers.

Each env lives in its own worker process (`pixelrl.worker`: a fresh interpreter with its own
EGL context, started with fork + exec, so nothing of the learner's GL state or torch is
inherited) and talks to the learner over a socket. A worker resets in the same step its
episode ends and hands back both the episode's final observation and the new episode's first
one (`VecStep.next_obs` and `VecStep.to_act_on`), so no stored transition crosses two episodes
and no step is spent on a reset.

A worker can fail: its process dies (OOM kill, a segfault in MuJoCo or EGL, kill -9), it stops
answering (or freezes half-way through an answer), its env raises, or a replacement cannot
even start. The learner reads every answer with a deadline, so each failure is seen within
`timeout_s`, never as a hang. A failed env's worker is replaced by a fresh one, which starts a
new episode with a seed derived from the run seed, the env index and the env's restart count
(`env_seed`; runs stay reproducible); the step reports the env in `VecStep.failures`, and
`VecStep.lost` says whether its transition was lost (the learner then drops the partial
episode and restarts its frame stack) or real (only the reset after an episode's last step
failed: the finished episode is kept). An env is given up, and left without a worker, when it
fails `max_consecutive_failures` times without finishing an episode between (an env that keeps
hanging: after about that many times `timeout_s`), or when the whole pool fails more than
`max_restarts_per_hour` times within an hour; `gave_up` then says why, and the learner
checkpoints what is consistent and stops.

What the learner knows of each env is one `EnvHealth`: alive, failed (a request could not go
out, or it hung while a checkpoint asked for its state: the next `step_wait` reports and
replaces it) or down (given up), with the reason and its failures since its last finished
episode.

Workers ignore SIGINT and SIGTERM (see `pixelrl.worker`), and the kernel kills them when the
learner dies, so none outlives a learner killed with SIGKILL. `close()` asks, waits a bounded
time, then kills.

`vector="sync"` runs the same envs in this process (debugging, state-only runs), with the same
failure handling for exceptions. This module does not import torch, so workers stay small.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import wait
from typing import Literal

import numpy as np

from pixelrl.config import EnvConfig, validate_env_config
from pixelrl.envs import FetchObservation, make_fetch_env
from pixelrl.worker import BOOT, STOP_SIGNALS, MessageBuffer, answer_to, describe, send_message

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_RESTARTS_PER_HOUR = 20
DEFAULT_MAX_CONSECUTIVE_FAILURES = 3
_CLOSE_WAIT_S = 5.0  # how long close() waits for workers to exit before it kills them


class WorkerError(RuntimeError):
    """A worker died, hung or raised; the message names the env and what happened."""


@dataclass
class _ResetFailed:
    """A step whose episode ended and whose reset then failed: the step is real."""

    step_answer: tuple
    reason: str


def env_seed(seed: int, env_index: int, restart: int = 0) -> int:
    """The reset seed of env `env_index` of a run seeded `seed`, after its `restart`-th
    restart (0: at the start).

    Hashed by SeedSequence rather than seed + env_index: with seed + i, runs with seeds 0 and
    1 would share three of their four envs' seeds, and so their goal sequences.
    """
    return int(np.random.SeedSequence([seed, env_index, restart]).generate_state(1)[0])


def _exit_description(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"exit code {exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"exit code {exitcode}"
    return f"exit code {exitcode}"


# ---------------------------------------------------------------------------- workers
@contextlib.contextmanager
def _stop_signals_blocked():
    """SIGINT and SIGTERM wait (are pending here) while a worker starts: it inherits the
    blocked mask through fork and exec and ignores both before it unblocks them."""
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)


class _ProcessWorker:
    """One env in its own process (`pixelrl.worker`); requests and answers go over a socket.

    The process dies with the thread that started it (PR_SET_PDEATHSIG on Linux), so start
    workers from a thread that lives as long as the vector env (the trainer's main thread).
    """

    def __init__(self, env_fn: Callable[[], FetchObservation], timeout_s: float):
        self.sock, child = socket.socketpair()
        with child, _stop_signals_blocked():
            fd = child.fileno()
            command = [sys.executable, "-c", BOOT, str(fd), str(os.getpid()), *sys.path]
            self.process = subprocess.Popen(command, pass_fds=[fd])
        self.sock.settimeout(timeout_s)  # bounds sendall to a worker that stopped reading
        self.received = MessageBuffer()
        send_message(self.sock, ("env_fn", env_fn))

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def send(self, command: str, data=None) -> None:
        send_message(self.sock, (command, data))

    def waitables(self) -> list:
        return [self.sock]  # readable when answer bytes arrive, and at EOF when it dies

    def ready(self) -> bool:
        return bool(wait([self.sock], 0))

    def take_answer(self):
        """Take in what has arrived (call when `ready`): the answer (status, payload) once it
        is complete, else None. Raises WorkerError when the process died."""
        try:
            chunk = self.sock.recv(1 << 20)
        except OSError:
            chunk = b""
        if not chunk:
            raise WorkerError(self.death())
        self.received.feed(chunk)
        return self.received.pop()

    def unanswered(self) -> str:
        """Why the deadline passed without an answer."""
        partial = self.received.progress()
        return f"hung half-way through an answer ({partial} arrived)" if partial else ""

    def death(self) -> str:
        """How the process ended (its socket closed)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1.0)
        return f"its process died ({_exit_description(self.process.returncode)})"

    def stop(self, wait_s: float) -> None:
        """Wait up to wait_s for the process to exit (after a "close" request), then kill it
        (it ignores SIGTERM, so SIGKILL is the way): never waits without a bound."""
        try:
            self.process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=_CLOSE_WAIT_S)
        self.sock.close()


class _LocalWorker:
    """One env in this process, behind the same interface (vector='sync')."""

    def __init__(self, env_fn: Callable[[], FetchObservation]):
        self.env = env_fn()
        self.answer = None

    def send(self, command: str, data=None) -> None:
        if command != "close":
            self.answer = answer_to(self.env, command, data)

    def waitables(self) -> list:
        return []

    def ready(self) -> bool:
        return True

    def take_answer(self):
        answer, self.answer = self.answer, None
        return answer

    def unanswered(self) -> str:
        return ""

    def death(self) -> str:
        return "its env is gone"

    def stop(self, wait_s: float) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


@dataclass
class EnvHealth:
    """One env's worker as the learner sees it.

    state:  alive: it answers; failed: it failed before `step_wait` asked it (a request could
            not go out, or it hung while a checkpoint asked for its state), and the next
            `step_wait` reports and replaces it; down: given up, no worker
    reason: what happened, for failed and down
    failures_since_episode: failures since its last finished episode (failed restarts count):
            a failure drops the partial episode, so an env that cannot finish one between
            failures contributes nothing
    """

    state: Literal["alive", "failed", "down"] = "alive"
    reason: str = ""
    failures_since_episode: int = 0


@dataclass
class VecStep:
    """One vector step, with the episode boundary made explicit.

    next_obs:   the true successor of the observation that was acted on (an episode's final
                obs where `done`): what the replay stores for this transition
    to_act_on:  what the policy acts on next (a new episode's first obs where `new_episode`)
    failures:   env index -> what went wrong, for envs whose worker failed in this step (each
                was replaced, or is down)
    lost:       (N,) bool, the env's transition is not real: its worker failed during the step
                or it has no worker. Reward, terminated and truncated are 0 there and the
                replay drops its partial episode. An env whose worker failed only in the reset
                after an episode's last step keeps that transition (it is in `failures`, not
                in `lost`).
    """

    to_act_on: dict[str, np.ndarray]
    next_obs: dict[str, np.ndarray]
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    is_success: np.ndarray
    lost: np.ndarray
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def done(self) -> np.ndarray:
        """The episode ended in this step (a real transition)."""
        return self.terminated | self.truncated

    @property
    def new_episode(self) -> np.ndarray:
        """`to_act_on` starts a new episode: the last one ended, or its partial was lost."""
        return self.done | self.lost


class FetchVectorEnv:
    """N Fetch envs in worker processes (or in this process with vector='sync').

    Args:
        cfg: the env settings; `cfg.n_envs` envs, `cfg.vector`.
        seed: the run seed; env i is reset with `env_seed(seed, i)`.
        timeout_s: longest wait for any worker's answer before it counts as hung.
        max_restarts_per_hour: failures of all envs together allowed in any hour; one more
            gives up the env that failed.
        max_consecutive_failures: an env that fails this many times without finishing an
            episode between (failed restarts included) is given up.
        env_fn: builds one env in a worker (default: `make_fetch_env(cfg)`); must pickle.
    """

    def __init__(
        self,
        cfg: EnvConfig,
        seed: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_restarts_per_hour: int = DEFAULT_MAX_RESTARTS_PER_HOUR,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
        env_fn: Callable[[], FetchObservation] | None = None,
    ):
        validate_env_config(cfg)
        self.cfg = cfg
        self.seed = seed
        self.num_envs = cfg.n_envs
        self.timeout_s = timeout_s
        self.max_restarts_per_hour = max_restarts_per_hour
        self.max_consecutive_failures = max_consecutive_failures
        self.env_fn = env_fn or partial(make_fetch_env, cfg)
        self.restart_counts = [0] * self.num_envs  # per env, saved in checkpoints
        self._restart_times: collections.deque[float] = collections.deque()
        self.health = [EnvHealth() for _ in range(self.num_envs)]
        self.workers: list = []
        try:
            for _ in range(self.num_envs):  # one at a time: close() stops those started
                self.workers.append(self._start_worker())
            spaces = self._request_all([("spaces", None)] * self.num_envs)
        except BaseException:
            self.close()
            raise
        self.single_observation_space, self.single_action_space = spaces[0]
        self.single_action_space.seed(seed)

    @property
    def gave_up(self) -> str | None:
        """Why envs were left without a worker, or None while every env has one."""
        down = [f"env {i}: {h.reason}" for i, h in enumerate(self.health) if h.state == "down"]
        return "; ".join(down) or None

    # ------------------------------------------------------------------ workers
    def _start_worker(self):
        if self.cfg.vector == "sync":
            return _LocalWorker(self.env_fn)
        return _ProcessWorker(self.env_fn, self.timeout_s)

    def _gather(self, indices) -> dict[int, object]:
        """Answers of the given workers: the payload, a _ResetFailed, or a WorkerError in
        place of each that failed. Waits on every socket together, up to `timeout_s` in all,
        taking in each answer's bytes as they arrive (one slow answer holds up no other)."""
        answers: dict[int, object] = {}
        pending = set(indices)
        deadline = time.monotonic() + self.timeout_s
        while pending:
            for i in [i for i in pending if self.workers[i].ready()]:
                try:
                    answer = self.workers[i].take_answer()
                except WorkerError as err:
                    answer = err
                if answer is None:  # more of it is on its way
                    continue
                pending.discard(i)
                if isinstance(answer, WorkerError):
                    answers[i] = answer
                elif answer[0] == "ok":
                    answers[i] = answer[1]
                elif answer[0] == "reset_failed":
                    answers[i] = _ResetFailed(*answer[1])
                else:
                    answers[i] = WorkerError(f"raised {answer[1]}")
            remaining = deadline - time.monotonic()
            if pending and remaining <= 0:
                for i in pending:
                    hung = f"no answer within {self.timeout_s:g} s (hung)"
                    answers[i] = WorkerError(self.workers[i].unanswered() or hung)
                break
            if pending:
                wait([w for i in pending for w in self.workers[i].waitables()], remaining)
        return answers

    def _request_all(self, requests: list[tuple[str, object]]) -> list:
        """Send request i (command, data) to env i and return the answers; any failure is an
        error here (start and resume, where there is nothing to keep)."""
        for i, (command, data) in enumerate(requests):
            try:
                self.workers[i].send(command, data)
            except OSError as err:
                raise WorkerError(f"env {i}: cannot reach its worker ({err})") from err
        answers = self._gather(range(self.num_envs))
        for i, (command, _) in enumerate(requests):
            if not isinstance(answers[i], WorkerError | _ResetFailed):
                continue
            raise WorkerError(f"env {i} ({command}): {answers[i]}")
        return [answers[i] for i in range(self.num_envs)]

    def _mark_failed(self, index: int, reason: str) -> None:
        """Env `index` failed outside `step_wait`: stop its worker now (a late answer would be
        read as the next request's), and let the next `step_wait` report and replace it."""
        self.workers[index].stop(wait_s=0.0)
        self.health[index] = EnvHealth("failed", reason, self.health[index].failures_since_episode)

    def _limit_reached(self, failures: int, last: str) -> str | None:
        """Why an env that has failed `failures` times since its last finished episode is
        given up, or None while both limits allow one more restart."""
        now = time.monotonic()
        while self._restart_times and now - self._restart_times[0] > 3600.0:
            self._restart_times.popleft()
        if failures >= self.max_consecutive_failures:
            return (
                f"{failures} failures without a finished episode between, the limit of "
                f"--max-consecutive-worker-failures {self.max_consecutive_failures} (the last: "
                f"{last})"
            )
        if len(self._restart_times) >= self.max_restarts_per_hour:
            return (
                f"{len(self._restart_times) + 1} worker failures within an hour, more than "
                f"--max-worker-restarts-per-hour {self.max_restarts_per_hour} (the last: {last})"
            )
        return None

    def _replace(self, index: int, reason: str) -> dict[str, np.ndarray] | None:
        """Replace env `index`'s failed worker by a fresh env; its first observation, or None
        when the env is given up (down, `gave_up` says why). A replacement that fails too, or
        cannot even start, is one more failure and is replaced again, until one of the two
        limits is reached."""
        health = self.health[index]
        while True:
            health.failures_since_episode += 1
            self.workers[index].stop(wait_s=0.0)
            limit = self._limit_reached(health.failures_since_episode, reason)
            if limit is not None:
                self.health[index] = EnvHealth("down", limit, health.failures_since_episode)
                return None
            self._restart_times.append(time.monotonic())
            self.restart_counts[index] += 1
            try:
                self.workers[index] = self._start_worker()
                self.workers[index].send(
                    "reset", env_seed(self.seed, index, self.restart_counts[index])
                )
                answer = self._gather([index])[index]
            except Exception as err:  # e.g. OSError at spawn, the env's constructor raising
                answer = WorkerError(f"its replacement could not start ({describe(err)})")
            if not isinstance(answer, WorkerError | _ResetFailed):
                self.health[index] = EnvHealth("alive", "", health.failures_since_episode)
                return answer
            reason = f"its replacement failed too ({answer})"
            print(f"warning: env {index}: {reason}; replacing it again", file=sys.stderr)

    # ------------------------------------------------------------------ the env API
    def reset(self) -> dict[str, np.ndarray]:
        """Reset env i with `env_seed(seed, i)`; the batched first observations."""
        return _stack(
            self._request_all([("reset", env_seed(self.seed, i)) for i in range(self.num_envs)])
        )

    def get_states(self) -> list[dict | None]:
        """Each env's full simulator state (see `FetchObservation.get_sim_state`); None for
        an env without a working worker (a resume starts it afresh). A worker that fails to
        answer is stopped and marked failed: the next step replaces it."""
        asked = []
        for i, worker in enumerate(self.workers):
            if self.health[i].state != "alive":
                continue
            try:
                worker.send("get_state")
                asked.append(i)
            except OSError:
                self._mark_failed(i, worker.death())
        answers = self._gather(asked)
        states: list[dict | None] = [None] * self.num_envs
        for i in asked:
            if isinstance(answers[i], WorkerError):
                self._mark_failed(i, f"{answers[i]} (asked for its state)")
            else:
                states[i] = answers[i]
        return states

    def set_states(self, states: list[dict | None]) -> dict[str, np.ndarray]:
        """Restore what `get_states` returned: each env continues where it was saved; an env
        saved as None starts a new episode (seeded as a restart). The batched observations."""
        requests = []
        for i, state in enumerate(states):
            if state is None:
                self.restart_counts[i] += 1
                requests.append(("reset", env_seed(self.seed, i, self.restart_counts[i])))
            else:
                requests.append(("set_state", state))
        return _stack(self._request_all(requests))

    def random_actions(self) -> np.ndarray:
        return np.stack([self.single_action_space.sample() for _ in range(self.num_envs)])

    def step_async(self, actions: np.ndarray) -> None:
        """Send each env its action; the answers are collected by `step_wait`."""
        actions = np.asarray(actions)
        for i, worker in enumerate(self.workers):
            if self.health[i].state != "alive":
                continue
            try:
                worker.send("step", actions[i])
            except OSError:
                self._mark_failed(i, worker.death())

    def step_wait(self) -> VecStep:
        n = self.num_envs
        asked = [i for i in range(n) if self.health[i].state == "alive"]
        answers = self._gather(asked)
        reward = np.zeros(n, np.float32)
        terminated, truncated, success, lost = (np.zeros(n, bool) for _ in range(4))
        to_act_on: list = [None] * n
        next_obs: list = [None] * n
        failures: dict[int, str] = {}
        for i in range(n):
            answer = answers.get(i)
            if self.health[i].state == "failed" or isinstance(answer, WorkerError):
                failures[i] = self.health[i].reason if answer is None else str(answer)
                lost[i] = True
                continue
            if self.health[i].state == "down":
                lost[i] = True
                continue
            if isinstance(answer, _ResetFailed):
                failures[i] = f"its reset after the episode's last step failed: {answer.reason}"
                answer = answer.step_answer
            to_act_on[i], reward[i], terminated[i], truncated[i], success[i], final = answer
            next_obs[i] = to_act_on[i] if final is None else final
            if final is not None:  # a finished episode
                self.health[i].failures_since_episode = 0
        for i, reason in sorted(failures.items()):
            to_act_on[i] = self._replace(i, reason)  # None when the env is given up
        placeholder = {  # a lost transition is never stored; it only keeps the shapes
            key: np.zeros(space.shape, space.dtype)
            for key, space in self.single_observation_space.spaces.items()
        }
        for i in range(n):
            if to_act_on[i] is None:
                to_act_on[i] = placeholder
            if lost[i]:
                next_obs[i] = to_act_on[i]
            if self.health[i].state == "down":
                failures.setdefault(i, f"no worker ({self.health[i].reason})")
        return VecStep(
            _stack(to_act_on),
            _stack(next_obs),
            reward,
            terminated,
            truncated,
            success,
            lost,
            failures,
        )

    def step(self, actions: np.ndarray) -> VecStep:
        self.step_async(actions)
        return self.step_wait()

    def local_env(self, index: int) -> FetchObservation:
        """The env object itself (vector='sync' only), e.g. to render a video view."""
        worker = self.workers[index]
        if not isinstance(worker, _LocalWorker):
            raise RuntimeError("local_env needs vector='sync': async envs live in workers")
        return worker.env

    @property
    def total_restarts(self) -> int:
        return sum(self.restart_counts)

    def close(self) -> None:
        """Stop every worker: ask, wait up to 5 s, then kill; bounded in time."""
        for i, worker in enumerate(self.workers):
            if self.health[i].state == "alive":
                with contextlib.suppress(OSError):
                    worker.send("close")  # all at once, so that they exit in parallel
        deadline = time.monotonic() + _CLOSE_WAIT_S
        for worker in self.workers:
            worker.stop(wait_s=max(0.0, deadline - time.monotonic()))
        self.workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _stack(per_env: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.stack([obs[key] for obs in per_env]) for key in per_env[0]}
