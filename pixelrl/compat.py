"""Reading what earlier versions of pixelrl saved: configs, checkpoints, run directory names.

Every allowance for older runs lives here, so that the rest of the code knows today's shapes
only.

- Flags pixelrl no longer has (`RETIRED`): values a study rejected, or options no result
  used. Today's code runs each at one value (`retired_values`). A saved run whose value
  differs resumes only with the commit `RETIRED_AT`, which still trains it; it is evaluated
  by today's code where that value changed only how it was trained (`TRAINING_ONLY`), and
  where its actor is one today's code builds (the coupled runs whose heads read the state
  estimate become a state estimator and SAC on vectors: the same weights). Otherwise the
  error names the commit.
- Fields added after runs were saved take the value that gives those runs' behaviour
  (`ADDED_LATER`); two early spellings (`encoder="drqv2"`, a boolean `state_estimate`) are
  read as what they meant.
- Run directories are named by how a config differs from `TAG_REFERENCE` (the defaults up to
  2026-12-03) over every field pixelrl ever had, retired ones at the value today's code runs
  with, so that a run keeps its directory when a default or a flag changes.
- Checkpoints: `agent_weights` rewrites an old agent's state dicts into today's layout.
"""

from __future__ import annotations

import dataclasses

import torch

from pixelrl.config import (
    ESTIMATOR_FIELDS,
    RETIRED_AT,
    ConfigError,
    TrainConfig,
    estimator_applies,
    to_dict,
    what_ran,
)

# Every flag pixelrl had and has no more: section -> field -> the value a config of today
# runs with, or a function of today's config for those that depend on the path.
RETIRED = {
    "env": {"render_size": 480},
    "replay": {"her_strategy": "future", "drq_pad": 4},
    "network": {
        "spatial_softmax": True,
        "spatial_softmax_temperature": 1.0,
        "keypoint_trunk": "running",
        "state_estimate": lambda cfg: "only" if cfg.sac.encoder_grad == "estimator" else "off",
        "norm": False,
        "features_dim": None,
        "normalize_obs": True,
        "obs_norm_clip": 5.0,
        "obs_norm_freeze_after": None,
    },
    "sac": {
        "encoder_lr": None,
        "clip_q_target": False,
        "aux_coef": lambda cfg: 1.0 if cfg.sac.encoder_grad == "estimator" else 0.0,
        "next_obs_encoder": "online",
        "privileged_critic": True,
    },
}
# Retired flags whose value changed only how a run was trained, not the networks that act:
# such a run evaluates with today's code. (The initial temperature is replaced by the
# learned one a checkpoint holds, and `norm` and `features_dim` sized encoders no run of
# today's encoder has.)
TRAINING_ONLY = {
    "her_strategy",
    "drq_pad",
    "spatial_softmax_temperature",
    "norm",
    "features_dim",
    "encoder_lr",
    "clip_q_target",
    "aux_coef",
    "next_obs_encoder",
    "privileged_critic",
    "obs_norm_freeze_after",
    "drq",
    "encoder_grad",
}
# Fields that change nothing without pixels (no image, no encoder, no estimator): a run
# without pixels is neither refused nor tagged for them.
PIXEL_ONLY = {
    "frame_stack",
    "image_size",
    "native_render",
    "render_size",
    "camera",
    "camera_lookat",
    "camera_distance",
    "camera_azimuth",
    "camera_elevation",
    "show_goal",
    "drq",
    "drq_pad",
    "encoder",
    "spatial_softmax",
    "spatial_softmax_temperature",
    "keypoint_trunk",
    "state_estimate",
    "norm",
    "features_dim",
    "encoder_lr",
    "aux_coef",
    "next_obs_encoder",
    "privileged_critic",
    "encoder_grad",
    "estimator_batch_size",
    "estimator_gradient_steps",
    "estimate_refresh_episodes",
}
# Fields added after runs were saved without them: the value that gives those runs'
# behaviour back.
ADDED_LATER = {
    "network": {"keypoint_trunk": "layernorm", "state_estimate": "off", "normalize_obs": False},
    "sac": {"aux_coef": 0.0, "privileged_critic": False, "next_obs_encoder": "split"},
}
# The defaults up to 2026-12-03, over every field pixelrl had then: run directories are named
# by what differs from it.
TAG_REFERENCE = {
    "env": {"goal_mode": "both", "frame_stack": 4, "render_size": 480},
    "replay": {"buffer_size": 500_000, "her_strategy": "future", "drq_pad": 4},
    "network": dict(RETIRED["network"], state_estimate="only"),
    "sac": dict(
        RETIRED["sac"], aux_coef=1.0, learning_rate=1e-4, gradient_steps=1, encoder_grad="critic"
    ),
}
# Every field pixelrl had, in the order run tags list them.
FIELD_ORDER = {
    "env": [
        "env_id",
        "full_state",
        "no_pixels",
        "goal_mode",
        "image_size",
        "native_render",
        "render_size",
        "camera",
        "camera_lookat",
        "camera_distance",
        "camera_azimuth",
        "camera_elevation",
        "show_goal",
        "proprioception",
        "frame_stack",
        "n_envs",
        "vector",
    ],
    "replay": ["buffer_size", "her_n_sampled_goal", "her_strategy", "drq", "drq_pad"],
    "network": [
        "encoder",
        "spatial_softmax",
        "spatial_softmax_temperature",
        "keypoint_trunk",
        "state_estimate",
        "norm",
        "features_dim",
        "hidden_sizes",
        "normalize_obs",
        "obs_norm_clip",
        "obs_norm_freeze_after",
    ],
    "sac": [
        "learning_rate",
        "encoder_lr",
        "gamma",
        "tau",
        "batch_size",
        "ent_coef",
        "encoder_grad",
        "clip_q_target",
        "aux_coef",
        "estimator_batch_size",
        "estimator_gradient_steps",
        "estimate_refresh_episodes",
        "next_obs_encoder",
        "privileged_critic",
        "gradient_steps",
        "train_freq",
        "learning_starts",
    ],
}
# Short names in run tags; a field not listed is written as its name and value.
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
_UNTAGGED = {"vector", "encoder"}  # they do not change what is learned


def retired_values(cfg: TrainConfig) -> dict[str, dict]:
    """The retired flags as today's code runs `cfg`: section -> field -> value."""
    return {
        section: {name: value(cfg) if callable(value) else value for name, value in values.items()}
        for section, values in RETIRED.items()
    }


def full_dict(cfg: TrainConfig) -> dict[str, dict]:
    """`cfg` over every field pixelrl ever had: today's fields and the retired ones."""
    data = to_dict(cfg)
    for section, values in retired_values(cfg).items():
        data[section].update(values)
    return data


def config_tag(cfg: TrainConfig) -> str:
    """`manip` plus each option that differs from TAG_REFERENCE (where it changes what `cfg`
    runs), over every field pixelrl had, in FIELD_ORDER: today's defaults give
    `manip_goal-desired_fs1_buf300000_lr0.001_estimatorEnc_gs4`."""
    data, default = full_dict(cfg), full_dict(TrainConfig())
    parts = ["manip"]
    for section, names in FIELD_ORDER.items():
        for name in names:
            value = data[section][name]
            reference = TAG_REFERENCE.get(section, {}).get(name, default[section][name])
            if name in _UNTAGGED or value == reference or not applies(name, cfg):
                continue
            if name in ESTIMATOR_FIELDS and not estimator_applies(cfg):
                continue
            text = _TAG_NAMES[name](value) if name in _TAG_NAMES else f"{name}{value}"
            if text:
                parts.append(str(text).replace("/", "-").replace(" ", ""))
    return "_".join(parts)


def config_as_saved(data: dict) -> TrainConfig:
    """A saved config as today's classes hold it, without asking whether today's code can
    train or act with it: for reading what a run stored (its replay)."""
    return _build(_today_choices(_spelled_as_today(data)))


def _spelled_as_today(data: dict) -> dict:
    """A saved config with the early spellings read as what they meant and fields added later
    filled in (a deep copy)."""
    data = {section: dict(values) for section, values in data.items()}
    network = data.setdefault("network", {})
    if network.get("encoder") == "drqv2":  # manip --no-spatial-softmax under another name
        network["encoder"], network["spatial_softmax"] = "manip", False
    if isinstance(network.get("state_estimate"), bool):  # a switch before it had three values
        network["state_estimate"] = "append" if network["state_estimate"] else "off"
    saved_before_retiring = any(
        name in data.get(section, {}) for section, names in RETIRED.items() for name in names
    )
    if saved_before_retiring:  # today's configs hold no retired field, and need no filling
        for section, values in ADDED_LATER.items():
            for name, value in values.items():
                data.setdefault(section, {}).setdefault(name, value)
    return data


def _today_choices(data: dict) -> dict:
    """`data` with choices pixelrl no longer has replaced by today's (the difference is what
    `_differences` reports), so that today's config classes can hold it."""
    data = {section: dict(values) for section, values in data.items()}
    data["network"]["encoder"] = "manip"
    if data["sac"].get("encoder_grad") not in ("estimator", "critic", None):
        data["sac"]["encoder_grad"] = "critic"
    data.setdefault("replay", {})["drq"] = False
    return data


def _build(data: dict) -> TrainConfig:
    """Today's TrainConfig from saved data: its fields only, tuples as tuples."""
    sections = {}
    for f in dataclasses.fields(TrainConfig):
        cls = f.default_factory
        values = data.get(f.name, {})
        kwargs = {
            g.name: tuple(values[g.name]) if isinstance(values[g.name], list) else values[g.name]
            for g in dataclasses.fields(cls)
            if g.name in values
        }
        sections[f.name] = cls(**kwargs)
    return TrainConfig(**sections)


def applies(name: str, cfg: TrainConfig) -> bool:
    """Whether a field (today's or retired) changes what `cfg` runs."""
    return cfg.env.obs_mode == "pixels" or name not in PIXEL_ONLY


def _differences(data: dict, cfg: TrainConfig, ignore=()) -> list[str]:
    """The flags pixelrl no longer has (or no longer has a saved run's value of) that the
    saved `data` ran with, as `--flag value`, where they change what `cfg` runs."""
    found = []
    for section, values in retired_values(cfg).items():
        for name, value in values.items():
            saved = data.get(section, {}).get(name, value)
            if name not in ignore and applies(name, cfg) and saved != value:
                found.append(f"--{name.replace('_', '-')} {saved}")
    for name, saved in (
        ("encoder", data["network"].get("encoder", "manip")),
        ("encoder_grad", data["sac"].get("encoder_grad", "estimator")),
    ):
        if (
            name not in ignore
            and applies(name, cfg)
            and saved != getattr(cfg.network if name == "encoder" else cfg.sac, name)
        ):
            found.append(f"--{name.replace('_', '-')} {saved}")
    if data.get("replay", {}).get("drq") and "drq" not in ignore and applies("drq", cfg):
        found.append("--drq")
    return found


def config_to_resume(data: dict) -> TrainConfig:
    """The config of a saved run, to train on with today's code; ConfigError naming the
    commit that can, where it ran with a flag value pixelrl no longer has."""
    data = _spelled_as_today(data)
    cfg = _build(_today_choices(data))
    retired = _differences(data, cfg)
    if retired:
        raise ConfigError(
            f"this run was trained with {', '.join(retired)}, which pixelrl no longer has; "
            f"resume it with commit {RETIRED_AT} (git checkout {RETIRED_AT})"
        )
    return cfg


def config_to_evaluate(data: dict) -> tuple[TrainConfig, str]:
    """(the config today's code acts with, the agent layout the saved weights are in) for a
    saved run: `estimator_today` (a state estimator and SAC on vectors, saved as today's code
    saves them), `estimator` (the same from a coupled run whose heads read the estimate),
    `end_to_end` (the encoder's features read by the heads, saved in the coupled layout), or
    `sac` (SAC alone: without pixels, or end to end as today's code saves it).
    ConfigError naming the commit where the acting networks are not one today's code builds.
    """
    data = _spelled_as_today(data)
    routing = data["sac"].get("encoder_grad", "estimator")
    estimate = data["network"].get("state_estimate", "only")
    pixels = not (data["env"].get("full_state") or data["env"].get("no_pixels"))
    layout = "sac"
    if pixels and routing == "estimator":
        layout = "estimator_today"
    elif pixels and "state_estimate" in data["network"]:  # saved with the encoder inside SAC
        if estimate == "only":  # the heads read the state head's estimate: the estimator's
            data["sac"]["encoder_grad"], layout = "estimator", "estimator"
        elif estimate == "off":
            data["sac"]["encoder_grad"], layout = "critic", "end_to_end"
    cfg = _build(_today_choices(data))
    retired = _differences(data, cfg, ignore=TRAINING_ONLY)
    if retired:
        raise ConfigError(
            f"this run's acting networks were built with {', '.join(retired)}, which pixelrl "
            f"no longer has; evaluate it with commit {RETIRED_AT} (git checkout {RETIRED_AT})"
        )
    return cfg, layout


def what_ran_saved(data: dict) -> dict:
    """`pixelrl.config.what_ran` of a saved config, the flags pixelrl no longer has read as the
    run had them (the encoder's routing, what the heads read of the image, the critic's
    input)."""
    cfg = config_as_saved(data)
    out = what_ran(cfg)
    data = _spelled_as_today(data)
    if cfg.env.obs_mode == "pixels" and "state_estimate" in data.get("network", {}):
        out["encoder_grad"] = data["sac"].get("encoder_grad")
        out["state_estimate"] = data["network"]["state_estimate"]
        out["privileged_critic"] = bool(
            data["sac"].get("privileged_critic")
            and data["sac"].get("aux_coef", 0) > 0
            and out["state_estimate"] != "off"
            and cfg.env.goal_mode != "both"
        )
    return out


def agent_weights(layout: str, data: dict, agent_state: dict) -> dict:
    """The saved agent's network weights in today's layout (`state` of SAC or EstimatorAgent,
    networks only), from the `layout` `config_to_evaluate` named."""
    networks = agent_state["networks"]
    if layout == "estimator_today":
        return {"networks": networks, "estimator": agent_state["estimator"]}
    networks = {k: _count_as_vector(k, v) for k, v in networks.items()}
    separate = data.get("sac", {}).get("encoder_grad") == "separate"
    acting_encoder = "actor_encoder." if separate else "critic_encoder."  # what the actor read
    sac, estimator = {}, {}
    for key, value in networks.items():
        if key.startswith(("critic_encoder.", "actor_encoder.", "target_encoder.")):
            if not key.startswith(acting_encoder):
                continue
            rest = key[len(acting_encoder) :]
            if layout == "estimator" and rest.startswith("image."):
                estimator[rest] = value
            elif layout == "estimator" and rest.startswith("state_head."):
                estimator["head." + rest[len("state_head.") :]] = value
            elif layout == "end_to_end" and rest.startswith("image."):
                sac[rest] = value
        else:
            sac[key] = value
    return {"networks": sac, **({"estimator": estimator} if layout == "estimator" else {})}


def _count_as_vector(key: str, value: torch.Tensor) -> torch.Tensor:
    """RunningMeanStd's count, saved as a 0-dim tensor by early runs, is (1,) today."""
    return value.reshape(1) if key.endswith(".count") and value.dim() == 0 else value


def agent_state_to_resume(agent_state: dict) -> dict:
    """A saved agent's full state (networks and optimizers) as today's `load_state` reads it."""
    networks = {k: _count_as_vector(k, v) for k, v in agent_state["networks"].items()}
    return {**agent_state, "networks": networks}
