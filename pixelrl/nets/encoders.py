"""Image encoders and the observation encoder that joins images with vectors.

- NatureCNN (Mnih et al. 2015): 8x8/4, 4x4/2, 3x3/1 convs, flatten, linear, ReLU, as SB3 uses
  it. Its stride-4 first layer shrinks a 3-5 pixel puck to one pixel.
- ManipulationCNN (the DrQ-v2 convs, Yarats et al. 2021, with a second stride-2 layer): four
  3x3 convs of 32 channels, strides 2/1/1/2, padding 1: 84 -> 42 -> 42 -> 42 -> 21.
- SpatialSoftmax (Levine et al. 2016, arXiv:1504.00702): per channel, the expected (x, y) of a
  softmax over the feature map, in [-1, 1]: "where things are", not "what the image shows".
- The keypoint trunk (`--keypoint-trunk`), between SpatialSoftmax and the heads:
    running    each of the 64 coordinates scaled by its own running mean and std across the
               data (`KeypointNorm`), so that it varies on the scale of the normalized
               vectors beside it
    layernorm  LayerNorm across the 64 coordinates of one image, then Tanh (the SB3
               prototype's). It centres and scales each image's keypoints by their own mean
               and spread: a keypoint away from a cluster saturates Tanh and its movement
               vanishes (0.8 px changed such a feature by 0.0000)
    linear     Linear -> LayerNorm -> Tanh (DrQ-v2's trunk)
    none       the raw coordinates
- The state head (`--aux-coef`, `--state-estimate`): a small MLP on the image features that
  estimates the achieved goal (the gripper in Reach, the object in Push), trained by an
  auxiliary loss on the privileged achieved goal the replay stores for HER (Pinto et al. 2018,
  arXiv:1710.06542, feed such a predicted state to their policy). With `--state-estimate` its
  estimate, detached, joins the features the actor and critic read.

Pixels arrive as uint8 and become float in [0, 1] on the encoder's first line. Every size is
found by a dry forward pass, never written as a literal.
"""

from __future__ import annotations

import torch
from torch import nn

from pixelrl.config import NetworkConfig
from pixelrl.envs import PIXELS, STATE_ESTIMATE
from pixelrl.nets.heads import mlp

STATE_HEAD_HIDDEN = (256,)  # the state head: image features -> 256 -> ReLU -> estimate


class NatureCNN(nn.Module):
    """SB3's NatureCNN: three convs, flatten, linear to `features_dim`, ReLU."""

    def __init__(self, in_channels: int, image_size: int, features_dim: int = 256):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        self.linear = nn.Sequential(nn.Linear(flat, features_dim), nn.ReLU())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(images))


class ManipulationCNN(nn.Module):
    """Four 3x3 convs, 32 channels, strides 2/1/1/2: (B, C, 84, 84) -> (B, 32, 21, 21)."""

    def __init__(self, in_channels: int, channels: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        for i, stride in enumerate((2, 1, 1, 2)):
            layers += [
                nn.Conv2d(in_channels if i == 0 else channels, channels, 3, stride, padding=1),
                nn.ReLU(),
            ]
        self.convs = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.convs(images)


class SpatialSoftmax(nn.Module):
    """Expected (x, y) per channel of a softmax over each feature map, learnable temperature.

    Input (B, C, H, W); output (B, 2C) = [x_0 .. x_{C-1}, y_0 .. y_{C-1}], each in [-1, 1]
    (x along the width, left = -1; y along the height, top = -1). The temperature is learned as
    its log, so that it stays positive (it divides the feature maps).
    """

    def __init__(self, height: int, width: int, temperature: float = 1.0):
        super().__init__()
        self.log_temperature = nn.Parameter(torch.tensor([float(temperature)]).log())
        self.register_buffer("pos_x", torch.linspace(-1.0, 1.0, width))
        self.register_buffer("pos_y", torch.linspace(-1.0, 1.0, height))

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        old = state_dict.pop(prefix + "temperature", None)
        if old is not None:  # saved when the temperature itself was the parameter
            if (old <= 0).any():
                raise ValueError(f"{prefix}temperature {old.tolist()} is not positive")
            state_dict[prefix + "log_temperature"] = old.log()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def attention(self, features: torch.Tensor) -> torch.Tensor:
        """Softmax weights (B, C, H, W); they sum to 1 over each channel's H x W."""
        b, c, h, w = features.shape
        weights = torch.softmax(features.reshape(b, c, h * w) / self.temperature, dim=-1)
        return weights.view(b, c, h, w)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weights = self.attention(features)
        expected_x = (weights.sum(dim=2) * self.pos_x).sum(dim=-1)  # (B, C)
        expected_y = (weights.sum(dim=3) * self.pos_y).sum(dim=-1)  # (B, C)
        return torch.cat([expected_x, expected_y], dim=-1)


class KeypointNorm(nn.Module):
    """Each keypoint coordinate scaled by its own running mean and std across the data.

    Why: a keypoint that tracks the gripper moves by a few hundredths of the [-1, 1] range, and
    at initialization all keypoints sit within ~1e-3 of the centre. Scaled per dimension across
    the data, each varies on the unit scale of the normalized vectors beside it, and the
    gradient reaching SpatialSoftmax is amplified by the same factor.

    The statistics are exponential moving averages (`momentum` per update) of the batches the
    update samples, changed only by `update` (never while acting or encoding next
    observations); no gradient flows through them. Two floors keep them from collapsing: a
    dimension's std is at least `relative_floor` times the mean std of all dimensions (a
    keypoint that sat still for a while and then moves is not blown up to the bound), and at
    least `min_std`. The output is bounded smoothly, `bound * tanh(z / bound)`: nearly the
    identity within +-2, and unlike a hard clip it keeps a gradient where the statistics lag.
    """

    def __init__(
        self,
        dim: int,
        momentum: float = 0.01,
        relative_floor: float = 0.1,
        min_std: float = 1e-3,
        bound: float = 5.0,
    ):
        super().__init__()
        self.momentum, self.relative_floor = momentum, relative_floor
        self.min_std, self.bound = min_std, bound
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("batches_seen", torch.zeros(1))  # (1,): see RunningMeanStd

    @torch.no_grad()
    def update(self, keypoints: torch.Tensor) -> None:
        """Merge a batch (B, D); the first batch sets the statistics outright."""
        keypoints = keypoints.detach().float()
        batch_mean, batch_var = keypoints.mean(0), keypoints.var(0, unbiased=False)
        # 1 on the first batch, `momentum` after: no branch on a device value.
        rate = torch.where(self.batches_seen > 0, self.momentum, 1.0)
        delta = batch_mean - self.mean
        self.mean.add_(rate * delta)
        self.var.mul_(1 - rate).add_(rate * batch_var + rate * (1 - rate) * delta**2)
        self.batches_seen.add_(1)

    def std(self) -> torch.Tensor:
        std = self.var.sqrt()
        return std.clamp_min(self.relative_floor * std.mean()).clamp_min(self.min_std)

    def forward(self, keypoints: torch.Tensor) -> torch.Tensor:
        z = (keypoints - self.mean) / self.std()
        return self.bound * torch.tanh(z / self.bound)


def _norm_trunk(dim: int) -> nn.Sequential:
    """LayerNorm + Tanh: bounds image features to [-1, 1], the scale of the vectors beside them."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Tanh())


def _keypoint_trunk(kind: str, dim: int, features_dim: int | None) -> nn.Module:
    """The module between SpatialSoftmax's `dim` coordinates and the heads (--keypoint-trunk)."""
    if kind == "running":
        return KeypointNorm(dim)
    if kind == "layernorm":
        return _norm_trunk(dim)
    if kind == "linear":
        out = features_dim or 50
        return nn.Sequential(nn.Linear(dim, out), nn.LayerNorm(out), nn.Tanh())
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"--keypoint-trunk {kind!r}: choose running, layernorm, linear or none")


class ImageEncoder(nn.Module):
    """(B, 3k, H, W) uint8 -> (B, features) float, per `NetworkConfig.encoder`:

    nature:                  NatureCNN (linear to 256, ReLU); --norm adds LayerNorm + Tanh
    manip:                   ManipulationCNN -> SpatialSoftmax (64) -> --keypoint-trunk
    manip --no-spatial-softmax, drqv2 (one network, two names):
                             ManipulationCNN -> flatten -> linear (50) -> LayerNorm -> Tanh

    `net` is a Sequential whose last module is the trunk (Identity where there is none), so
    that the features before it (`pre_trunk`: the keypoints, with SpatialSoftmax) can be read.
    """

    def __init__(self, cfg: NetworkConfig, in_channels: int, image_size: int):
        super().__init__()
        self.spatial_softmax: SpatialSoftmax | None = None
        if cfg.encoder == "nature":
            dim = cfg.features_dim or (50 if cfg.norm else 256)
            trunk = _norm_trunk(dim) if cfg.norm else nn.Identity()
            self.net = nn.Sequential(NatureCNN(in_channels, image_size, dim), trunk)
        else:
            cnn = ManipulationCNN(in_channels)
            with torch.no_grad():
                _, c, h, w = cnn(torch.zeros(1, in_channels, image_size, image_size)).shape
            if cfg.uses_spatial_softmax:
                self.spatial_softmax = SpatialSoftmax(h, w, cfg.spatial_softmax_temperature)
                trunk = _keypoint_trunk(cfg.keypoint_trunk, 2 * c, cfg.features_dim)
                self.net = nn.Sequential(cnn, self.spatial_softmax, trunk)
            else:
                dim = cfg.features_dim or 50
                self.net = nn.Sequential(
                    cnn, nn.Flatten(), nn.Linear(c * h * w, dim), _norm_trunk(dim)
                )
        # Channels-last convs run ~1.6x faster on a CPU (oneDNN) and are native for cuDNN.
        self.to(memory_format=torch.channels_last)

    @property
    def trunk(self) -> nn.Module:
        return self.net[-1]

    def pre_trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: (B, 3k, H, W) uint8 -> the features before the trunk; the only place pixels
        are scaled."""
        x = pixels.contiguous(memory_format=torch.channels_last).to(torch.float32)
        return self.net[:-1](x.div_(255.0))

    def forward(self, pixels: torch.Tensor, update_stats: bool = False) -> torch.Tensor:
        """pixels: (B, 3k, H, W) uint8 -> (B, features) float. `update_stats`: a trunk with
        running statistics first takes in this batch (the update's sampled obs, nothing else)."""
        features = self.pre_trunk(pixels)
        if update_stats and isinstance(self.trunk, KeypointNorm):
            self.trunk.update(features)
        return self.trunk(features)

    def share_statistics(self, other: ImageEncoder) -> None:
        """Read `other`'s running trunk statistics (the target encoder uses the online ones)."""
        if isinstance(self.trunk, KeypointNorm):
            self.net[-1] = other.trunk


class ObservationEncoder(nn.Module):
    """Joins image features with the vectors the chosen modes expose into one feature vector.

    Args:
        obs_shapes: shape of each observation key as the networks see it (pixels stacked:
            (3k, H, W)).
        keys: the keys to use, in order (see `pixelrl.envs.policy_keys`).
        state_head_dim: > 0 adds the state head, an MLP from the image features to an
            estimate of that many numbers (the normalized achieved goal), trained by the
            auxiliary loss in `pixelrl.agents.sac`; 0: no head.
    With a head, `cfg.state_estimate` decides what the features hold of the image: the image
    features (off), those and the head's estimate (append), or the estimate alone (only). The
    estimate is detached there: only the auxiliary loss trains it. `parts` always holds the
    image features (the auxiliary loss and the diagnostics read them); `join` concatenates
    the parts that are inputs. `features_dim` is known at construction, from a dry forward
    pass.
    """

    def __init__(
        self,
        cfg: NetworkConfig,
        obs_shapes: dict[str, tuple[int, ...]],
        keys,
        state_head_dim: int = 0,
    ):
        super().__init__()
        self.keys = list(keys)
        self.image: ImageEncoder | None = None
        if PIXELS in self.keys:
            channels, height, width = obs_shapes[PIXELS]
            if height != width:
                raise ValueError(f"square images expected, got {height}x{width}")
            self.image = ImageEncoder(cfg, channels, height)
        self.vector_keys = [k for k in self.keys if k != PIXELS]
        self.state_head: nn.Module | None = None
        self.inputs = list(self.keys)  # the parts `join` concatenates, in order
        if state_head_dim > 0:
            if self.image is None:
                raise ValueError("the state head reads image features; these keys have none")
            image_dim = self._dry_run(obs_shapes)[PIXELS].shape[-1]
            self.state_head = mlp(image_dim, STATE_HEAD_HIDDEN, state_head_dim)
            if cfg.state_estimate != "off":
                self.inputs.append(STATE_ESTIMATE)
            if cfg.state_estimate == "only":
                self.inputs.remove(PIXELS)
        self.sizes = {k: v.shape[-1] for k, v in self._dry_run(obs_shapes).items()}
        self.features_dim = sum(self.sizes[k] for k in self.inputs)

    def _dry_run(self, obs_shapes) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            dummy = {
                k: torch.zeros((1, *obs_shapes[k]), dtype=torch.uint8 if k == PIXELS else None)
                for k in self.keys
            }
            return self.parts(dummy)

    def parts(
        self, obs: dict[str, torch.Tensor], update_stats: bool = False
    ) -> dict[str, torch.Tensor]:
        """Features per part before concatenation: one per key, then the state estimate."""
        out = {}
        for key in self.keys:
            if key == PIXELS:
                out[key] = self.image(obs[key], update_stats)
            else:
                out[key] = obs[key].float().flatten(1)
        if self.state_head is not None and STATE_ESTIMATE in self.inputs:
            out[STATE_ESTIMATE] = self.state_head(out[PIXELS]).detach()
        return out

    def join(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The parts the heads read, side by side: (B, features_dim)."""
        return torch.cat([parts[key] for key in self.inputs], dim=-1)

    def forward(self, obs: dict[str, torch.Tensor], update_stats: bool = False) -> torch.Tensor:
        return self.join(self.parts(obs, update_stats))

    def share_statistics(self, other: ObservationEncoder) -> None:
        """Read `other`'s running trunk statistics (see ImageEncoder.share_statistics)."""
        if self.image is not None:
            self.image.share_statistics(other.image)
