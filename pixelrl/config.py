"""Typed, frozen configuration for pixelrl, nested by concern.

`tyro.cli` turns these dataclasses into the command line in `train.py` and `eval.py`; the
docstring under each field becomes its `--help` text. Flags are flat (`--encoder`, not
`--network.encoder`) so that the SB3 prototype's training command (the Stable-Baselines3
pipeline pixelrl replaces, benchmarks/sb3_pipeline.py) works unchanged.

Defaults are the measured recipe for pixel Push with the puck only in the image
(benchmarks/learning.md): the networks read proprioception, the desired goal and a state
estimator's estimate of the puck from a single 84x84 frame; the estimator (ManipulationCNN +
SpatialSoftmax + normalized keypoints + an MLP head) learns from its own supervised loss, and
SAC's updates read its stored estimates, no image. The SB3 prototype's settings are one
command in the README.

Nothing mutates a config after parsing; constructors take their own sub-config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

FETCH_ENV_IDS = ("FetchReach-v4", "FetchPush-v4", "FetchSlide-v4", "FetchPickAndPlace-v4")
OBS_MODES = ("pixels", "full-state", "no-pixels")
GOAL_MODES = ("none", "desired", "both")
ENCODERS = ("nature", "manip", "drqv2")
KEYPOINT_TRUNKS = ("running", "layernorm", "linear", "none")
STATE_ESTIMATES = ("off", "append", "only")
ENCODER_GRADS = ("estimator", "critic", "actor", "separate")
NEXT_OBS_ENCODERS = ("target", "online", "split")
HER_STRATEGIES = ("future", "final", "episode")
MIN_IMAGE_SIZE = 32


@dataclass(frozen=True)
class EnvConfig:
    """What the agent observes and how it is rendered."""

    env_id: str = "FetchPush-v4"
    """Gymnasium-robotics Fetch task: FetchPush-v4, FetchReach-v4, FetchSlide-v4 or
    FetchPickAndPlace-v4."""
    full_state: bool = False
    """Observe the raw 25-D Fetch state vector plus goals instead of pixels (the state-based
    control run)."""
    no_pixels: bool = False
    """Observe robot proprioception plus goals only, no pixels (the vector-only ablation)."""
    goal_mode: Literal["none", "desired", "both"] = "desired"
    """Which goal vectors the networks see: none, desired, or both (achieved and desired). The
    replay always keeps both for HER. In Push the achieved goal is the puck's position: with
    `desired` the networks find the puck in the image; with `both` it is also a vector input."""
    image_size: int = 84
    """Side of the square image the agent sees, in pixels (>= 32)."""
    native_render: bool = True
    """Render at image_size directly. --no-native-render takes the SB3 prototype's path: render at
    render_size, then PIL bilinear resize to image_size."""
    render_size: int = 480
    """Render resolution of the resize path (--no-native-render)."""
    camera: str = "free"
    """'free' for Fetch's default free camera (moved by the camera-* flags), or the name of a
    camera in the MuJoCo model (head_camera_rgb, gripper_camera_rgb, external_camera_0)."""
    camera_lookat: tuple[float, float, float] = (1.3, 0.75, 0.55)
    """Free camera: point looked at (world x, y, z)."""
    camera_distance: float = 2.5
    """Free camera: distance from the look-at point."""
    camera_azimuth: float = 132.0
    """Free camera: azimuth in degrees."""
    camera_elevation: float = -14.0
    """Free camera: elevation in degrees."""
    show_goal: bool = False
    """Draw the goal marker (site target0) in the image. Off by default: HER relabels the goal
    vector, and an image showing the original goal would contradict it."""
    proprioception: bool = True
    """Pixels mode: give the networks the robot's proprioception. --no-proprioception leaves
    pixels and goals only (the SB3 prototype's runs without --proprio); with --goal-mode desired the
    networks must then find the gripper in the image."""
    frame_stack: int = 1
    """Frames stacked for the networks (on the learner's device; workers return single
    frames). The state estimator reads positions from one frame; the SB3 prototype stacked 4."""
    n_envs: int = 4
    """Parallel environments (one worker process each)."""
    vector: Literal["async", "sync"] = "async"
    """async: one worker process per env with its own EGL context; sync: all envs in this
    process (debugging)."""

    @property
    def obs_mode(self) -> str:
        if self.full_state:
            return "full-state"
        if self.no_pixels:
            return "no-pixels"
        return "pixels"


@dataclass(frozen=True)
class ReplayConfig:
    """The episode replay buffer, HER relabeling and DrQ augmentation."""

    buffer_size: int = 300_000
    """Replay capacity in transitions (converted to whole episodes). With pixels each takes
    ~21 KB (one 84x84 frame): 6.4 GB for 300K, allocated at the start."""
    her_n_sampled_goal: int = 8
    """HER k: a fraction k/(k+1) of sampled transitions gets a relabeled goal (0 disables HER)."""
    her_strategy: Literal["future", "final", "episode"] = "future"
    """Where relabeled goals come from: a later step (future), the last step (final), or any
    step (episode) of the same episode."""
    drq: bool = False
    """DrQ random-shift augmentation of sampled images (--drq to enable; the winning recipe
    uses --no-drq because the shift corrupts SpatialSoftmax coordinates)."""
    drq_pad: int = 4
    """DrQ shift range in pixels (replicate padding, random crop back)."""


@dataclass(frozen=True)
class NetworkConfig:
    """Encoders and heads."""

    encoder: Literal["nature", "manip", "drqv2"] = "manip"
    """Image encoder: nature (NatureCNN), manip (ManipulationCNN + SpatialSoftmax), drqv2
    (ManipulationCNN + flatten + linear: another name for manip --no-spatial-softmax, stored as
    that)."""
    spatial_softmax: bool = True
    """manip only: --no-spatial-softmax replaces SpatialSoftmax by flatten + linear (= drqv2)."""
    spatial_softmax_temperature: float = 1.0
    """Initial temperature of SpatialSoftmax (learned from there, as its log). Below 1 the
    attention is sharper from the start, so keypoints move with what they track sooner."""
    keypoint_trunk: Literal["running", "layernorm", "linear", "none"] = "running"
    """What the SpatialSoftmax keypoints pass through (manip with SpatialSoftmax only; the
    other encoders have their own trunk, see --encoder): running (each coordinate scaled by its
    running mean and std across the data; measured best, benchmarks/learning.md), layernorm
    (LayerNorm across the 64 coordinates of an image + Tanh: the SB3 prototype's), linear
    (Linear -> LayerNorm -> Tanh: DrQ-v2's trunk), none (raw coordinates)."""
    state_estimate: Literal["off", "append", "only"] = "only"
    """What the actor and critic read of the image (pixels only): off (the image features),
    append (the image features and the state head's estimate of the achieved goal, in
    normalized units), only (the estimate instead of the image features; measured best,
    benchmarks/learning.md). The estimate is detached where they read it: only the auxiliary
    loss trains it (with `only`, the image encoder learns from the auxiliary loss alone).
    Needs --aux-coef > 0. Where the achieved goal is not an input, the critic reads the true
    one in the estimate's place (--privileged-critic)."""
    norm: bool = False
    """nature only: LayerNorm + Tanh trunk on the CNN output (the SB3 prototype's first fix)."""
    features_dim: int | None = None
    """Image feature size of the flat heads (default: 256 for nature, 50 with --norm and for
    drqv2). SpatialSoftmax always gives 2 x 32 = 64."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the actor and critic MLPs."""
    normalize_obs: bool = True
    """Scale every vector input (proprioception, state, goals) per dimension by running mean
    and std of the sampled batches, clipped to +-obs-norm-clip; achieved and desired goals share
    one set of statistics. Without it, image features drown the centimetre-scale vectors
    (--no-normalize-obs: the SB3 prototype's raw vectors)."""
    obs_norm_clip: float = 5.0
    """Normalized vector inputs are clipped to [-obs_norm_clip, obs_norm_clip]."""
    obs_norm_freeze_after: int | None = None
    """Stop updating the normalization statistics after this many sampled batches (default:
    never; 1 keeps the first batch's statistics)."""

    def __post_init__(self):
        # drqv2 is manip --no-spatial-softmax under another name: one network, one path, one
        # run-directory tag (set at construction, like any default).
        if self.encoder == "drqv2":
            object.__setattr__(self, "encoder", "manip")
            object.__setattr__(self, "spatial_softmax", False)
        if isinstance(self.state_estimate, bool):  # written as a switch by early runs
            object.__setattr__(self, "state_estimate", "append" if self.state_estimate else "off")

    @property
    def uses_spatial_softmax(self) -> bool:
        return self.encoder == "manip" and self.spatial_softmax


@dataclass(frozen=True)
class SACConfig:
    """Soft actor-critic."""

    learning_rate: float = 1e-3
    """Adam learning rate of actor, critic, state estimator (or encoder) and entropy
    coefficient."""
    encoder_lr: float | None = None
    """Adam learning rate of the image encoder (default: --learning-rate)."""
    gamma: float = 0.95
    """Discount factor."""
    tau: float = 0.005
    """Polyak coefficient of the target critic (and its encoder copy)."""
    batch_size: int = 256
    """Transitions per gradient step of SAC."""
    ent_coef: str = "0.05"
    """Entropy coefficient: a number (fixed) or 'auto' (learned, target entropy -|A|)."""
    encoder_grad: Literal["estimator", "critic", "actor", "separate"] = "estimator"
    """Which loss trains the image encoder (pixels only). estimator: the auxiliary loss alone,
    as a state estimator with its own optimizer, batch (--estimator-batch-size) and steps
    (--estimator-gradient-steps); the replay keeps its estimate beside each frame, and SAC's
    updates read those, no image (pixelrl/agents/estimator.py; needs --state-estimate only).
    The others put the encoder in the RL update: critic (DrQ-v2: shared encoder in the critic
    optimizer), actor (SB3 share_features_extractor=True), separate (SB3 default: one each;
    the next action then always reads the actor's own encoder, whatever --next-obs-encoder
    says, since it holds other weights: see pixelrl/agents/sac.py). With --state-estimate
    only, no RL loss reaches the encoder under any of them: they differ only in which
    optimizer carries the auxiliary loss, and each update encodes its batch's images."""
    clip_q_target: bool = False
    """Clip the critic's soft target to the range of returns, [r_min, r_max] / (1 - gamma):
    [-1/(1-gamma), 0] for Fetch's sparse rewards (OpenAI baselines' HER clips the same way).
    Not exact for SAC: the entropy bonus can lift a soft value above 0 (see
    benchmarks/learning.md); off by default. Dense rewards: only the upper bound 0 applies."""
    aux_coef: float = 1.0
    """Weight of the auxiliary loss (pixels only; 0: off): the state head regresses the
    normalized achieved goal (the gripper in Reach, the object in Push), which the replay
    stores for HER, from the image features; it trains the encoder through the optimizer that
    owns it. Privileged information at training time only: acting never reads the achieved
    goal. Without pixels there is no image, and no auxiliary loss."""
    estimator_batch_size: int = 32
    """--encoder-grad estimator: frames per gradient step of the state estimator."""
    estimator_gradient_steps: int = 1
    """--encoder-grad estimator: gradient steps of the state estimator per training round
    (every --train-freq vector steps, beside SAC's --gradient-steps)."""
    estimate_refresh_episodes: int = 1
    """--encoder-grad estimator: stored episodes whose estimates are rewritten by the current
    estimator each training round, the stalest first (0: never), so that the estimates SAC
    trains on follow the estimator as it improves. New episodes are estimated when they enter
    the replay, in addition."""
    next_obs_encoder: Literal["target", "online", "split"] = "online"
    """Which encoder reads the next observation: online (the trained encoder, no gradient, for
    both the target Q and the next action: DrQ-v2; measured best from pixels,
    benchmarks/learning.md), target (the Polyak-averaged copy, for both: it lags the online
    encoder, and its features of the same image differ), split (target for the target Q,
    online for the next action: SB3). With --encoder-grad separate the next action reads the
    actor's own encoder in all three."""
    privileged_critic: bool = True
    """The critic reads the true achieved goal (the simulator's position of the gripper in
    Reach, of the object in Push, normalized; the replay stores it for HER) where the actor
    reads the state head's estimate of it: an asymmetric actor-critic (Pinto et al. 2018).
    Training time only: acting, eval and load_policy use the actor, which never reads it.
    It applies where the actor reads the estimate in the achieved goal's place: pixels,
    --state-estimate append or only, and --goal-mode desired or none (with both, the achieved
    goal is an input of both networks; without pixels there is no estimate); elsewhere it
    changes nothing. --no-privileged-critic: the critic reads the estimate, as the actor."""
    gradient_steps: int = 4
    """Gradient steps of SAC per training round."""
    train_freq: int = 1
    """Vector-env steps between training rounds (1 = every vector step, as the SB3 prototype
    ran)."""
    learning_starts: int = 1000
    """Env steps of uniformly random actions before learning starts."""

    @property
    def ent_coef_auto(self) -> bool:
        return self.ent_coef.strip().lower().startswith("auto")


@dataclass(frozen=True)
class RunConfig:
    """The run: length, seed, device, logging and checkpoints."""

    total_steps: int = 5_000_000
    """Env steps to train for (summed over the parallel envs)."""
    seed: int = 0
    """Run seed: torch, numpy and the random-phase actions are seeded from it, and env i
    from a hash of (seed, i), so runs with different seeds share no env."""
    device: str = "auto"
    """Learner device: auto (cuda if available, else cpu), cpu, cuda, cuda:N."""
    checkpoint_freq: int = 500_000
    """Env steps between checkpoints (one is also written at the end)."""
    save_buffer: bool = True
    """Save the replay buffer with each checkpoint so resume continues exactly
    (--no-save-buffer for large buffers: resume then refills before learning again)."""
    resume: bool = False
    """Continue the run in its directory from the latest complete checkpoint."""
    runs_dir: str = "runs"
    """Root directory of run directories runs/<config-tag>/seed<N>/."""
    log_interval: int = 1000
    """Env steps between TensorBoard scalar writes."""
    encoder_diagnostics: bool = True
    """At each log, probe the encoder on 512 stored observations (encoder/*, probe/*: spread
    across the batch, a held-out linear probe of the achieved goal). About a second on a
    2-core CPU, so 1-2% of a run at the default --log-interval; --no-encoder-diagnostics for
    timing runs that log often."""
    overlap: bool = True
    """Run the update while the workers step (--no-overlap: strictly sequential)."""
    progress: bool = True
    """Show a progress bar on the terminal."""
    compile: bool = False
    """Compile the whole SAC update with torch.compile (on CUDA with CUDA graphs and
    capturable Adam). The first updates wait for the compiler (about a minute); the eager
    update in pixelrl/agents/sac.py stays the reference."""
    amp: Literal["none", "bf16"] = "none"
    """bf16: run the networks' forward passes under bf16 autocast (CUDA only); losses and
    optimizer state stay fp32."""
    worker_timeout: float = 120.0
    """Seconds an env worker may take to answer before it counts as hung and is replaced."""
    max_worker_restarts_per_hour: int = 20
    """Env worker failures (death, hang, exception) tolerated per hour, all envs together;
    each one restarts that env with a new episode. One more stops the run with a checkpoint
    and exit code 1."""
    max_consecutive_worker_failures: int = 3
    """An env whose worker fails this many times without finishing an episode between (failed
    restarts included; a failure drops the partial episode, so such an env collects nothing)
    is given up: the run stops with a checkpoint and exit code 1, for an env that keeps
    hanging after about this many times --worker-timeout."""


@dataclass(frozen=True)
class TrainConfig:
    """pixelrl: SAC + HER from pixels on gymnasium-robotics Fetch tasks."""

    env: EnvConfig = field(default_factory=EnvConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    run: RunConfig = field(default_factory=RunConfig)


def privileged_critic_applies(cfg: TrainConfig) -> bool:
    """Whether --privileged-critic changes what the critic reads: where the actor reads the
    state estimate in the achieved goal's place (pixels, the auxiliary loss, --state-estimate
    append or only, --goal-mode desired or none). Elsewhere both values run the same."""
    return (
        cfg.env.obs_mode == "pixels"
        and cfg.sac.aux_coef > 0
        and cfg.network.state_estimate != "off"
        and cfg.env.goal_mode != "both"
    )


# The state estimator's own settings (SACConfig fields): they change nothing without it.
ESTIMATOR_FIELDS = ("estimator_batch_size", "estimator_gradient_steps", "estimate_refresh_episodes")


def estimator_applies(cfg: TrainConfig) -> bool:
    """Whether the image is the state estimator's alone (--encoder-grad estimator): with pixels;
    then SAC's updates read stored estimates and no image."""
    return cfg.env.obs_mode == "pixels" and cfg.sac.encoder_grad == "estimator"


def what_ran(cfg: TrainConfig) -> dict:
    """What a run's networks saw and which path trained them, as results should name it: the
    observation and goal modes, proprioception, frames, the encoder, which loss trained it,
    what the heads read of the image, and the privileged critic as it acted."""
    return {
        "env_id": cfg.env.env_id,
        "obs_mode": cfg.env.obs_mode,
        "goal_mode": cfg.env.goal_mode,
        "proprioception": cfg.env.proprioception,
        "frame_stack": cfg.env.frame_stack,
        "encoder": cfg.network.encoder if cfg.env.obs_mode == "pixels" else None,
        "encoder_grad": cfg.sac.encoder_grad if cfg.env.obs_mode == "pixels" else None,
        "state_estimate": cfg.network.state_estimate if cfg.env.obs_mode == "pixels" else None,
        "privileged_critic": cfg.sac.privileged_critic and privileged_critic_applies(cfg),
    }


class ConfigError(ValueError):
    """A flag has a value pixelrl cannot run with; the message names the flag."""


def _choices(values) -> str:
    return ", ".join(str(v) for v in values)


def _require_choice(flag: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{flag} {value!r}: choose one of {_choices(choices)}")


def validate_env_config(cfg: EnvConfig) -> None:
    """Raise ConfigError naming the flag for an env setting that cannot run."""
    if cfg.env_id not in FETCH_ENV_IDS:
        raise ConfigError(
            f"--env-id {cfg.env_id!r} is not supported; choose one of {_choices(FETCH_ENV_IDS)}"
        )
    if cfg.full_state and cfg.no_pixels:
        raise ConfigError("--full-state and --no-pixels exclude each other; pass at most one")
    _require_choice("--goal-mode", cfg.goal_mode, GOAL_MODES)
    if cfg.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"--image-size {cfg.image_size}: must be >= {MIN_IMAGE_SIZE}")
    if not cfg.native_render and cfg.render_size < cfg.image_size:
        raise ConfigError(
            f"--render-size {cfg.render_size} is smaller than --image-size {cfg.image_size}"
        )
    if not cfg.proprioception and cfg.obs_mode != "pixels":
        raise ConfigError(
            f"--no-proprioception needs the pixels mode; --{cfg.obs_mode} "
            + ("has no proprioception key" if cfg.full_state else "would leave the goals only")
        )
    if cfg.frame_stack < 1:
        raise ConfigError(f"--frame-stack {cfg.frame_stack}: must be >= 1")
    if cfg.n_envs < 1:
        raise ConfigError(f"--n-envs {cfg.n_envs}: must be >= 1")
    _require_choice("--vector", cfg.vector, ("async", "sync"))


def parse_ent_coef(value: str) -> tuple[bool, float]:
    """Parse --ent-coef: 'auto' -> (True, 1.0) (SB3's initial value), 'auto_0.1' -> (True, 0.1),
    '0.05' -> (False, 0.05)."""
    text = value.strip().lower()
    if text.startswith("auto"):
        rest = text[len("auto") :].lstrip("_")
        try:
            initial = float(rest) if rest else 1.0
        except ValueError:
            initial = -1.0
        if initial <= 0:
            raise ConfigError(f"--ent-coef {value!r}: use a positive number, 'auto' or 'auto_<x>'")
        return True, initial
    try:
        coef = float(text)
    except ValueError:
        coef = -1.0
    if coef < 0:
        raise ConfigError(f"--ent-coef {value!r}: use a number >= 0, 'auto' or 'auto_<x>'")
    return False, coef


def validate(cfg: TrainConfig) -> None:
    """Check every flag before any worker starts or any buffer is allocated."""
    validate_env_config(cfg.env)
    r, n, s, run = cfg.replay, cfg.network, cfg.sac, cfg.run
    if r.buffer_size < 1:
        raise ConfigError(f"--buffer-size {r.buffer_size}: must be >= 1")
    if r.her_n_sampled_goal < 0:
        raise ConfigError(f"--her-n-sampled-goal {r.her_n_sampled_goal}: must be >= 0")
    _require_choice("--her-strategy", r.her_strategy, HER_STRATEGIES)
    if r.drq_pad < 0:
        raise ConfigError(f"--drq-pad {r.drq_pad}: must be >= 0")
    _require_choice("--encoder", n.encoder, ENCODERS)
    if n.spatial_softmax_temperature <= 0:
        raise ConfigError(
            f"--spatial-softmax-temperature {n.spatial_softmax_temperature}: must be > 0"
        )
    _require_choice("--keypoint-trunk", n.keypoint_trunk, KEYPOINT_TRUNKS)
    if s.aux_coef < 0:
        raise ConfigError(f"--aux-coef {s.aux_coef}: must be >= 0")
    _require_choice("--state-estimate", n.state_estimate, STATE_ESTIMATES)
    if cfg.env.obs_mode == "pixels":  # without an image, neither applies
        if s.aux_coef > 0 and not n.normalize_obs:
            raise ConfigError(
                f"--aux-coef {s.aux_coef:g} (the default is 1) regresses the normalized "
                "achieved goal, which --no-normalize-obs turns off; for raw vectors also pass "
                "--aux-coef 0 --state-estimate off"
            )
        if n.state_estimate != "off" and s.aux_coef <= 0:
            raise ConfigError(
                f"--state-estimate {n.state_estimate} (the default is only) reads the state "
                "head, which --aux-coef > 0 trains; with --aux-coef 0 pass --state-estimate off"
            )
        if s.encoder_grad == "estimator" and n.state_estimate != "only":
            raise ConfigError(
                f"--encoder-grad estimator (the default) has SAC read the stored estimate in "
                f"the image's place, which --state-estimate {n.state_estimate} does not; with "
                "it choose --encoder-grad critic, actor or separate"
            )
        if s.encoder_grad == "estimator" and r.drq:
            raise ConfigError(
                "--drq shifts the image, and with it where the state estimator must find "
                "things (--encoder-grad estimator, the default); pass --no-drq, or "
                "--encoder-grad critic with --state-estimate off"
            )
    if n.features_dim is not None and n.features_dim < 1:
        raise ConfigError(f"--features-dim {n.features_dim}: must be >= 1")
    if n.obs_norm_clip <= 0:
        raise ConfigError(f"--obs-norm-clip {n.obs_norm_clip}: must be > 0")
    if n.obs_norm_freeze_after is not None and n.obs_norm_freeze_after < 1:
        raise ConfigError(f"--obs-norm-freeze-after {n.obs_norm_freeze_after}: must be >= 1")
    if not n.hidden_sizes or min(n.hidden_sizes) < 1:
        raise ConfigError(f"--hidden-sizes {n.hidden_sizes}: give one or more sizes >= 1")
    _require_choice("--encoder-grad", s.encoder_grad, ENCODER_GRADS)
    _require_choice("--next-obs-encoder", s.next_obs_encoder, NEXT_OBS_ENCODERS)
    parse_ent_coef(s.ent_coef)
    if s.learning_rate <= 0:
        raise ConfigError(f"--learning-rate {s.learning_rate}: must be > 0")
    if s.encoder_lr is not None and s.encoder_lr <= 0:
        raise ConfigError(f"--encoder-lr {s.encoder_lr}: must be > 0")
    if not 0.0 <= s.gamma <= 1.0:
        raise ConfigError(f"--gamma {s.gamma}: must be in [0, 1]")
    if not 0.0 < s.tau <= 1.0:
        raise ConfigError(f"--tau {s.tau}: must be in (0, 1]")
    for flag, value in (
        ("--batch-size", s.batch_size),
        ("--gradient-steps", s.gradient_steps),
        ("--estimator-batch-size", s.estimator_batch_size),
        ("--estimator-gradient-steps", s.estimator_gradient_steps),
        ("--train-freq", s.train_freq),
        ("--total-steps", run.total_steps),
        ("--checkpoint-freq", run.checkpoint_freq),
        ("--log-interval", run.log_interval),
    ):
        if value < 1:
            raise ConfigError(f"{flag} {value}: must be >= 1")
    if run.max_consecutive_worker_failures < 1:
        raise ConfigError(
            f"--max-consecutive-worker-failures {run.max_consecutive_worker_failures}: must be >= 1"
        )
    if run.max_worker_restarts_per_hour < 0:
        raise ConfigError(
            f"--max-worker-restarts-per-hour {run.max_worker_restarts_per_hour}: must be >= 0"
        )
    if run.worker_timeout <= 0:
        raise ConfigError(f"--worker-timeout {run.worker_timeout}: must be > 0")
    if s.estimate_refresh_episodes < 0:
        raise ConfigError(
            f"--estimate-refresh-episodes {s.estimate_refresh_episodes}: must be >= 0"
        )
    if s.learning_starts < 0:
        raise ConfigError(f"--learning-starts {s.learning_starts}: must be >= 0")
    _require_choice("--amp", run.amp, ("none", "bf16"))
    if run.amp == "bf16" and (run.device == "cpu"):
        raise ConfigError("--amp bf16 needs a CUDA device (--device cuda or auto on a GPU)")
    if run.device != "auto" and not (
        run.device == "cpu" or run.device == "cuda" or run.device.startswith("cuda:")
    ):
        raise ConfigError(f"--device {run.device!r}: choose auto, cpu, cuda or cuda:N")


def to_dict(cfg) -> dict:
    """The config as plain JSON-able data (tuples become lists)."""
    return dataclasses.asdict(cfg)


# Fields added after runs were saved without them, with the value that gives those runs'
# behaviour back (the default, where it differs, is the measured recipe).
ADDED_LATER = {
    "NetworkConfig": {"keypoint_trunk": "layernorm", "state_estimate": "off"},
    "SACConfig": {"aux_coef": 0.0, "privileged_critic": False},
}


def from_dict(cls, data: dict):
    """Rebuild a (nested) config dataclass from `to_dict` output; a field the data lacks
    takes the value of ADDED_LATER (what a run saved before it existed did), else its
    default."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.name in ADDED_LATER.get(cls.__name__, {}):
                kwargs[f.name] = ADDED_LATER[cls.__name__][f.name]
            continue
        value = data[f.name]
        factory = f.default_factory
        if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory):
            value = from_dict(factory, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)
