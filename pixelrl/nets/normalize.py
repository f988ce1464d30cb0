"""Per-dimension normalization of the vector inputs (proprioception, state, goals).

Why: the image features leave the encoder bounded by LayerNorm + Tanh with a spread of ~0.5,
while the vectors beside them vary by centimetres (positions ~0.08, velocities ~0.02). Fed
raw, the heads fit the image features and never the goal geometry: pixel FetchReach stays at
2% success where its no-pixels control reaches 100% (results/notebook.md). Scaling each
vector dimension to zero mean and unit variance, clipped at +-5, fixes it; OpenAI baselines'
HER (Andrychowicz et al. 2017) normalizes observations and goals the same way.

The statistics are running means and variances over every batch the update samples, so they
follow the data the networks are trained on (relabeled goals included) and keep up as the
agent reaches new states. The achieved and desired goals share one set of statistics: both
are positions in the same space, and with one shared scale the difference the reward depends
on, achieved - desired, stays a difference after normalization. The state estimator's estimate
of the achieved goal is scaled with the same statistics but never changes them: they describe
the true goals, and the estimate is read in their units. Pixels are not touched (the encoder
scales them). The statistics are buffers of the agent, so they are saved in
checkpoints and restored by --resume with everything else.
"""

from __future__ import annotations

import torch
from torch import nn

from pixelrl.envs import ACHIEVED_GOAL, DESIRED_GOAL, PIXELS, STATE_ESTIMATE

GOAL = "goal"  # the statistics group of achieved_goal and desired_goal
GOAL_KEYS = (ACHIEVED_GOAL, DESIRED_GOAL, STATE_ESTIMATE)
SCALED_ONLY = (STATE_ESTIMATE,)  # scaled with their group's statistics, never added to them


class RunningMeanStd(nn.Module):
    """Mean and variance per dimension of every row seen so far, in float64.

    Each batch is merged exactly (Chan, Golub and LeVeque's pairwise update), so after any
    sequence of batches `mean` and `std` equal numpy's mean and std (ddof=0) over all rows.
    """

    def __init__(self, dim: int):
        super().__init__()
        # Shape (1,), not a 0-dim tensor: torch.compile (2.13) drops in-place updates of 0-dim
        # float64 buffers.
        self.register_buffer("count", torch.zeros(1, dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        # Sum of squared deviations from the mean (variance = m2 / count).
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, rows: torch.Tensor) -> None:
        """Merge rows (B, D)."""
        rows = rows.to(torch.float64)
        batch_count = float(rows.shape[0])
        batch_mean = rows.mean(0)
        batch_m2 = ((rows - batch_mean) ** 2).sum(0)
        total = self.count + batch_count
        share = batch_count / total.clamp_min(1.0)  # the batch's share of all rows
        delta = batch_mean - self.mean
        self.mean.add_(delta * share)
        self.m2.add_(batch_m2)
        self.m2.add_(delta**2 * self.count * share)
        self.count.add_(batch_count)

    @property
    def std(self) -> torch.Tensor:
        """Per-dimension std (ddof=0); 1 before any row is seen, so that it is the identity."""
        variance = self.m2 / self.count.clamp_min(1.0)
        return torch.where(self.count > 0, variance.sqrt(), torch.ones_like(variance))


class ObservationNormalizer(nn.Module):
    """Normalizes the vector keys of an observation dict; pixels pass through.

    Args:
        obs_shapes: shape of each observation key the networks see.
        keys: those keys; the vectors among them are normalized.
        clip: normalized values are clipped to [-clip, clip].
        min_std: floor of the std, so that a constant dimension (the table height of a goal,
            a gripper that cannot move) is centred, not blown up.
    """

    def __init__(
        self,
        obs_shapes: dict[str, tuple[int, ...]],
        keys,
        clip: float = 5.0,
        min_std: float = 1e-2,
    ):
        super().__init__()
        self.clip = float(clip)
        self.min_std = float(min_std)
        # Statistics group -> the keys normalized with it.
        self.groups: dict[str, list[str]] = {}
        for key in keys:
            if key == PIXELS:
                continue
            group = GOAL if key in GOAL_KEYS else key
            self.groups.setdefault(group, []).append(key)
        dims = {group: obs_shapes[group_keys[0]][-1] for group, group_keys in self.groups.items()}
        for group, group_keys in self.groups.items():
            if any(obs_shapes[k][-1] != dims[group] for k in group_keys):
                raise ValueError(f"keys {group_keys} share statistics but differ in size")
        self.stats = nn.ModuleDict({group: RunningMeanStd(dim) for group, dim in dims.items()})
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def update(self, obs: dict[str, torch.Tensor]) -> None:
        """Add a batch of observations (B, ...) per key to the statistics."""
        for group, group_keys in self.groups.items():
            counted = [k for k in group_keys if k not in SCALED_ONLY]
            if counted:
                self.stats[group].update(torch.cat([obs[k].flatten(1) for k in counted]))
        self.batches_seen.add_(1)

    def _scale(self, group: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of a group as float32, the std floored at min_std."""
        stats = self.stats[group]
        return stats.mean.to(torch.float32), stats.std.clamp_min(self.min_std).to(torch.float32)

    def forward(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A new dict: vectors (x - mean) / max(std, min_std), clipped; other keys as given.
        A key `obs` lacks is left out: the achieved goal, where it is only the auxiliary
        loss's target, need not be there when acting."""
        out = dict(obs)
        for group, group_keys in self.groups.items():
            mean, std = self._scale(group)
            for key in group_keys:
                if key not in obs:
                    continue
                normalized = (obs[key].to(torch.float32) - mean) / std
                out[key] = normalized.clamp(-self.clip, self.clip)
        return out

    def denormalize(self, key: str, normalized: torch.Tensor) -> torch.Tensor:
        """Back to the env's units: normalized * std + mean of `key`'s group (B, D)."""
        group = next(g for g, group_keys in self.groups.items() if key in group_keys)
        mean, std = self._scale(group)
        return normalized.to(torch.float32) * std + mean

    def describe(self) -> dict[str, torch.Tensor]:
        """The mean of each group's per-dimension std (a diagnostic for the logs)."""
        return {f"obs_norm/{group}_std": s.std.mean() for group, s in self.stats.items()}
