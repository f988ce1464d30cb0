"""Typed, frozen configuration for pixelrl, nested by concern, and the rules it must follow.

`tyro.cli` turns these dataclasses into the command line in `train.py` and `eval.py`; the
docstring under each field becomes its `--help` text. Flags are flat (`--encoder`, not
`--network.encoder`), and flags the SB3 pipeline had (benchmarks/sb3_pipeline.py: `--encoder`,
`--no-drq`, `--full-state`, `--frame-stack`, ...) keep its meaning, so its commands still run.
Each choice is a `Literal` type, which names its values once; every rule a config must follow
is checked here, by `validate`, before a worker starts or a buffer is allocated; the rules
other modules ask about (`estimator_applies`, `privileged_critic_applies`) live here too.

Defaults are the measured recipe for pixel Push with the puck only in the image
(results/notebook.md): the actor reads proprioception, the desired goal and a state
estimator's estimate of the puck from a single 84x84 frame; the estimator (ManipulationCNN ->
SpatialSoftmax -> normalized keypoints -> an MLP) learns from its own supervised loss, and
SAC's updates read its stored estimates, no image. Values a study rejected are not flags:
pixelrl/compat.py names the commit that still runs them.

Nothing mutates a config after parsing; constructors take their own sub-config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, get_args

FetchEnvId = Literal["FetchPush-v4", "FetchReach-v4", "FetchSlide-v4", "FetchPickAndPlace-v4"]
GoalMode = Literal["none", "desired", "both"]
Encoder = Literal["manip"]
EncoderGrad = Literal["estimator", "critic"]
Vector = Literal["async", "sync"]
Amp = Literal["none", "bf16"]
MIN_IMAGE_SIZE = 32


@dataclass(frozen=True)
class EnvConfig:
    """What the agent observes and how it is rendered."""

    env_id: FetchEnvId = "FetchPush-v4"
    """Gymnasium-robotics Fetch task."""
    full_state: bool = False
    """Observe the raw 25-D Fetch state vector plus goals instead of pixels: the state control,
    what the task costs when nothing has to be read from an image."""
    no_pixels: bool = False
    """Observe the robot's proprioception plus goals, no pixels: the control a pixel run is
    read against (with --goal-mode both it holds everything the image would tell)."""
    goal_mode: GoalMode = "desired"
    """Which goal vectors the networks see: none, desired, or both (achieved and desired). The
    replay always keeps both for HER. In Push the achieved goal is the puck's position: with
    `desired` the actor finds the puck in the image; with `both` it is also a vector input."""
    image_size: int = 84
    """Side of the square image the agent sees, in pixels (>= 32)."""
    native_render: bool = True
    """Render at image_size directly. --no-native-render renders at 480x480 and resizes with
    PIL (bilinear), the SB3 pipeline's path: slower, for comparing speed with it."""
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
    vector, and an image showing the original goal would contradict it. On, the goal can be
    read from the image (--goal-mode none)."""
    proprioception: bool = True
    """Pixels mode: give the networks the robot's proprioception. --no-proprioception leaves
    pixels and goals only; with --goal-mode desired the gripper must then be found in the
    image (pixels-only Reach)."""
    frame_stack: int = 1
    """Frames stacked for the networks (on the learner's device; workers return single
    frames). The state estimator reads positions from one frame."""
    n_envs: int = 4
    """Parallel environments (one worker process each)."""
    vector: Vector = "async"
    """async: one worker process per env with its own EGL context; sync: all envs in this
    process (for runs without pixels, and debugging)."""

    @property
    def obs_mode(self) -> str:
        if self.full_state:
            return "full-state"
        if self.no_pixels:
            return "no-pixels"
        return "pixels"


@dataclass(frozen=True)
class ReplayConfig:
    """The episode replay buffer and HER relabeling."""

    buffer_size: int = 300_000
    """Replay capacity in transitions (converted to whole episodes). With pixels each takes
    ~21 KB (one 84x84 frame): 6.4 GB for 300K, allocated at the start."""
    her_n_sampled_goal: int = 8
    """HER k: a fraction k/(k+1) of sampled transitions gets a relabeled goal, the achieved
    goal of a later step of the same episode (0 disables HER)."""
    drq: bool = False
    """DrQ random-shift augmentation: not in pixelrl (it moves where things are in the image,
    which the state estimator reads); --no-drq is accepted so that the SB3 pipeline's command
    works as written."""


@dataclass(frozen=True)
class NetworkConfig:
    """The networks' sizes."""

    encoder: Encoder = "manip"
    """Image encoder: ManipulationCNN (four 3x3 convs) -> SpatialSoftmax -> keypoints scaled by
    their running statistics across the data (the only one; --encoder manip is accepted so
    that the SB3 pipeline's command works as written)."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the actor and critic MLPs."""


@dataclass(frozen=True)
class SACConfig:
    """Soft actor-critic, and the state estimator beside it."""

    learning_rate: float = 1e-3
    """Adam learning rate of actor, critic, entropy coefficient and the image's learner (the
    state estimator, or the encoder end to end)."""
    gamma: float = 0.95
    """Discount factor."""
    tau: float = 0.005
    """Polyak coefficient of the target critic."""
    batch_size: int = 256
    """Transitions per gradient step of SAC."""
    ent_coef: str = "0.05"
    """Entropy coefficient: a number (fixed) or 'auto' (learned, target entropy -|A|;
    'auto_0.1' starts it at 0.1)."""
    encoder_grad: EncoderGrad = "estimator"
    """Which loss trains the image encoder (pixels only). estimator: its own supervised loss,
    as a state estimator (image -> keypoints -> estimate of the achieved goal, regressed on
    the true one the replay keeps for HER) with its own optimizer, batch and steps; the replay
    keeps its estimate beside each frame and SAC's updates read those, no image
    (pixelrl/agents/estimator.py). critic: end to end, the critic's loss trains the encoder
    (in the critic's optimizer, DrQ-v2's routing) and the heads read its 64 keypoint
    features."""
    estimator_batch_size: int = 32
    """--encoder-grad estimator: frames per gradient step of the state estimator."""
    estimator_gradient_steps: int = 1
    """--encoder-grad estimator: gradient steps of the state estimator per training round
    (every --train-freq vector steps, beside SAC's --gradient-steps). Pixels-only Reach,
    where the estimate is the whole task, takes 2 (90% eval by 10K on 2 seeds, against 86%
    at 15K on one with 1; results/README.md)."""
    estimate_refresh_episodes: int = 1
    """--encoder-grad estimator: stored episodes whose estimates are rewritten by the current
    estimator each training round, the stalest first (0: never), so that the estimates SAC
    trains on follow the estimator as it improves. New episodes are estimated when they enter
    the replay, in addition."""
    gradient_steps: int = 4
    """Gradient steps of SAC per training round."""
    train_freq: int = 1
    """Vector-env steps between training rounds (1 = every vector step)."""
    learning_starts: int = 1000
    """Env steps of uniformly random actions before learning starts."""


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
    """At each log, probe the encoder on 512 stored observations (encoder/*, probe/*,
    estimate/*). About a second on a 2-core CPU, so 1-2% of a run at the default
    --log-interval; --no-encoder-diagnostics for timing runs that log often."""
    overlap: bool = True
    """Run the update while the workers step (--no-overlap: strictly sequential, with the same
    results; for debugging)."""
    progress: bool = True
    """Show a progress bar on the terminal."""
    compile: bool = False
    """Compile SAC's update with torch.compile (on CUDA with CUDA graphs and capturable Adam).
    The first updates wait for the compiler (about a minute); the eager update in
    pixelrl/agents/sac.py stays the reference."""
    amp: Amp = "none"
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


# ---------------------------------------------------------------------------- the rules
# The state estimator's own settings (SACConfig fields): they change nothing without it.
ESTIMATOR_FIELDS = ("estimator_batch_size", "estimator_gradient_steps", "estimate_refresh_episodes")


def estimator_applies(cfg: TrainConfig) -> bool:
    """Whether the image is the state estimator's alone (--encoder-grad estimator, with
    pixels): SAC's updates then read stored estimates and no image."""
    return cfg.env.obs_mode == "pixels" and cfg.sac.encoder_grad == "estimator"


def privileged_critic_applies(cfg: TrainConfig) -> bool:
    """Whether the critic reads the true achieved goal where the actor reads the estimate of
    it: with the state estimator, unless the achieved goal is an input of both already
    (--goal-mode both). An asymmetric actor-critic (Pinto et al. 2018): the critic only
    trains the actor, so it may read what the simulator knows."""
    return estimator_applies(cfg) and cfg.env.goal_mode != "both"


def what_ran(cfg: TrainConfig) -> dict:
    """What a run's networks saw and which path trained them, as results should name it: the
    observation and goal modes, proprioception, frames, the encoder, which loss trained it,
    what the heads read of the image, and whether the critic read the true achieved goal."""
    pixels = cfg.env.obs_mode == "pixels"
    return {
        "env_id": cfg.env.env_id,
        "obs_mode": cfg.env.obs_mode,
        "goal_mode": cfg.env.goal_mode,
        "proprioception": cfg.env.proprioception,
        "frame_stack": cfg.env.frame_stack,
        "encoder": cfg.network.encoder if pixels else None,
        "encoder_grad": cfg.sac.encoder_grad if pixels else None,
        "state_estimate": ("only" if estimator_applies(cfg) else "off") if pixels else None,
        "privileged_critic": privileged_critic_applies(cfg),
    }


class ConfigError(ValueError):
    """A flag has a value pixelrl cannot run with; the message names the flag."""


def _require_choice(flag: str, value, literal) -> None:
    """`value` must be one of the `Literal` type's values, which name the choices once."""
    choices = get_args(literal)
    if value not in choices:
        raise ConfigError(f"{flag} {value!r}: choose one of {', '.join(map(str, choices))}")


def validate_env_config(cfg: EnvConfig) -> None:
    """Raise ConfigError naming the flag for an env setting that cannot run."""
    _require_choice("--env-id", cfg.env_id, FetchEnvId)
    if cfg.full_state and cfg.no_pixels:
        raise ConfigError("--full-state and --no-pixels exclude each other; pass at most one")
    _require_choice("--goal-mode", cfg.goal_mode, GoalMode)
    if cfg.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"--image-size {cfg.image_size}: must be >= {MIN_IMAGE_SIZE}")
    if not cfg.native_render and cfg.image_size > RESIZE_FROM:
        raise ConfigError(
            f"--no-native-render renders at {RESIZE_FROM} and resizes down; --image-size "
            f"{cfg.image_size} is larger"
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
    _require_choice("--vector", cfg.vector, Vector)


RESIZE_FROM = 480  # --no-native-render: the SB3 pipeline's render size before its resize


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


def validate_device(cfg: RunConfig) -> None:
    """--device and --amp as written (whether the device is there, and CUDA for bf16, is
    `pixelrl.build.resolve_device`'s question, before anything is allocated)."""
    if cfg.device != "auto" and not (
        cfg.device in ("cpu", "cuda") or cfg.device.startswith("cuda:")
    ):
        raise ConfigError(f"--device {cfg.device!r}: choose auto, cpu, cuda or cuda:N")
    _require_choice("--amp", cfg.amp, Amp)


def validate(cfg: TrainConfig) -> None:
    """Check every flag before any worker starts or any buffer is allocated."""
    validate_env_config(cfg.env)
    r, n, s, run = cfg.replay, cfg.network, cfg.sac, cfg.run
    if r.buffer_size < 1:
        raise ConfigError(f"--buffer-size {r.buffer_size}: must be >= 1")
    if r.her_n_sampled_goal < 0:
        raise ConfigError(f"--her-n-sampled-goal {r.her_n_sampled_goal}: must be >= 0")
    if r.drq:
        raise ConfigError(
            f"--drq: DrQ's random shift is not in pixelrl (it moves where things are in the "
            f"image, which the state estimator reads; commit {RETIRED_AT} still has it); pass "
            "--no-drq or nothing"
        )
    _require_choice("--encoder", n.encoder, Encoder)
    if not n.hidden_sizes or min(n.hidden_sizes) < 1:
        raise ConfigError(f"--hidden-sizes {n.hidden_sizes}: give one or more sizes >= 1")
    _require_choice("--encoder-grad", s.encoder_grad, EncoderGrad)
    parse_ent_coef(s.ent_coef)
    if s.learning_rate <= 0:
        raise ConfigError(f"--learning-rate {s.learning_rate}: must be > 0")
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
        ("--max-consecutive-worker-failures", run.max_consecutive_worker_failures),
    ):
        if value < 1:
            raise ConfigError(f"{flag} {value}: must be >= 1")
    for flag, value in (
        ("--estimate-refresh-episodes", s.estimate_refresh_episodes),
        ("--learning-starts", s.learning_starts),
        ("--max-worker-restarts-per-hour", run.max_worker_restarts_per_hour),
    ):
        if value < 0:
            raise ConfigError(f"{flag} {value}: must be >= 0")
    if run.worker_timeout <= 0:
        raise ConfigError(f"--worker-timeout {run.worker_timeout}: must be > 0")
    validate_device(run)


def to_dict(cfg) -> dict:
    """The config as plain JSON-able data (tuples become lists)."""
    return dataclasses.asdict(cfg)


# The last commit that trains and evaluates every flag value pixelrl no longer has
# (pixelrl/compat.py names it in its errors).
RETIRED_AT = "adb559876f0e0ccc057370e5cb02620ab31cc9e2"
