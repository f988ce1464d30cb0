"""The image encoder: where things are in an 84x84 frame, as 64 numbers.

    pixels (B, 3k, H, W) uint8 -> ManipulationCNN -> SpatialSoftmax -> KeypointNorm -> (B, 64)

- ManipulationCNN (the DrQ-v2 convs, Yarats et al. 2021, with a second stride-2 layer): four
  3x3 convs of 32 channels, strides 2/1/1/2, padding 1: 84 -> 42 -> 42 -> 42 -> 21.
- SpatialSoftmax (Levine et al. 2016, arXiv:1504.00702): per channel, the expected (x, y) of a
  softmax over the feature map, in [-1, 1]: "where things are", not "what the image shows".
- KeypointNorm: each of the 64 coordinates scaled by its own running mean and std across the
  data, so that it varies on the scale of the normalized vectors beside it. (LayerNorm across
  the 64 coordinates of one image, the SB3 pipeline's trunk, centres and scales each image by
  its own keypoints: a keypoint away from the others saturates Tanh and its movement
  vanishes; results/notebook.md.)

The state estimator (pixelrl/agents/estimator.py) reads these features with an MLP head
(`STATE_HEAD_HIDDEN`); end to end (`--encoder-grad critic`) SAC's heads read them. Pixels
arrive as uint8 and become float in [0, 1] on the encoder's first line. Every size is found by
a dry forward pass, never written as a literal.
"""

from __future__ import annotations

import torch
from torch import nn

STATE_HEAD_HIDDEN = (256,)  # the state estimator's head: image features -> 256 -> ReLU -> estimate


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


class ImageEncoder(nn.Module):
    """(B, 3k, H, W) uint8 -> (B, 64) float: ManipulationCNN -> SpatialSoftmax -> KeypointNorm.

    `net` is that Sequential (its state-dict keys are those runs have saved since the
    keypoints were first normalized), so that the keypoints before their normalization can
    be read (`keypoints`).
    """

    def __init__(self, in_channels: int, image_size: int):
        super().__init__()
        cnn = ManipulationCNN(in_channels)
        with torch.no_grad():
            _, c, h, w = cnn(torch.zeros(1, in_channels, image_size, image_size)).shape
        self.spatial_softmax = SpatialSoftmax(h, w)
        self.net = nn.Sequential(cnn, self.spatial_softmax, KeypointNorm(2 * c))
        self.features_dim = 2 * c
        # Channels-last convs run ~1.6x faster on a CPU (oneDNN) and are native for cuDNN.
        self.to(memory_format=torch.channels_last)

    @property
    def keypoint_norm(self) -> KeypointNorm:
        return self.net[-1]

    def keypoints(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: (B, 3k, H, W) uint8 -> the SpatialSoftmax coordinates (B, 64), before their
        normalization; the only place pixels are scaled."""
        x = pixels.contiguous(memory_format=torch.channels_last).to(torch.float32)
        return self.net[:-1](x.div_(255.0))

    def forward(self, pixels: torch.Tensor, update_stats: bool = False) -> torch.Tensor:
        """pixels: (B, 3k, H, W) uint8 -> (B, 64) float. `update_stats`: the keypoints' running
        statistics first take in this batch (a training batch, nothing else)."""
        keypoints = self.keypoints(pixels)
        if update_stats:
            self.keypoint_norm.update(keypoints)
        return self.keypoint_norm(keypoints)
