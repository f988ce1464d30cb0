"""The training loop: async EGL envs -> frame stack -> episode replay -> SAC, with logs,
atomic checkpoints and exact resume.

One vector step, in order:
    1. act        random before --learning-starts, then the policy on the stacked frames
    2. send       the actions to the workers (they step in their own processes)
    3. update     --gradient-steps SAC updates every --train-freq vector steps, while the
                  workers step; an update cannot sample the transition being collected
    4. receive    the step; store it (episodes commit when complete); push frames
    5. account    episode stats, TensorBoard, progress bar, checkpoints, Ctrl-C / SIGTERM
`--no-overlap` runs the same order without the concurrency (2-3 are sequential), so both give
identical results.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pixelrl.agents.sac import SAC
from pixelrl.buffers.her import reward_range
from pixelrl.buffers.replay import EpisodeReplay, ReplaySpec
from pixelrl.checkpoint import git_commit, latest_checkpoint, list_checkpoints, save_checkpoint
from pixelrl.config import ConfigError, TrainConfig, from_dict, to_dict, validate
from pixelrl.envs import PIXELS, make_fetch_env, max_episode_steps, policy_keys, reward_params
from pixelrl.frame_stack import FrameStack, policy_observation
from pixelrl.logger import Logger
from pixelrl.vector_env import FetchVectorEnv, WorkerError

STATS_WINDOW = 100  # episodes in rollout/* means, as SB3's ep_info_buffer


class NonFiniteLossError(RuntimeError):
    """An update produced NaN or inf; the message names the loss and the env step."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""


class TooManyWorkerFailures(RuntimeError):
    """Env workers failed more often than --max-worker-restarts-per-hour allows."""


# ---------------------------------------------------------------------------- run setup
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


# Short names for the run-directory tag; options not listed use their field name.
_TAG_NAMES = {
    "drq": lambda v: "DrQ" if v else "noDrQ",
    "full_state": lambda v: "fullState" if v else "",
    "no_pixels": lambda v: "noPix" if v else "",
    "native_render": lambda v: "" if v else "resize480",
    "spatial_softmax": lambda v: "" if v else "noSS",
    "norm": lambda v: "norm" if v else "",
    "show_goal": lambda v: "showGoal" if v else "",
    "encoder_grad": lambda v: f"{v}Enc",
    "frame_stack": lambda v: f"fs{v}",
    "her_n_sampled_goal": lambda v: f"her{v}",
    "buffer_size": lambda v: f"buf{v}",
    "learning_rate": lambda v: f"lr{v:g}",
    "n_envs": lambda v: f"envs{v}",
    "batch_size": lambda v: f"bs{v}",
    "env_id": lambda v: v,
    "learning_starts": lambda v: f"ls{v}",
    "gradient_steps": lambda v: f"gs{v}",
    "gamma": lambda v: f"gamma{v:g}",
    "ent_coef": lambda v: f"ent{v}",
    "image_size": lambda v: f"img{v}",
    "goal_mode": lambda v: f"goal-{v}",
    "proprioception": lambda v: "" if v else "noProprio",
    "normalize_obs": lambda v: "" if v else "noNorm",
    "obs_norm_clip": lambda v: f"normClip{v:g}",
    "obs_norm_freeze_after": lambda v: f"normFreeze{v}",
    "encoder_lr": lambda v: f"elr{v:g}",
    "clip_q_target": lambda v: "clipQ" if v else "noClipQ",
    "next_obs_encoder": lambda v: f"next-{v}",
}
# Options that do not change what is learned (they are not part of the tag).
_UNTAGGED = {"vector", "mp_context", "encoder"}


def config_tag(cfg: TrainConfig) -> str:
    """`manip` for the defaults (the winning recipe), plus each option that differs."""
    parts = [cfg.network.encoder]
    default = TrainConfig()
    for section in ("env", "replay", "network", "sac"):
        for f in dataclasses.fields(getattr(cfg, section)):
            value = getattr(getattr(cfg, section), f.name)
            if f.name in _UNTAGGED or value == getattr(getattr(default, section), f.name):
                continue
            name = _TAG_NAMES.get(f.name)
            text = name(value) if name else f"{f.name}{value}"
            if text:
                parts.append(str(text).replace("/", "-").replace(" ", ""))
    return "_".join(parts)


def run_directory(cfg: TrainConfig) -> Path:
    return Path(cfg.run.runs_dir) / config_tag(cfg) / f"seed{cfg.run.seed}"


# Flags that may change between an interrupted run and its resume.
_RESUMABLE_RUN_FIELDS = {
    "total_steps",
    "resume",
    "progress",
    "log_interval",
    "device",
    "checkpoint_freq",
    "save_buffer",
    "overlap",
    "worker_timeout",
    "max_worker_restarts_per_hour",
}


def _check_resume_config(saved: dict, cfg: TrainConfig) -> None:
    current = to_dict(cfg)
    changed = []
    for section, values in saved.items():
        for key, value in values.items():
            if section == "run" and key in _RESUMABLE_RUN_FIELDS:
                continue
            now = current.get(section, {}).get(key)
            if isinstance(value, list):
                value = list(value)
                now = list(now) if isinstance(now, (list, tuple)) else now
            if now != value:
                changed.append(f"--{key.replace('_', '-')} (run: {value}, now: {now})")
    if changed:
        raise ConfigError("--resume with different settings than the run: " + ", ".join(changed))


def describe_env(env_cfg):
    """(ReplaySpec, observation space, action space) of the configured env, built in this
    process without rendering (the first frame is drawn by reset)."""
    probe = make_fetch_env(env_cfg)
    obs_space, action_space = probe.observation_space, probe.action_space
    probe.close()
    shapes = {k: tuple(space.shape) for k, space in obs_space.spaces.items()}
    threshold, reward_type = reward_params(env_cfg.env_id)
    spec = ReplaySpec(
        shapes,
        int(action_space.shape[0]),
        max_episode_steps(env_cfg.env_id),
        env_cfg.n_envs,
        env_cfg.frame_stack,
        threshold,
        reward_type,
    )
    return spec, obs_space, action_space


def build_agent(cfg: TrainConfig, spec: ReplaySpec, obs_space, action_space, device) -> SAC:
    """The SAC agent for a config; pixels are seen stacked (3k, H, W)."""
    shapes = {k: tuple(space.shape) for k, space in obs_space.spaces.items()}
    if PIXELS in shapes:
        c, h, w = shapes[PIXELS]
        shapes[PIXELS] = (c * cfg.env.frame_stack, h, w)
    keys = policy_keys(shapes, cfg.env.goal_mode)
    return SAC(
        shapes,
        keys,
        action_space.low,
        action_space.high,
        cfg.network,
        cfg.sac,
        device,
        reward_range=reward_range(spec.reward_type),
    )


# ---------------------------------------------------------------------------- the trainer
class Trainer:
    """Wires env, replay and agent for one run; `run()` trains until --total-steps."""

    def __init__(self, cfg: TrainConfig):
        validate(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.run.device)
        self.run_dir = run_directory(cfg)
        found = latest_checkpoint(self.run_dir) if cfg.run.resume else None
        if cfg.run.resume and found is None:
            print(f"--resume: no complete checkpoint in {self.run_dir}; starting a new run")
        if not cfg.run.resume and list_checkpoints(self.run_dir):
            raise ConfigError(
                f"{self.run_dir} already holds a run; pass --resume to continue it, or change "
                "--seed or --runs-dir"
            )
        self.checkpoint = found
        if found is not None:
            _check_resume_config(found[2]["config"], cfg)

        # Spaces from one env built here (no rendering: the first frame is drawn in reset).
        self.spec, obs_space, action_space = describe_env(cfg.env)
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed)
        # The replay checks its memory plan before anything else is allocated or started.
        self.replay = EpisodeReplay(cfg.replay, self.spec, self.device, seed=cfg.run.seed)
        self.agent = build_agent(cfg, self.spec, obs_space, action_space, self.device)
        self.stop_requested = False

    # ------------------------------------------------------------------ helpers
    def _request_stop(self, signum, frame) -> None:
        if self.stop_requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        print(f"\n{signal.Signals(signum).name}: finishing this step, then checkpointing")
        self.stop_requested = True

    def _state(self) -> dict:
        stats = self.stats
        state = {
            "agent": self.agent.state(),
            "counters": {k: int(v) for k, v in self.counters.items()},
            "rng_torch": torch.get_rng_state(),
            "rng_action_space": _to_tensor_tree(
                self.venv.single_action_space.np_random.bit_generator.state
            ),
            # None for an env whose worker had failed: resume starts it with a new episode.
            "envs": [_to_tensor_tree(s) for s in self.venv.get_states()],
            "worker_restarts": list(self.venv.restart_counts),
            "frame_stack": self.stack.frames.cpu() if self.stack is not None else None,
            "episode_return": torch.from_numpy(stats["episode_return"].copy()),
            "episode_length": torch.from_numpy(stats["episode_length"].copy()),
            "recent": {k: list(stats[k]) for k in ("successes", "returns", "lengths")},
            "wall_time": self._wall_time(),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _wall_time(self) -> float:
        return self.wall_time_before + time.monotonic() - self.start_time

    def save(self) -> Path:
        cfg = self.cfg
        recent = self.stats["successes"]
        meta = {
            "config": to_dict(cfg),
            "git_commit": git_commit(),
            "wall_time_s": round(self._wall_time(), 1),
            "success_rate": float(np.mean(recent)) if recent else None,
            "episodes": int(self.counters["episodes"]),
            "n_updates": int(self.counters["n_updates"]),
        }
        replay = self.replay if cfg.run.save_buffer else None
        step = self.counters["env_step"]
        try:
            path = save_checkpoint(self.run_dir, step, self._state(), meta, replay)
        except OSError as err:
            raise CheckpointWriteError(
                f"writing the checkpoint of env step {step:,} under "
                f"{self.run_dir / 'checkpoints'} failed: {err}"
            ) from err
        self.last_checkpoint = path
        return path

    def make_vector_env(self) -> FetchVectorEnv:
        run = self.cfg.run
        return FetchVectorEnv(
            self.cfg.env,
            seed=run.seed,
            timeout_s=run.worker_timeout,
            max_restarts_per_hour=run.max_worker_restarts_per_hour,
        )

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        cfg, sac, run = self.cfg, self.cfg.sac, self.cfg.run
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        self.counters = {"env_step": 0, "vector_step": 0, "n_updates": 0, "episodes": 0}
        n = cfg.env.n_envs
        self.stats = {
            "episode_return": np.zeros(n),
            "episode_length": np.zeros(n, dtype=np.int64),
            "successes": collections.deque(maxlen=STATS_WINDOW),
            "returns": collections.deque(maxlen=STATS_WINDOW),
            "lengths": collections.deque(maxlen=STATS_WINDOW),
        }
        self.wall_time_before = 0.0
        self.last_checkpoint = None
        updates_start = sac.learning_starts
        state = None
        if self.checkpoint is not None:
            path, state, meta = self.checkpoint
            self.agent.load_state(state["agent"])
            self.counters.update(state["counters"])
            self.wall_time_before = float(state["wall_time"])
            self.stats["episode_return"] = state["episode_return"].numpy().copy()
            self.stats["episode_length"] = state["episode_length"].numpy().copy()
            for key, values in state["recent"].items():
                self.stats[key].extend(values)
            torch.set_rng_state(state["rng_torch"])
            if "rng_cuda" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng_cuda"], self.device)
            if meta["replay_saved"]:
                self.replay.load(path / "replay")
            else:
                updates_start = self.counters["env_step"] + sac.learning_starts
                print(
                    f"resume: the checkpoint holds no replay (--no-save-buffer); collecting "
                    f"{sac.learning_starts:,} steps before learning again"
                )
            print(f"resume: {path} (env step {self.counters['env_step']:,})")

        self.venv = self.make_vector_env()
        self.stack = None
        logger = Logger(
            self.run_dir,
            run.total_steps,
            purge_step=self.counters["env_step"] if state else None,
            progress=run.progress,
        )
        handlers = {
            s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)
        }
        exit_code = 0
        try:
            restarted_envs = np.zeros(n, dtype=bool)
            if state is not None:
                self.venv.restart_counts = list(state.get("worker_restarts", [0] * n))
                env_states = [_from_tensor_tree(s) for s in state["envs"]]
                restarted_envs = np.array([s is None for s in env_states])
                obs = self.venv.set_states(env_states)
                self.venv.single_action_space.np_random.bit_generator.state = _from_tensor_tree(
                    state["rng_action_space"]
                )
            else:
                obs = self.venv.reset()
            if PIXELS in obs:
                self.stack = FrameStack(n, cfg.env.frame_stack, obs[PIXELS].shape[1:], self.device)
                if state is not None and state["frame_stack"] is not None:
                    self.stack.frames.copy_(state["frame_stack"])
                    self.stack.reset(
                        torch.as_tensor(obs[PIXELS], device=self.device),
                        torch.as_tensor(restarted_envs, device=self.device),
                    )
                else:
                    self.stack.reset(torch.as_tensor(obs[PIXELS], device=self.device))
            if state is None or not meta["replay_saved"]:
                self.replay.start_episodes(obs)
            elif restarted_envs.any():  # envs saved without a worker begin a new episode
                self.replay.start_episodes(obs, np.flatnonzero(restarted_envs))
                self.stats["episode_return"][restarted_envs] = 0.0
                self.stats["episode_length"][restarted_envs] = 0
            self._loop(obs, updates_start, logger)
        except NonFiniteLossError as err:
            print(
                f"\nerror: {err}; stopping. The last good checkpoint is "
                f"{self.last_checkpoint or 'none (none was written yet)'}; no new one is "
                "written."
            )
            exit_code = 1
        except CheckpointWriteError as err:
            print(
                f"\nerror: {err}. The previous checkpoint "
                f"{self.last_checkpoint or '(none)'} is intact; stopping rather than training "
                "on without a way back.",
                file=sys.stderr,
            )
            exit_code = 1
        except TooManyWorkerFailures as err:
            print(f"\nerror: {err}", file=sys.stderr)
            exit_code = 1
        except WorkerError as err:
            print(
                f"\nerror: an env worker failed where it cannot be replaced: {err}", file=sys.stderr
            )
            exit_code = 1
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            logger.close()
            self.venv.close()
        return exit_code

    def _loop(self, obs, updates_start: int, logger: Logger) -> None:
        cfg, sac, run = self.cfg, self.cfg.sac, self.cfg.run
        c, st, n = self.counters, self.stats, cfg.env.n_envs
        start_step, self.start_time = c["env_step"], time.monotonic()
        next_log = (c["env_step"] // run.log_interval + 1) * run.log_interval
        next_ckpt = (c["env_step"] // run.checkpoint_freq + 1) * run.checkpoint_freq
        metric_sums: dict[str, torch.Tensor] = {}
        metric_count = 0
        last_batch = None
        while c["env_step"] < run.total_steps and not self.stop_requested:
            # 1. Act.
            if c["env_step"] < sac.learning_starts:
                actions = self.venv.random_actions()
            else:
                actions = self.agent.act(policy_observation(obs, self.stack, self.device))
                actions = actions.cpu().numpy()
            # 2-3. Step the workers; update while they step.
            if run.overlap:
                self.venv.step_async(actions)
            if (
                c["env_step"] >= updates_start
                and self.replay.num_episodes > 0
                and c["vector_step"] % sac.train_freq == 0
            ):
                for _ in range(sac.gradient_steps):
                    last_batch = self.replay.sample(sac.batch_size)
                    metrics = self.agent.update(last_batch)
                    c["n_updates"] += 1
                    values = torch.stack(list(metrics.values()))
                    if not bool(torch.isfinite(values).all()):
                        bad = [k for k, v in metrics.items() if not torch.isfinite(v)]
                        raise NonFiniteLossError(
                            f"non-finite {', '.join(bad)} at env step {c['env_step']:,} "
                            f"(update {c['n_updates']:,})"
                        )
                    for k, v in metrics.items():
                        metric_sums[k] = metric_sums.get(k, 0.0) + v
                    metric_count += 1
            # 4. Receive, store, push frames. An env whose worker failed starts over: its
            # partial episode is dropped and its frame stack restarts.
            step = self.venv.step_wait() if run.overlap else self.venv.step(actions)
            failed = step.failed
            for i, reason in step.failures.items():
                print(
                    f"\nwarning: env {i}'s worker failed at env step {c['env_step']:,}: "
                    f"{reason}; its partial episode is dropped and it starts a new one "
                    f"(restart {self.venv.restart_counts[i]})"
                )
            self.replay.add(
                actions, step.next_obs, step.terminated, step.truncated, step.obs, discard=failed
            )
            done = step.done & ~failed
            if self.stack is not None:
                self.stack.push(
                    torch.as_tensor(step.obs[PIXELS], device=self.device),
                    torch.as_tensor(done | failed, device=self.device),
                )
            obs = step.obs
            c["env_step"] += n
            c["vector_step"] += 1
            # 5. Account.
            st["episode_return"] += step.reward
            st["episode_length"] += 1
            for i in np.flatnonzero(done):
                st["successes"].append(float(step.is_success[i]))
                st["returns"].append(float(st["episode_return"][i]))
                st["lengths"].append(int(st["episode_length"][i]))
                st["episode_return"][i], st["episode_length"][i] = 0.0, 0
                c["episodes"] += 1
            st["episode_return"][failed], st["episode_length"][failed] = 0.0, 0
            if self.venv.gave_up:
                path = self.save()
                raise TooManyWorkerFailures(
                    f"{self.venv.gave_up}; stopped at env step {c['env_step']:,} with checkpoint "
                    f"{path}. Fix the cause, then --resume (failed envs start new episodes)."
                )
            elapsed = time.monotonic() - self.start_time
            fps = (c["env_step"] - start_step) / max(elapsed, 1e-9)
            success = float(np.mean(st["successes"])) if st["successes"] else None
            if c["env_step"] >= next_log:
                next_log += run.log_interval
                scalars = {
                    "time/fps": fps,
                    "time/worker_restarts": self.venv.total_restarts,
                    "train/n_updates": c["n_updates"],
                }
                if st["returns"]:
                    scalars.update(
                        {
                            "rollout/success_rate": success,
                            "rollout/ep_rew_mean": float(np.mean(st["returns"])),
                            "rollout/ep_len_mean": float(np.mean(st["lengths"])),
                        }
                    )
                if metric_count:
                    scalars.update({f"train/{k}": v / metric_count for k, v in metric_sums.items()})
                    metric_sums, metric_count = {}, 0
                if last_batch is not None:
                    sample = {k: v[:32] for k, v in last_batch.obs.items()}
                    scalars.update(self.agent.encoder_diagnostics(sample))
                logger.log(scalars, c["env_step"])
            logger.progress(c["env_step"], fps, success)
            if c["env_step"] >= next_ckpt:
                next_ckpt += run.checkpoint_freq
                self.save()
        logger.progress(
            c["env_step"],
            fps if c["env_step"] > start_step else 0.0,
            float(np.mean(st["successes"])) if st["successes"] else None,
            force=True,
        )
        if self.last_checkpoint is None or not self.last_checkpoint.name.endswith(
            f"{c['env_step']:012d}"
        ):
            path = self.save()
        else:
            path = self.last_checkpoint
        print(f"\ncheckpoint: {path}")


def _to_tensor_tree(value):
    """numpy arrays -> tensors, recursively, so that state.pt loads with weights_only=True."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, dict):
        return {k: _to_tensor_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_tensor_tree(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_tensor_tree(value):
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _from_tensor_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_tensor_tree(v) for v in value]
    return value


def load_config(meta: dict) -> TrainConfig:
    return from_dict(TrainConfig, meta["config"])
