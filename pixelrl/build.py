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
from pixelrl.buffers.her import reward_range
from pixelrl.buffers.replay import EpisodeReplay, ReplaySpec
from pixelrl.config import (
    ESTIMATOR_FIELDS,
    ConfigError,
    EnvConfig,
    ReplayConfig,
    SACConfig,
    TrainConfig,
    estimator_applies,
    from_dict,
    privileged_critic_applies,
    to_dict,
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


def resolve_device(name: str) -> torch.device:
    """--device: auto (cuda if available, else cpu), cpu, cuda or cuda:N."""
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
    "keypoint_trunk": lambda v: f"kp-{v}",
    "spatial_softmax_temperature": lambda v: f"T{v:g}",
    "aux_coef": lambda v: f"aux{v:g}",
    "state_estimate": lambda v: f"estimate-{v}",
    "privileged_critic": lambda v: "" if v else "noPrivCritic",
    "estimator_batch_size": lambda v: f"ebs{v}",
    "estimator_gradient_steps": lambda v: f"egs{v}",
    "estimate_refresh_episodes": lambda v: f"refresh{v}",
}
# Options that do not change what is learned (they are not part of the tag).
_UNTAGGED = {"vector", "encoder"}

# Run directories are named by how a config differs from this fixed reference, not from
# today's defaults, so that a run keeps its directory when a default changes: these are the
# defaults up to 2026-12-03 (the SB3 prototype's hyperparameters with the encoder recipe). A
# default changed later adds its old value here.
TAG_REFERENCE = TrainConfig(
    env=EnvConfig(goal_mode="both", frame_stack=4),
    replay=ReplayConfig(buffer_size=500_000),
    sac=SACConfig(learning_rate=1e-4, gradient_steps=1, encoder_grad="critic"),
)


def config_tag(cfg: TrainConfig) -> str:
    """`manip` for TAG_REFERENCE, plus each option that differs from it, e.g.
    `manip_goal-desired_fs1_buf300000_lr0.001_gs4_estimatorEnc` for today's defaults."""
    parts = [cfg.network.encoder]
    for section in ("env", "replay", "network", "sac"):
        for f in dataclasses.fields(getattr(cfg, section)):
            value = getattr(getattr(cfg, section), f.name)
            if f.name in _UNTAGGED or value == getattr(getattr(TAG_REFERENCE, section), f.name):
                continue
            if f.name == "privileged_critic" and not privileged_critic_applies(cfg):
                continue  # it changes nothing here: the same run either way
            if f.name in ESTIMATOR_FIELDS and not estimator_applies(cfg):
                continue
            name = _TAG_NAMES.get(f.name)
            text = name(value) if name else f"{f.name}{value}"
            if text:
                parts.append(str(text).replace("/", "-").replace(" ", ""))
    return "_".join(parts)


def run_directory(cfg: TrainConfig) -> Path:
    """runs/<config tag>/seed<N>/"""
    return Path(cfg.run.runs_dir) / config_tag(cfg) / f"seed{cfg.run.seed}"


# Flags that may change between an interrupted run and its resume.
_RESUMABLE_RUN_FIELDS = {
    "total_steps",
    "resume",
    "progress",
    "log_interval",
    "encoder_diagnostics",
    "device",
    "checkpoint_freq",
    "save_buffer",
    "overlap",
    "worker_timeout",
    "max_worker_restarts_per_hour",
    "max_consecutive_worker_failures",
}


def _what_runs(cfg: TrainConfig) -> dict:
    """The config as data, with --privileged-critic as it acts: off where it does not apply
    (a run saved before it was the default resumes under today's defaults); the state
    estimator's settings None where there is none."""
    data = to_dict(cfg)
    data["sac"]["privileged_critic"] = cfg.sac.privileged_critic and privileged_critic_applies(cfg)
    if not estimator_applies(cfg):
        data["sac"].update(dict.fromkeys(ESTIMATOR_FIELDS))
    return data


def check_resume_config(saved: dict, cfg: TrainConfig) -> None:
    """Raise ConfigError naming every flag that differs from the interrupted run's."""
    current = _what_runs(cfg)
    # Through the config classes: a flag pixelrl no longer has is dropped, an alias (drqv2)
    # becomes what it stands for, a flag added since takes the value the run had without it.
    saved = _what_runs(from_dict(TrainConfig, saved))
    changed = []
    for section, values in saved.items():
        for key, value in values.items():
            if section == "run" and key in _RESUMABLE_RUN_FIELDS:
                continue
            now = current[section][key]
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


def build_agent(
    cfg: TrainConfig, spec: ReplaySpec, obs_space, action_space, device
) -> SAC | EstimatorAgent:
    """The agent for a config; pixels are seen stacked (3k, H, W). With the state estimator
    (`estimator_applies`): the estimator reads the image, and SAC the vectors with the
    estimate in the image's place; otherwise SAC reads every input itself."""
    shapes = {k: tuple(space.shape) for k, space in obs_space.spaces.items()}
    if PIXELS in shapes:
        c, h, w = shapes[PIXELS]
        shapes[PIXELS] = (c * cfg.env.frame_stack, h, w)
    keys = policy_keys(shapes, cfg.env.goal_mode)
    estimating = estimator_applies(cfg)
    if estimating:
        keys = [k for k in keys if k != PIXELS] + [STATE_ESTIMATE]
        shapes[STATE_ESTIMATE] = shapes[ACHIEVED_GOAL]
    sac = SAC(
        {k: v for k, v in shapes.items() if k != PIXELS or not estimating},
        keys,
        action_space.low,
        action_space.high,
        cfg.network,
        cfg.sac,
        device,
        reward_range=reward_range(spec.reward_type),
        compile=cfg.run.compile,
        amp=cfg.run.amp,
    )
    if not estimating:
        return sac
    estimator = StateEstimator(
        cfg.network,
        shapes[PIXELS],
        shapes[ACHIEVED_GOAL][-1],
        learning_rate=cfg.sac.encoder_lr or cfg.sac.learning_rate,
        loss_coef=cfg.sac.aux_coef,
        device=device,
    )
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
    cfg = load_config(meta)
    spec, _, _ = describe_env(cfg.env)
    replay = build_replay(cfg, spec, device)
    replay.load(checkpoint / "replay")
    return replay


def load_config(meta: dict) -> TrainConfig:
    """The config a checkpoint's meta.json was written with."""
    return from_dict(TrainConfig, meta["config"])
