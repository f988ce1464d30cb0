"""Hindsight experience replay as pure tensor functions (Andrychowicz et al. 2017,
arXiv:1707.01495).

A transition t of an episode of length L moves the agent from step t to t+1; its reward is
the env's rule applied to achieved_goal[t + 1] (the step after acting) and the desired goal.
Relabeling replaces the desired goal by achieved_goal[t'] of the same episode, a state
reached later in it: t' uniform in [t + 1, L] (the paper's `future` strategy).

With `n_sampled_goal` k, a fraction k / (k + 1) of sampled transitions is relabeled, as in the
paper and SB3's HerReplayBuffer; the rest keep their original goal.
"""

from __future__ import annotations

import torch


def relabel_fraction(n_sampled_goal: int) -> float:
    """Probability that a sampled transition gets a relabeled goal: k / (k + 1)."""
    return n_sampled_goal / (n_sampled_goal + 1)


def future_goal_steps(
    t: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Index into achieved_goal [0, L] of the relabeled goal for each sampled transition: a
    state reached later in the episode, uniform in [t + 1, L].

    Args:
        t: (B,) int64 transition index in its episode, 0 <= t < L.
        lengths: (B,) int64 episode length L of each sample.
    Returns:
        (B,) int64 step t' with t < t' <= L.
    """
    u = torch.rand(t.shape, device=t.device, generator=generator)
    span = lengths - t  # number of steps t+1 .. L
    return torch.minimum(t + 1 + (u * span).long(), lengths)


def compute_reward(
    achieved_goal: torch.Tensor,
    desired_goal: torch.Tensor,
    distance_threshold: float,
    reward_type: str,
) -> torch.Tensor:
    """Fetch's compute_reward in torch: sparse -(d > threshold), dense -d, d the L2 distance.

    Args:
        achieved_goal, desired_goal: (..., G) float.
    Returns:
        (...,) float32 reward.
    """
    distance = torch.linalg.vector_norm(achieved_goal - desired_goal, dim=-1)
    if reward_type == "sparse":
        return -(distance > distance_threshold).float()
    if reward_type == "dense":
        return -distance.float()
    raise ValueError(f"unknown reward_type {reward_type!r} (Fetch uses sparse or dense)")
