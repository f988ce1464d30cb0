"""Building the parts of a run from its config: device, run directory, env description,
replay and agent; shared by the trainer, eval.py and the policy loader.

Nothing here starts a worker process or allocates a large buffer by itself, except
`build_replay` (and `load_saved_replay`, which calls it), which checks its memory plan first.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from pixelrl.agents.estimator import EstimatorAgent, StateEstimator
from pixelrl.agents.sac import SAC
from pixelrl.buffers.replay import EpisodeReplay, ReplaySpec
from pixelrl.compat import applies, config_as_saved, config_tag, config_to_resume
from pixelrl.config import (
    ESTIMATOR_FIELDS,
    ConfigError,
    TrainConfig,
    estimator_applies,
    privileged_critic_applies,
)
from pixelrl.envs import (
    ACHIEVED_GOAL,
    PIXELS,
    STATE_ESTIMATE,
    make_fetch_env,
    max_episode_steps,
    policy_keys,
    reward_params,
)


def resolve_device(name: str, amp: str = "none") -> torch.device:
    """--device: auto (cuda if available, else cpu), cpu, cuda or cuda:N; --amp bf16 needs
    it to be CUDA (`pixelrl.config.validate_device` checks how they are written)."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu")
    if amp == "bf16" and device.type != "cuda":
        raise ConfigError(f"--amp bf16 needs a CUDA device; this run is on {device}")
    return device


def run_directory(cfg: TrainConfig) -> Path:
    """runs/<config tag>/seed<N>/ (`pixelrl.compat.config_tag`)."""
    return Path(cfg.run.runs_dir) / config_tag(cfg) / f"seed{cfg.run.seed}"


# Flags that may change between an interrupted run and its resume.
_RESUMABLE_RUN_FIELDS = {
    "total_steps",
    "resume",
    "progress",
    "log_interval",
    "encoder_diagnostics",
    "device",
    "runs_dir",  # a run directory moved to another disk or machine resumes from there
    "checkpoint_freq",
    "save_buffer",
    "overlap",
    "worker_timeout",
    "max_worker_restarts_per_hour",
    "max_consecutive_worker_failures",
}


def check_resume_config(saved: dict, cfg: TrainConfig) -> None:
    """Raise ConfigError naming every flag that differs from the interrupted run's (and the
    commit that resumes a run trained with a flag value pixelrl no longer has)."""
    saved_cfg = config_to_resume(saved)
    changed = []
    for section in ("env", "replay", "network", "sac", "run"):
        for f in dataclasses.fields(getattr(cfg, section)):
            if section == "run" and f.name in _RESUMABLE_RUN_FIELDS:
                continue
            if not applies(f.name, cfg) or (
                f.name in ESTIMATOR_FIELDS and not estimator_applies(cfg)
            ):
                continue  # it changes nothing in this run
            value, now = (
                getattr(getattr(saved_cfg, section), f.name),
                getattr(getattr(cfg, section), f.name),
            )
            if now != value:
                changed.append(f"--{f.name.replace('_', '-')} (run: {value}, now: {now})")
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


def build_agent(
    cfg: TrainConfig, spec: ReplaySpec, obs_space, action_space, device
) -> SAC | EstimatorAgent:
    """The agent for a config; pixels are seen stacked (3k, H, W). With the state estimator
    (`estimator_applies`): the estimator reads the image, SAC the vectors with the estimate
    where the image was (and the critic the true achieved goal there:
    `privileged_critic_applies`); otherwise SAC reads every input itself."""
    shapes = {k: tuple(space.shape) for k, space in obs_space.spaces.items()}
    if PIXELS in shapes:
        c, h, w = shapes[PIXELS]
        shapes[PIXELS] = (c * cfg.env.frame_stack, h, w)
    actor_keys = critic_keys = policy_keys(shapes, cfg.env.goal_mode)
    estimating = estimator_applies(cfg)
    if estimating:
        actor_keys = [k for k in actor_keys if k != PIXELS] + [STATE_ESTIMATE]
        critic_keys = actor_keys
        if privileged_critic_applies(cfg):
            critic_keys = [ACHIEVED_GOAL if k == STATE_ESTIMATE else k for k in actor_keys]
        shapes[STATE_ESTIMATE] = shapes[ACHIEVED_GOAL]
    sac = SAC(
        {k: v for k, v in shapes.items() if k != PIXELS or not estimating},
        actor_keys,
        critic_keys,
        action_space.low,
        action_space.high,
        cfg.sac,
        hidden_sizes=cfg.network.hidden_sizes,
        device=device,
        compile=cfg.run.compile,
        amp=cfg.run.amp,
    )
    if not estimating:
        return sac
    goal_dim = shapes[ACHIEVED_GOAL][-1]
    estimator = StateEstimator(shapes[PIXELS], goal_dim, cfg.sac.learning_rate, device=device)
    return EstimatorAgent(estimator, sac)


def build_replay(cfg: TrainConfig, spec: ReplaySpec, device) -> EpisodeReplay:
    """The episode replay; it prints its memory plan and refuses one that does not fit. With
    the state estimator it keeps the estimate beside each frame."""
    if estimator_applies(cfg):
        spec = dataclasses.replace(spec, estimate_dim=spec.obs_shapes[ACHIEVED_GOAL][-1])
    return EpisodeReplay(cfg.replay, spec, device, seed=cfg.run.seed)


def load_saved_replay(checkpoint: str | os.PathLike, device="cpu") -> EpisodeReplay:
    """The replay a checkpoint saved (only a run's newest checkpoint keeps one), in a buffer
    built from the run's own config, for analyses of what a run stored."""
    checkpoint = Path(checkpoint)
    meta = json.loads((checkpoint / "meta.json").read_text())
    if not meta.get("replay_saved"):
        raise ConfigError(f"{checkpoint} kept no replay: only a run's newest checkpoint has one")
    cfg = config_as_saved(meta["config"])
    spec, _, _ = describe_env(cfg.env)
    replay = build_replay(cfg, spec, device)
    replay.load(checkpoint / "replay")
    return replay
