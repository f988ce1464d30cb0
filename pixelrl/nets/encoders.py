"""Image encoders and the observation encoder that joins images with vectors.

- NatureCNN (Mnih et al. 2015): 8x8/4, 4x4/2, 3x3/1 convs, flatten, linear, ReLU, as SB3 uses
  it. Its stride-4 first layer shrinks a 3-5 pixel puck to one pixel.
- ManipulationCNN (the DrQ-v2 convs, Yarats et al. 2021, with a second stride-2 layer): four
  3x3 convs of 32 channels, strides 2/1/1/2, padding 1: 84 -> 42 -> 42 -> 42 -> 21.
- SpatialSoftmax (Levine et al. 2016, arXiv:1504.00702): per channel, the expected (x, y) of a
  softmax over the feature map, in [-1, 1]: "where things are", not "what the image shows".

Pixels arrive as uint8 and become float in [0, 1] on the encoder's first line. Every size is
found by a dry forward pass, never written as a literal.
"""

from __future__ import annotations

import torch
from torch import nn

from pixelrl.config import NetworkConfig
from pixelrl.envs import PIXELS


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
    (x along the width, left = -1; y along the height, top = -1).
    """

    def __init__(self, height: int, width: int, temperature: float = 1.0):
        super().__init__()
        self.temperature = nn.Parameter(torch.tensor([float(temperature)]))
        self.register_buffer("pos_x", torch.linspace(-1.0, 1.0, width))
        self.register_buffer("pos_y", torch.linspace(-1.0, 1.0, height))

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


def _norm_trunk(dim: int) -> nn.Sequential:
    """LayerNorm + Tanh: bounds image features to [-1, 1], the scale of the vectors beside them."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Tanh())


class ImageEncoder(nn.Module):
    """(B, 3k, H, W) uint8 -> (B, features) float, per `NetworkConfig.encoder`:

    nature:                  NatureCNN (linear to 256, ReLU); --norm adds LayerNorm + Tanh
    manip:                   ManipulationCNN -> SpatialSoftmax (64) -> LayerNorm -> Tanh
    manip --no-spatial-softmax, drqv2:
                             ManipulationCNN -> flatten -> linear (50) -> LayerNorm -> Tanh
    """

    def __init__(self, cfg: NetworkConfig, in_channels: int, image_size: int):
        super().__init__()
        self.spatial_softmax: SpatialSoftmax | None = None
        if cfg.encoder == "nature":
            dim = cfg.features_dim or (50 if cfg.norm else 256)
            parts: list[nn.Module] = [NatureCNN(in_channels, image_size, dim)]
            if cfg.norm:
                parts.append(_norm_trunk(dim))
            self.net = nn.Sequential(*parts)
        else:
            cnn = ManipulationCNN(in_channels)
            with torch.no_grad():
                _, c, h, w = cnn(torch.zeros(1, in_channels, image_size, image_size)).shape
            if cfg.encoder == "manip" and cfg.spatial_softmax:
                self.spatial_softmax = SpatialSoftmax(h, w)
                self.net = nn.Sequential(cnn, self.spatial_softmax, _norm_trunk(2 * c))
            else:
                dim = cfg.features_dim or 50
                self.net = nn.Sequential(
                    cnn, nn.Flatten(), nn.Linear(c * h * w, dim), _norm_trunk(dim)
                )
        # Channels-last convs run ~1.6x faster on a CPU (oneDNN) and are native for cuDNN.
        self.to(memory_format=torch.channels_last)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: (B, 3k, H, W) uint8 -> (B, features) float; the only place pixels are scaled."""
        x = pixels.contiguous(memory_format=torch.channels_last).to(torch.float32)
        return self.net(x.div_(255.0))


class ObservationEncoder(nn.Module):
    """Joins image features with the vectors the chosen modes expose into one feature vector.

    Args:
        obs_shapes: shape of each observation key as the networks see it (pixels stacked:
            (3k, H, W)).
        keys: the keys to use, in order (see `pixelrl.envs.policy_keys`).
    `features_dim` is known at construction, from a dry forward pass.
    """

    def __init__(self, cfg: NetworkConfig, obs_shapes: dict[str, tuple[int, ...]], keys):
        super().__init__()
        self.keys = list(keys)
        self.image: ImageEncoder | None = None
        if PIXELS in self.keys:
            channels, height, width = obs_shapes[PIXELS]
            if height != width:
                raise ValueError(f"square images expected, got {height}x{width}")
            self.image = ImageEncoder(cfg, channels, height)
        self.vector_keys = [k for k in self.keys if k != PIXELS]
        with torch.no_grad():
            dummy = {
                k: torch.zeros((1, *obs_shapes[k]), dtype=torch.uint8 if k == PIXELS else None)
                for k in self.keys
            }
            self.sizes = {k: v.shape[-1] for k, v in self.parts(dummy).items()}
        self.features_dim = sum(self.sizes.values())

    def parts(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-key features before concatenation (for diagnostics)."""
        out = {}
        for key in self.keys:
            if key == PIXELS:
                out[key] = self.image(obs[key])
            else:
                out[key] = obs[key].float().flatten(1)
        return out

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(self.parts(obs).values()), dim=-1)
