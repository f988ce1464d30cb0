"""N Fetch envs stepped in parallel worker processes, with the episode boundary made explicit
and a run that outlives its workers.

Each env lives in its own worker process (spawn or forkserver, one EGL context each) and talks
to the learner over a pipe. A worker resets in the same step its episode ends and hands back
both the episode's final observation and the new episode's first one (`VecStep.next_obs` and
`VecStep.obs`), so no stored transition crosses two episodes and no step is spent on a reset.

A worker can fail: its process dies (OOM kill, a segfault in MuJoCo or EGL, kill -9), it stops
answering, or its env raises. The learner waits on each worker's pipe *and* its process
sentinel with a deadline, so every failure is seen within `timeout_s`, never as a hang. The
failed env's worker is replaced by a fresh one, which starts a new episode with a seed derived
from the run seed, the env index and the env's restart count (`env_seed`; runs stay
reproducible); the step reports the env in `VecStep.failures`, so the learner drops its
partial episode and restarts its frame stack. Past `max_restarts_per_hour` a failed env is
left down and `gave_up` says why: the learner then checkpoints what is consistent and stops.

Workers ignore SIGINT and SIGTERM: a Ctrl-C in the terminal or a scheduler's SIGTERM reaches
the whole process group, and the learner alone decides when the workers stop (after finishing
its step and writing a checkpoint). A worker exits when its pipe closes, so no worker outlives
a learner killed with SIGKILL. `close()` asks, waits a bounded time, then kills.

`vector="sync"` runs the same envs in this process (debugging, state-only runs), with the same
failure handling for exceptions. This module does not import torch, so workers stay small.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import wait

import numpy as np

from pixelrl.config import EnvConfig, validate_env_config
from pixelrl.envs import FetchObservation, make_fetch_env

DEFAULT_TIMEOUT_S = 120.0
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
DEFAULT_MAX_RESTARTS_PER_HOUR = 20
_CLOSE_WAIT_S = 5.0  # how long close() waits for workers to exit before it kills them


class WorkerError(RuntimeError):
    """A worker died, hung or raised; the message names the env and what happened."""


def env_seed(seed: int, env_index: int, restart: int = 0) -> int:
    """The reset seed of env `env_index` of a run seeded `seed`, after its `restart`-th
    restart (0: at the start).

    Hashed by SeedSequence rather than seed + env_index: with seed + i, runs with seeds 0 and
    1 would share three of their four envs' seeds, and so their goal sequences.
    """
    return int(np.random.SeedSequence([seed, env_index, restart]).generate_state(1)[0])


# ---------------------------------------------------------------------------- the worker side
def _run_command(env: FetchObservation, command: str, data):
    """One request to an env; the same code serves process workers and in-process envs."""
    if command == "step":
        obs, reward, terminated, truncated, info = env.step(data)
        success = bool(info.get("is_success", False))
        final_obs = None
        if terminated or truncated:  # same-step autoreset: the next episode starts now
            final_obs = obs
            obs, _ = env.reset()
        return obs, float(reward), bool(terminated), bool(truncated), success, final_obs
    if command == "reset":
        return env.reset(seed=data)[0]
    if command == "get_state":
        return env.get_sim_state()
    if command == "set_state":
        env.reset()
        return env.set_sim_state(data)
    if command == "spaces":
        return env.observation_space, env.action_space
    raise ValueError(f"unknown worker command {command!r}")


def _worker_main(env_fn: Callable[[], FetchObservation], conn) -> None:
    """A worker process: serve requests until told to close or until the learner is gone."""
    # The learner alone decides when workers stop; see the module docstring. The worker was
    # started with both signals blocked, so none got through before they are ignored here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    env = None
    try:
        try:
            env = env_fn()
        except Exception as err:
            conn.send(("error", _describe(err)))
            return
        while True:
            try:
                command, data = conn.recv()
            except EOFError:  # the learner is gone: exit rather than outlive it
                return
            if command == "close":
                conn.send(("ok", None))
                return
            try:
                conn.send(("ok", _run_command(env, command, data)))
            except (BrokenPipeError, EOFError):
                return
            except Exception as err:
                conn.send(("error", _describe(err)))
    except (BrokenPipeError, EOFError):
        return
    finally:
        if env is not None:
            env.close()


def _describe(err: BaseException) -> str:
    last = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(err).__name__}: {err}{where}"


def _exit_description(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"exit code {exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"exit code {exitcode}"
    return f"exit code {exitcode}"


# ---------------------------------------------------------------------------- the learner side
def _start_with_stop_signals_blocked(process, ctx) -> None:
    """Start a worker so that SIGINT and SIGTERM sent while it boots wait until it ignores them.

    A new process inherits the blocked-signal mask of the thread that starts it (a mask, not
    signal.signal, so this works off the main thread too). Two helpers of multiprocessing get
    in the way: the resource tracker unblocks both signals right after it launches itself
    (so it is started first), and forkserver workers inherit the fork server's mask (so the
    server starts with them blocked). In this process they are pending for the start alone.
    """
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        if ctx.get_start_method() == "forkserver":
            forkserver.ensure_running()
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)


class _ProcessWorker:
    """One env in its own process; requests and answers go through a pipe."""

    def __init__(self, ctx, env_fn, name: str):
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main, args=(env_fn, child_conn), name=name, daemon=True
        )
        _start_with_stop_signals_blocked(self.process, ctx)
        child_conn.close()  # the worker's end lives in the worker; EOF reaches us if it dies

    def send(self, command: str, data=None) -> None:
        self.conn.send((command, data))

    def waitables(self) -> list:
        return [self.conn, self.process.sentinel]

    def ready(self) -> bool:
        return self.conn.poll() or not self.process.is_alive()

    def receive(self):
        """The answer (ok, payload) / (error, text); raises WorkerError if the process died."""
        try:
            if self.conn.poll():
                return self.conn.recv()
        except (EOFError, OSError):
            pass
        raise WorkerError(self.death())

    def death(self) -> str:
        """How the process ended (it is gone: its pipe is closed or its sentinel fired)."""
        self.process.join(timeout=1.0)
        return f"its process died ({_exit_description(self.process.exitcode)})"

    def stop(self, wait_s: float) -> None:
        """Wait up to wait_s for the process to exit (after a "close" request), then kill it
        (it ignores SIGTERM, so SIGKILL is the way): never waits without a bound."""
        self.process.join(timeout=wait_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=_CLOSE_WAIT_S)
        self.conn.close()


class _LocalWorker:
    """One env in this process, behind the same interface (vector='sync')."""

    def __init__(self, env_fn):
        self.env = env_fn()
        self.answer = None

    def send(self, command: str, data=None) -> None:
        if command == "close":
            return
        try:
            self.answer = ("ok", _run_command(self.env, command, data))
        except Exception as err:
            self.answer = ("error", _describe(err))

    def waitables(self) -> list:
        return []

    def ready(self) -> bool:
        return True

    def receive(self):
        answer, self.answer = self.answer, None
        return answer

    def stop(self, wait_s: float) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


@dataclass
class VecStep:
    """One vector step, with the episode boundary made explicit.

    obs:       the observation to act on next (a new episode's first obs where `done` or
               where the env's worker failed and was restarted)
    next_obs:  the true successor of the observation that was acted on (the final obs where
               `done`), i.e. what the replay stores for this transition
    failures:  env index -> what went wrong, for envs whose worker failed in this step: their
               transition is not real (drop the partial episode); reward, terminated and
               truncated are 0 there
    """

    obs: dict[str, np.ndarray]
    next_obs: dict[str, np.ndarray]
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    is_success: np.ndarray
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated

    @property
    def failed(self) -> np.ndarray:
        mask = np.zeros(len(self.reward), dtype=bool)
        mask[list(self.failures)] = True
        return mask


class FetchVectorEnv:
    """N Fetch envs in worker processes (or in this process with vector='sync').

    Args:
        cfg: the env settings; `cfg.n_envs` envs, `cfg.vector` and `cfg.mp_context`.
        seed: the run seed; env i is reset with `env_seed(seed, i)`.
        timeout_s: longest wait for any worker's answer before it counts as hung.
        max_restarts_per_hour: restarts allowed in any hour before the env gives up.
        env_fn: builds one env in a worker (default: `make_fetch_env(cfg)`); must pickle.
    """

    def __init__(
        self,
        cfg: EnvConfig,
        seed: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_restarts_per_hour: int = DEFAULT_MAX_RESTARTS_PER_HOUR,
        env_fn: Callable[[], FetchObservation] | None = None,
    ):
        validate_env_config(cfg)
        self.cfg = cfg
        self.seed = seed
        self.num_envs = cfg.n_envs
        self.timeout_s = timeout_s
        self.max_restarts_per_hour = max_restarts_per_hour
        self.env_fn = env_fn or partial(make_fetch_env, cfg)
        self.ctx = multiprocessing.get_context(cfg.mp_context)
        self.restart_counts = [0] * self.num_envs  # per env, saved in checkpoints
        self._restart_times: collections.deque[float] = collections.deque()
        self.down: set[int] = set()  # envs left without a worker (after giving up)
        self.gave_up: str | None = None  # why restarts stopped, if they did
        # Envs known to have failed before step_wait asks them (their step request did not
        # go out, or they hung in get_states); step_wait reports and restarts them.
        self._failed_unasked: dict[int, str] = {}
        self.workers: list = []
        try:
            for i in range(self.num_envs):  # one at a time: close() stops those started
                self.workers.append(self._start_worker(i))
            spaces = self._request_all([("spaces", None)] * self.num_envs)
        except BaseException:
            self.close()
            raise
        self.single_observation_space, self.single_action_space = spaces[0]
        self.single_action_space.seed(seed)

    # ------------------------------------------------------------------ workers
    def _start_worker(self, index: int):
        if self.cfg.vector == "sync":
            return _LocalWorker(self.env_fn)
        return _ProcessWorker(self.ctx, self.env_fn, name=f"pixelrl-env-{index}")

    def _gather(self, indices) -> dict[int, object]:
        """Answers of the given workers; a WorkerError in place of each that failed.

        Waits on every pipe and process sentinel together, up to `timeout_s` in all.
        """
        answers: dict[int, object] = {}
        pending = set(indices)
        deadline = time.monotonic() + self.timeout_s
        while pending:
            for i in [i for i in pending if self.workers[i].ready()]:
                pending.discard(i)
                try:
                    status, payload = self.workers[i].receive()
                except WorkerError as err:
                    answers[i] = err
                    continue
                answers[i] = payload if status == "ok" else WorkerError(f"raised {payload}")
            remaining = deadline - time.monotonic()
            if pending and remaining <= 0:
                for i in pending:
                    answers[i] = WorkerError(f"no answer within {self.timeout_s:g} s (hung)")
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
            except (BrokenPipeError, OSError) as err:
                raise WorkerError(f"env {i}: cannot reach its worker ({err})") from err
        answers = self._gather(range(self.num_envs))
        for i, (command, _) in enumerate(requests):
            if isinstance(answers[i], WorkerError):
                raise WorkerError(f"env {i} ({command}): {answers[i]}")
        return [answers[i] for i in range(self.num_envs)]

    def _restart(self, index: int) -> dict[str, np.ndarray] | None:
        """Replace env `index`'s worker by a fresh env; its first observation, or None when
        the restart budget is spent (the env stays down and `gave_up` says why). A restarted
        worker that fails too counts as one more failure and is restarted again."""
        while True:
            now = time.monotonic()
            while self._restart_times and now - self._restart_times[0] > 3600.0:
                self._restart_times.popleft()
            self.workers[index].stop(wait_s=0.0)
            if len(self._restart_times) >= self.max_restarts_per_hour:
                self.down.add(index)
                self.gave_up = (
                    f"{len(self._restart_times) + 1} worker failures within an hour, more than "
                    f"--max-worker-restarts-per-hour {self.max_restarts_per_hour}"
                )
                return None
            self._restart_times.append(now)
            self.restart_counts[index] += 1
            worker = self._start_worker(index)
            self.workers[index] = worker
            try:
                worker.send("reset", env_seed(self.seed, index, self.restart_counts[index]))
                answer = self._gather([index])[index]
            except (BrokenPipeError, OSError) as err:
                answer = WorkerError(f"cannot reach it ({err})")
            if not isinstance(answer, WorkerError):
                return answer
            print(
                f"warning: env {index}: its restarted worker failed too ({answer}); "
                "restarting it again",
                file=sys.stderr,
                flush=True,
            )

    # ------------------------------------------------------------------ the env API
    def reset(self) -> dict[str, np.ndarray]:
        """Reset env i with `env_seed(seed, i)`; the batched first observations."""
        return _stack(
            self._request_all([("reset", env_seed(self.seed, i)) for i in range(self.num_envs)])
        )

    def get_states(self) -> list[dict | None]:
        """Each env's full simulator state (see `FetchObservation.get_sim_state`); None for
        an env whose worker has failed (a resume starts it afresh)."""
        asked = []
        for i, worker in enumerate(self.workers):
            if i in self.down:
                continue
            try:
                worker.send("get_state")
                asked.append(i)
            except (BrokenPipeError, OSError):
                pass
        answers = self._gather(asked)
        states: list[dict | None] = [None] * self.num_envs
        for i in asked:
            if isinstance(answers[i], WorkerError):
                # A late answer would be read as the next step's: stop the worker now, and
                # let the next step restart it like any failed worker.
                self.workers[i].stop(wait_s=0.0)
                self._failed_unasked[i] = f"{answers[i]} (asked for its state)"
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
            if i in self.down or i in self._failed_unasked:
                continue
            try:
                worker.send("step", actions[i])
            except (BrokenPipeError, OSError):
                self._failed_unasked[i] = worker.death()

    def step_wait(self) -> VecStep:
        n = self.num_envs
        asked = [i for i in range(n) if i not in self.down and i not in self._failed_unasked]
        answers = self._gather(asked)
        failures = {i: str(a) for i, a in answers.items() if isinstance(a, WorkerError)}
        failures.update(self._failed_unasked)
        self._failed_unasked = {}
        reward = np.zeros(n, np.float32)
        terminated, truncated, success = (np.zeros(n, bool) for _ in range(3))
        obs: list = [None] * n
        next_obs: list = [None] * n
        for i in range(n):
            if i in failures or i in self.down:
                continue
            obs[i], reward[i], terminated[i], truncated[i], success[i], final = answers[i]
            next_obs[i] = obs[i] if final is None else final
        for i in sorted(failures):
            obs[i] = next_obs[i] = self._restart(i)  # None when the env is left down
        for i in self.down:
            failures.setdefault(i, "no worker (restarts stopped)")
            obs[i] = next_obs[i] = {  # placeholders: a failed env's transition is never kept
                key: np.zeros(space.shape, space.dtype)
                for key, space in self.single_observation_space.spaces.items()
            }
        return VecStep(
            _stack(obs), _stack(next_obs), reward, terminated, truncated, success, failures
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
            if i not in self.down:
                with contextlib.suppress(BrokenPipeError, OSError):
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
