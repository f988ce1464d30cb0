"""The training loop: worker envs -> frame stack -> episode replay -> SAC, with logs, atomic
checkpoints and exact resume.

One vector step, in order:
    1. act        random before --learning-starts, then the policy on the stacked frames
    2. send       the actions to the workers (they step in their own processes)
    3. update     a training round every --train-freq vector steps, while the workers step:
                  with the state estimator (pixelrl/agents/estimator.py) its
                  --estimator-gradient-steps and the estimates of the stalest stored episodes
                  rewritten, then --gradient-steps SAC updates; an update cannot sample the
                  transition being collected
    4. receive    the step; copy it to the device once; store it (episodes commit when
                  complete, and with the estimator get their estimates); push the frames
    5. account    episode stats, TensorBoard, progress bar, checkpoints, stop requests
`--no-overlap` runs the same order without the concurrency (2-3 are sequential), so both give
identical results.

On a GPU the loop waits for the device once per vector step, to hand the actions to the
workers: host arrays reach the device through pinned memory (`pixelrl.transfer`), the update
returns its metrics as device tensors that are summed on the device, and whether any of them
was NaN or inf is read only when they are logged and before a checkpoint is written.

`Trainer(cfg).run()` is the whole run as a library call (a notebook or a sweep can start
one); signals are the entry point's business (train.py), which calls `request_stop()`.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import numpy as np
import torch

from pixelrl.build import (
    build_agent,
    build_replay,
    check_resume_config,
    describe_env,
    resolve_device,
    run_directory,
)
from pixelrl.checkpoint import (
    from_tensor_tree,
    git_commit,
    latest_checkpoint,
    list_checkpoints,
    save_checkpoint,
    to_tensor_tree,
)
from pixelrl.compat import agent_state_to_resume
from pixelrl.config import ConfigError, TrainConfig, estimator_applies, to_dict, validate
from pixelrl.diagnostics import DIAGNOSTIC_SAMPLES, encoder_report
from pixelrl.envs import ACHIEVED_GOAL, PIXELS
from pixelrl.frame_stack import FrameStack, policy_observation
from pixelrl.logger import Logger
from pixelrl.transfer import to_device, to_host, upload_step
from pixelrl.vector_env import FetchVectorEnv, VecStep, WorkerError

STATS_WINDOW = 100  # episodes in rollout/* means, as SB3's ep_info_buffer


class NonFiniteLossError(RuntimeError):
    """An update produced NaN or inf; the message names the loss and the env steps."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""


class TooManyWorkerFailures(RuntimeError):
    """Env workers failed more often than --max-worker-restarts-per-hour allows."""


class Every:
    """A schedule: true each time a counter passes the next multiple of `interval`."""

    def __init__(self, interval: int, start: int = 0):
        self.interval = interval
        self.next = (start // interval + 1) * interval

    def __call__(self, step: int) -> bool:
        if step < self.next:
            return False
        self.next = (step // self.interval + 1) * self.interval
        return True


class TrainState:
    """A run's progress besides networks and replay: counters and the recent episodes."""

    def __init__(self, n_envs: int):
        self.env_step = 0  # summed over the envs
        self.vector_step = 0
        self.n_updates = 0
        self.episodes = 0
        self.episode_return = np.zeros(n_envs)  # of the episodes under way
        self.episode_length = np.zeros(n_envs, dtype=np.int64)
        self.recent = {k: collections.deque(maxlen=STATS_WINDOW) for k in _RECENT}
        # (N, G): where each env's achieved goal stood when its episode began. How far it
        # moved by the episode's end is rollout/achieved_goal_moved: in Push the puck, and in
        # the no-pixels Push controls the share of episodes that moved it climbs to ~90% some
        # 20K env steps before success rises (results/notebook.md, "Reach, touch, push").
        self.episode_start_achieved_goal: np.ndarray | None = None
        self.wall_time = 0.0  # seconds trained before this process

    def record(self, step: VecStep) -> None:
        """Count one vector step: the env steps really collected (not those of envs whose
        transition was lost), finished episodes: return, length, success and how far the
        achieved goal moved."""
        collected = ~step.lost
        self.env_step += int(collected.sum())
        self.vector_step += 1
        self.episode_return += step.reward
        self.episode_length += collected
        for i in np.flatnonzero(step.done):
            self.recent["successes"].append(float(step.is_success[i]))
            self.recent["returns"].append(float(self.episode_return[i]))
            self.recent["lengths"].append(int(self.episode_length[i]))
            final = step.next_obs[ACHIEVED_GOAL][i]
            moved = np.linalg.norm(final - self.episode_start_achieved_goal[i])
            self.recent["achieved_goal_moved"].append(float(moved))
            self.episodes += 1
        self.restart_episodes(step.new_episode, step.to_act_on)

    def restart_episodes(self, mask: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        """The envs in `mask` (N,) bool start an episode at `obs` (host arrays of (N, ...))."""
        self.episode_return[mask], self.episode_length[mask] = 0.0, 0
        if self.episode_start_achieved_goal is None:
            # The first reset, or a checkpoint saved without it: the episodes under way are
            # then measured from the resume.
            self.episode_start_achieved_goal = obs[ACHIEVED_GOAL].copy()
        self.episode_start_achieved_goal[mask] = obs[ACHIEVED_GOAL][mask]

    def success_rate(self) -> float | None:
        successes = self.recent["successes"]
        return float(np.mean(successes)) if successes else None

    def rollout_scalars(self) -> dict[str, float]:
        if not self.recent["returns"]:
            return {}
        scalars = {
            "rollout/success_rate": self.success_rate(),
            "rollout/ep_rew_mean": float(np.mean(self.recent["returns"])),
            "rollout/ep_len_mean": float(np.mean(self.recent["lengths"])),
        }
        moved = self.recent["achieved_goal_moved"]  # empty after resuming an older checkpoint
        if moved:
            scalars["rollout/achieved_goal_moved"] = float(np.mean(moved))
        return scalars

    def state_dict(self, elapsed: float = 0.0) -> dict:
        """elapsed: seconds trained in this process, added to the wall time."""
        return {
            "counters": {k: int(getattr(self, k)) for k in _COUNTERS},
            "episode_return": torch.from_numpy(self.episode_return.copy()),
            "episode_length": torch.from_numpy(self.episode_length.copy()),
            "recent": {k: list(v) for k, v in self.recent.items()},
            "episode_start_achieved_goal": None
            if self.episode_start_achieved_goal is None
            else torch.from_numpy(self.episode_start_achieved_goal.copy()),
            "wall_time": self.wall_time + elapsed,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in _COUNTERS:
            setattr(self, key, int(state["counters"][key]))
        self.episode_return = state["episode_return"].numpy().copy()
        self.episode_length = state["episode_length"].numpy().copy()
        for key, values in state["recent"].items():
            self.recent[key].clear()
            self.recent[key].extend(values)
        start = state.get("episode_start_achieved_goal")
        self.episode_start_achieved_goal = None if start is None else start.numpy().copy()
        self.wall_time = float(state["wall_time"])


_COUNTERS = ("env_step", "vector_step", "n_updates", "episodes")
_RECENT = ("successes", "returns", "lengths", "achieved_goal_moved")


class MetricSums:
    """Sums of the update metrics since the last log, kept on the device (no sync per update).

    A NaN or inf in any update makes its sum non-finite, so one read of the sums, at log and
    checkpoint time, tells whether any update since `since` went wrong.
    """

    def __init__(self, since: int):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}  # per metric: the estimator's steps are not SAC's
        self.since = since  # env step of the last reset

    @property
    def count(self) -> int:
        return max(self.counts.values(), default=0)

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
            self.counts[key] = self.counts.get(key, 0) + 1

    def check_finite(self, env_step: int) -> None:
        if not self.sums:
            return
        finite = torch.isfinite(torch.stack(list(self.sums.values()))).tolist()  # one sync
        bad = [key for key, ok in zip(self.sums, finite, strict=True) if not ok]
        if bad:
            raise NonFiniteLossError(
                f"non-finite {', '.join(bad)} in the updates between env step "
                f"{self.since:,} and {env_step:,}"
            )

    def means(self) -> dict[str, torch.Tensor]:
        return {f"train/{k}": v / self.counts[k] for k, v in self.sums.items()}

    def reset(self, env_step: int) -> None:
        self.sums, self.counts, self.since = {}, {}, env_step


# ---------------------------------------------------------------------------- the trainer
class Trainer:
    """One run: `Trainer(cfg)` builds its parts (no worker starts yet), `run()` trains until
    --total-steps or `request_stop()`, then writes a checkpoint; it returns the exit code."""

    def __init__(self, cfg: TrainConfig):
        validate(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.run.device, cfg.run.amp)
        self.run_dir = run_directory(cfg)
        self.checkpoint = self._find_checkpoint()
        # Spaces from one env built here (no rendering: the first frame is drawn in reset).
        self.spec, obs_space, action_space = describe_env(cfg.env)
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed)
        # The replay checks its memory plan before anything else is allocated or started.
        self.replay = build_replay(cfg, self.spec, self.device)
        self.agent = build_agent(cfg, self.spec, obs_space, action_space, self.device)
        self.estimating = estimator_applies(cfg)  # the image is the state estimator's alone
        self.state = TrainState(cfg.env.n_envs)
        self.updates_start = cfg.sac.learning_starts
        self.stop_requested = False
        self.venv: FetchVectorEnv | None = None
        self.stack: FrameStack | None = None
        self.last_checkpoint: Path | None = None
        # Diagnostics draw their own samples: logging leaves the training batches unchanged.
        self.diagnostic_generator = torch.Generator(self.device).manual_seed(cfg.run.seed)

    def _find_checkpoint(self):
        run = self.cfg.run
        if not run.resume:
            if list_checkpoints(self.run_dir):
                raise ConfigError(
                    f"{self.run_dir} already holds a run; pass --resume to continue it, or "
                    "change --seed or --runs-dir"
                )
            return None
        found = latest_checkpoint(self.run_dir)
        if found is None:
            print(f"--resume: no complete checkpoint in {self.run_dir}; starting a new run")
            return None
        check_resume_config(found[2]["config"], self.cfg)
        return found

    def request_stop(self) -> None:
        """Finish the current step, write a checkpoint, return from `run()` (exit code 0)."""
        self.stop_requested = True

    def make_vector_env(self) -> FetchVectorEnv:
        run = self.cfg.run
        return FetchVectorEnv(
            self.cfg.env,
            seed=run.seed,
            timeout_s=run.worker_timeout,
            max_restarts_per_hour=run.max_worker_restarts_per_hour,
            max_consecutive_failures=run.max_consecutive_worker_failures,
        )

    # ------------------------------------------------------------------ save and restore
    def snapshot(self) -> dict:
        """What a checkpoint holds besides the replay, as tensors (loadable weights_only)."""
        snapshot = {
            "agent": self.agent.state(),
            **self.state.state_dict(elapsed=self.logger.elapsed()),
            "rng_torch": torch.get_rng_state(),
            "rng_action_space": to_tensor_tree(
                self.venv.single_action_space.np_random.bit_generator.state
            ),
            # None for an env whose worker had failed: resume starts it with a new episode.
            "envs": [to_tensor_tree(s) for s in self.venv.get_states()],
            "worker_restarts": list(self.venv.restart_counts),
            "frame_stack": self.stack.frames.cpu() if self.stack is not None else None,
        }
        if self.device.type == "cuda":
            snapshot["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return snapshot

    def restore(self, path: Path, saved: dict, meta: dict) -> dict[str, np.ndarray]:
        """Undo `snapshot` (and load the replay); the envs' observations to continue from."""
        self.agent.load_state(agent_state_to_resume(saved["agent"]))
        self.state.load_state_dict(saved)
        torch.set_rng_state(saved["rng_torch"])
        if "rng_cuda" in saved and self.device.type == "cuda":
            torch.cuda.set_rng_state(saved["rng_cuda"], self.device)
        self.venv.single_action_space.np_random.bit_generator.state = from_tensor_tree(
            saved["rng_action_space"]
        )
        self.venv.restart_counts = list(saved["worker_restarts"])
        env_states = [from_tensor_tree(s) for s in saved["envs"]]
        fresh = np.array([s is None for s in env_states])  # saved without a worker
        obs = self.venv.set_states(env_states)
        self._start_frame_stack(obs)
        if saved["frame_stack"] is not None:
            self.stack.frames.copy_(saved["frame_stack"])
            self.stack.reset(to_device(obs[PIXELS], self.device), to_device(fresh, self.device))
        self.state.restart_episodes(fresh, obs)
        if meta["replay_saved"]:
            self.replay.load(path / "replay")
            self.replay.start_episodes(obs, np.flatnonzero(fresh))
        else:  # staging restarts where each env is now; learning waits for new data
            self.replay.start_episodes(obs)
            self.updates_start = self.state.env_step + self.cfg.sac.learning_starts
            print(
                f"resume: the checkpoint holds no replay (--no-save-buffer); collecting "
                f"{self.cfg.sac.learning_starts:,} steps before learning again"
            )
        print(f"resume: {path} (env step {self.state.env_step:,})")
        self.last_checkpoint = path  # a stop before the next step need not rewrite it
        return obs

    def _start_frame_stack(self, obs: dict[str, np.ndarray]) -> None:
        if PIXELS in obs:
            n, frame_shape = len(obs[PIXELS]), obs[PIXELS].shape[1:]
            self.stack = FrameStack(n, self.cfg.env.frame_stack, frame_shape, self.device)
            self.stack.reset(to_device(obs[PIXELS], self.device))

    def save(self) -> Path:
        cfg, step = self.cfg, self.state.env_step
        meta = {
            "config": to_dict(cfg),
            "git_commit": git_commit(),
            "wall_time_s": round(self.state.wall_time + self.logger.elapsed(), 1),
            "success_rate": self.state.success_rate(),
            "episodes": self.state.episodes,
            "n_updates": self.state.n_updates,
        }
        snapshot = self.snapshot()
        replay = self.replay if cfg.run.save_buffer else None
        try:
            path = save_checkpoint(self.run_dir, step, snapshot, meta, replay)
        except OSError as err:
            raise CheckpointWriteError(
                f"writing the checkpoint of env step {step:,} under "
                f"{self.run_dir / 'checkpoints'} failed: {err}"
            ) from err
        self.last_checkpoint = path
        return path

    # ------------------------------------------------------------------ the run
    def run(self) -> int:
        """Train; 0 when --total-steps is reached or a stop was requested, 1 on a NaN loss, a
        failed checkpoint write or too many worker failures."""
        cfg, run = self.cfg, self.cfg.run
        resumed_step = self.checkpoint[2]["step"] if self.checkpoint else None
        if resumed_step is not None and resumed_step >= run.total_steps:
            print(
                f"{self.run_dir} is already at env step {resumed_step:,} >= --total-steps "
                f"{run.total_steps:,}; nothing to do (raise --total-steps to train on)"
            )
            return 0
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        self.logger = Logger(
            self.run_dir, run.total_steps, purge_step=resumed_step, progress=run.progress
        )
        exit_code = 0
        try:
            self.venv = self.make_vector_env()
            if self.checkpoint is not None:
                obs = self.restore(*self.checkpoint)
            else:
                obs = self.venv.reset()
                self.state.restart_episodes(np.ones(len(obs[ACHIEVED_GOAL]), bool), obs)
                self._start_frame_stack(obs)
                self.replay.start_episodes(obs)
            self._loop({k: to_device(v, self.device) for k, v in obs.items()})
        except NonFiniteLossError as err:
            last = self.last_checkpoint or "none (none was written yet)"
            print(
                f"\nerror: {err}; stopping. The last good checkpoint is {last}; no new one is "
                "written."
            )
            exit_code = 1
        except CheckpointWriteError as err:
            print(
                f"\nerror: {err}. The previous checkpoint {self.last_checkpoint or '(none)'} "
                "is intact; stopping rather than training on without a way back.",
                file=sys.stderr,
            )
            exit_code = 1
        except TooManyWorkerFailures as err:
            print(f"\nerror: {err}", file=sys.stderr)
            exit_code = 1
        except WorkerError as err:
            print(f"\nerror: an env worker failed at start or resume: {err}", file=sys.stderr)
            exit_code = 1
        finally:
            self.logger.close()
            if self.venv is not None:
                self.venv.close()
        return exit_code

    def _loop(self, obs: dict[str, torch.Tensor]) -> None:
        sac, run, st = self.cfg.sac, self.cfg.run, self.state
        log_due, checkpoint_due = (
            Every(run.log_interval, st.env_step),
            Every(run.checkpoint_freq, st.env_step),
        )
        metrics = MetricSums(since=st.env_step)
        self.logger.start(st.env_step)
        while st.env_step < run.total_steps and not self.stop_requested:
            # 1-3. Act, send the actions, update while the workers step.
            actions = self._act(obs)
            if run.overlap:
                self.venv.step_async(actions)
            if (
                st.env_step >= self.updates_start
                and self.replay.num_episodes > 0
                and st.vector_step % sac.train_freq == 0
            ):
                self.train_round(metrics)
            # 4. Receive, store, push frames.
            step = self.venv.step_wait() if run.overlap else self.venv.step(actions)
            obs = self._store(actions, step)
            # 5. Account.
            st.record(step)
            if self.venv.gave_up:
                metrics.check_finite(st.env_step)
                path = self.save()
                raise TooManyWorkerFailures(
                    f"{self.venv.gave_up}; stopped at env step {st.env_step:,} with checkpoint "
                    f"{path}. Fix the cause, then --resume (failed envs start new episodes)."
                )
            if log_due(st.env_step):
                self._log(metrics)
            self.logger.progress(st.env_step, st.success_rate())
            if checkpoint_due(st.env_step):
                metrics.check_finite(st.env_step)  # never write a checkpoint after a NaN
                self.save()
        metrics.check_finite(st.env_step)
        self.logger.progress(st.env_step, st.success_rate(), force=True)
        if self.last_checkpoint is None or not self.last_checkpoint.name.endswith(
            f"{st.env_step:012d}"
        ):
            self.save()
        print(f"\ncheckpoint: {self.last_checkpoint}")
        print(self.logger.summary(st.env_step))

    def train_round(self, metrics: MetricSums) -> None:
        """With the state estimator: its steps on stored frames, then the estimates of the
        stalest stored episodes rewritten. Then SAC's steps (on vectors alone when the
        estimator holds the image)."""
        sac, replay, estimating = self.cfg.sac, self.replay, self.estimating
        if estimating:
            for _ in range(sac.estimator_gradient_steps):
                frames, achieved_goal = replay.sample_frames(sac.estimator_batch_size)
                metrics.add(self.agent.update_estimator(frames, achieved_goal))
            self._write_estimates(sac.estimate_refresh_episodes)
        for _ in range(sac.gradient_steps):
            batch = replay.sample(sac.batch_size, pixels=not estimating)
            metrics.add(self.agent.update(batch))
            self.state.n_updates += 1

    def _write_estimates(self, stalest: int) -> None:
        """The current estimator's estimates for the episodes not estimated yet and the
        `stalest` others (pixelrl/agents/estimator.py)."""
        due = self.replay.stale_episodes(stalest)
        self.replay.write_estimates(due, self.agent.estimate, self.state.env_step)

    def _act(self, obs: dict[str, torch.Tensor]) -> np.ndarray:
        """Random actions before --learning-starts, then the policy's (the one device sync)."""
        if self.state.env_step < self.cfg.sac.learning_starts:
            return self.venv.random_actions()
        return to_host(self.agent.act(policy_observation(obs, self.stack, self.device)))

    def _store(self, actions: np.ndarray, step: VecStep) -> dict[str, torch.Tensor]:
        """Put the step in the replay and the frame stack; the observations to act on next.

        An env whose transition was lost (its worker failed) starts over: its partial episode
        is dropped and its frame stack restarts.
        """
        for i, reason in step.failures.items():
            kept = "its partial episode is dropped" if step.lost[i] else "its episode is kept"
            print(
                f"\nwarning: env {i}'s worker failed at env step {self.state.env_step:,}: "
                f"{reason}; {kept} and it starts a new one "
                f"(restart {self.venv.restart_counts[i]})"
            )
        to_act_on, next_obs = upload_step(step.to_act_on, step.next_obs, step.done, self.device)
        committed = self.replay.add(
            actions, next_obs, step.terminated, step.truncated, to_act_on, discard=step.lost
        )
        if committed and self.estimating:  # what SAC reads of them, from the current estimator
            self._write_estimates(stalest=0)
        if self.stack is not None:
            self.stack.push(to_act_on[PIXELS], step.new_episode)
        return to_act_on

    def _log(self, metrics: MetricSums) -> None:
        st = self.state
        metrics.check_finite(st.env_step)
        scalars = {
            "time/fps": self.logger.average_fps(st.env_step),
            "time/worker_restarts": self.venv.total_restarts,
            "train/n_updates": st.n_updates,
            **st.rollout_scalars(),
        }
        if metrics.count:
            scalars.update(metrics.means())
        metrics.reset(st.env_step)
        if self.cfg.run.encoder_diagnostics and self.replay.num_episodes > 0:
            sample = self.replay.sample_observations(DIAGNOSTIC_SAMPLES, self.diagnostic_generator)
            scalars.update(encoder_report(self.agent, sample))
        age = self.replay.estimate_age(st.env_step) if self.estimating else None
        if age is not None:
            scalars["estimate/age_env_steps"] = age
        self.logger.log(scalars, st.env_step)
