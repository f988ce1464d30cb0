"""MLP heads: the squashed Gaussian actor and the twin Q critic of SAC (Haarnoja et al. 2018)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # as SB3 and the SAC reference code


def mlp(in_dim: int, hidden_sizes, out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(in_dim, size), nn.ReLU()]
        in_dim = size
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def squashed_gaussian_log_prob(
    pre_tanh: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
) -> torch.Tensor:
    """log pi(tanh(u)) for u ~ N(mean, exp(log_std)), summed over action dims: (B, A) -> (B,).

    Change of variables: log N(u) - sum log(1 - tanh(u)^2), with the stable identity
    log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)).
    """
    std = log_std.exp()
    gaussian = -0.5 * ((pre_tanh - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    log_det = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
    return (gaussian - log_det).sum(-1)


class SquashedGaussianActor(nn.Module):
    """features -> MLP -> (mean, log_std) -> a = tanh(u), u ~ N(mean, std), scaled to the bounds.

    `action_low`/`action_high` give the env's box; Fetch's is [-1, 1], where scaling is the
    identity.
    """

    def __init__(self, features_dim: int, action_dim: int, hidden_sizes, action_low, action_high):
        super().__init__()
        self.trunk = mlp(features_dim, hidden_sizes[:-1], hidden_sizes[-1])
        self.mean = nn.Linear(hidden_sizes[-1], action_dim)
        self.log_std = nn.Linear(hidden_sizes[-1], action_dim)
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std), each (B, A) fp32 (also under bf16 autocast: the log-prob needs it)."""
        latent = F.relu(self.trunk(features))
        log_std = self.log_std(latent).float().clamp(LOG_STD_MIN, LOG_STD_MAX)
        return self.mean(latent).float(), log_std

    def sample(
        self, features: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterized action (B, A) in the env's bounds and its log-prob (B,).

        noise: (B, A) standard normal draws (default: drawn here).
        """
        mean, log_std = self(features)
        if noise is None:
            noise = torch.randn_like(mean)
        pre_tanh = mean + log_std.exp() * noise
        log_prob = squashed_gaussian_log_prob(pre_tanh, mean, log_std)
        log_prob = log_prob - torch.log(self.action_scale).sum()
        return torch.tanh(pre_tanh) * self.action_scale + self.action_bias, log_prob

    def deterministic(self, features: torch.Tensor) -> torch.Tensor:
        """tanh(mean), scaled: the action used for evaluation."""
        mean, _ = self(features)
        return torch.tanh(mean) * self.action_scale + self.action_bias


class TwinQ(nn.Module):
    """Two independent Q MLPs on [features, action] (clipped double Q, Fujimoto et al. 2018)."""

    def __init__(self, features_dim: int, action_dim: int, hidden_sizes):
        super().__init__()
        self.q1 = mlp(features_dim + action_dim, hidden_sizes, 1)
        self.q2 = mlp(features_dim + action_dim, hidden_sizes, 1)

    def forward(self, features: torch.Tensor, action: torch.Tensor):
        """(Q1, Q2), each (B,) fp32."""
        x = torch.cat([features, action.to(features.dtype)], dim=-1)
        return self.q1(x).squeeze(-1).float(), self.q2(x).squeeze(-1).float()
