"""Offline localization: how fast and how precisely a fresh state estimator learns the
achieved goal from a run's stored frames, by its own loss (no RL).

    python -m pixelrl.analysis.localize RUN/checkpoints/step_N --steps 2000 --batch-size 32

The state estimator learns from its loss alone inside a run too (pixelrl/agents/estimator.py),
so this is what it does there, on a fixed set of frames: a cheap way to try its batch or
learning rate without running RL. The checkpoint's replay (only a run's newest checkpoint keeps
one) is loaded as the run built it and its frame stacks gathered as training gathers them; its
episodes are split in order (the first 80% train, the rest is held out). Every 250 steps it
prints (step, training loss, held-out median error in cm, the same over held-out frames whose
achieved goal is more than 5 cm above its episode's start (None if there are none: a lifted
object, in PickAndPlace), the keypoints' std across the held-out batch, temperature).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pixelrl.agents.estimator import StateEstimator
from pixelrl.analysis.contact import LIFTED_M
from pixelrl.buffers.replay import EpisodeReplay
from pixelrl.build import load_saved_replay
from pixelrl.envs import ACHIEVED_GOAL, PIXELS


def draw(
    replay: EpisodeReplay, first: int, last: int, n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """n (frame stack, achieved goal at its last frame) pairs from the stored episodes
    first..last-1, each episode's steps uniform: uint8 (n, 3k, H, W) and (n, 3)."""
    episode = torch.randint(first, last, (n,), generator=generator)
    lengths = torch.from_numpy(replay.host_lengths)[episode]
    t = (torch.rand(n, generator=generator) * lengths).long()  # within a shorter episode too
    return replay.frames_at(episode, t), replay.storage[ACHIEVED_GOAL][episode, t]


def draw_lifted(
    replay: EpisodeReplay, first: int, last: int, n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Up to n (frame stack, achieved goal) pairs of the steps of episodes first..last-1 whose
    achieved goal is more than LIFTED_M above its episode's first step; None if none is."""
    goal = replay.storage[ACHIEVED_GOAL][first:last]
    steps = torch.arange(goal.shape[1])
    inside = steps[None, :] < replay.storage["lengths"][first:last, None]
    episode, t = torch.nonzero(inside & (goal[..., 2] - goal[:, :1, 2] > LIFTED_M), as_tuple=True)
    if len(episode) == 0:
        return None
    keep = torch.randperm(len(episode), generator=generator)[:n]
    episode, t = episode[keep] + first, t[keep]
    return replay.frames_at(episode, t), replay.storage[ACHIEVED_GOAL][episode, t]


def main(argv: list[str] | None = None) -> list[tuple]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint directory that kept its replay")
    parser.add_argument("--episodes", type=int, default=None,
                        help="use the first N stored episodes (default: all)")  # fmt: skip
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    torch.manual_seed(a.seed)
    replay = load_saved_replay(a.checkpoint)
    episodes = replay.num_episodes if a.episodes is None else min(a.episodes, replay.num_episodes)
    split = int(episodes * 0.8)
    if split < 1 or split == episodes:
        raise SystemExit(f"--episodes: {episodes} stored episodes cannot be split 80/20")
    train_goals = replay.storage[ACHIEVED_GOAL][:split].reshape(-1, 3)
    # A puck's height barely varies while it stays on the table: 1 mm is the least scale.
    mean, std = train_goals.mean(0), train_goals.std(0).clamp(min=1e-3)
    generator = torch.Generator().manual_seed(a.seed)
    k, side = replay.spec.frame_stack, replay.spec.obs_shapes[PIXELS][-1]
    estimator = StateEstimator((3 * k, side, side), 3, learning_rate=a.lr)
    test_x, test_y = draw(replay, split, episodes, 512, generator)
    lifted = draw_lifted(replay, split, episodes, 512, generator)

    def median_error_cm(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            return round(((estimator(x) * std + mean - y).norm(dim=-1) * 100).median().item(), 2)

    curve, start = [], time.monotonic()
    for step in range(1, a.steps + 1):
        x, y = draw(replay, 0, split, a.batch_size, generator)
        loss = estimator.update(x, (y - mean) / std)["aux_loss"]
        if step % 250 == 0:
            with torch.no_grad():
                spread = estimator.image.keypoints(test_x).std(0).max().item()
            temperature = estimator.image.spatial_softmax.temperature.item()
            curve.append(
                (step, round(loss.item(), 4), median_error_cm(test_x, test_y),
                 None if lifted is None else median_error_cm(*lifted), round(spread, 4),
                 round(temperature, 3))
            )  # fmt: skip
            print(curve[-1], f"{time.monotonic() - start:.0f}s", flush=True)
    print(json.dumps({"args": vars(a), "curve": curve}))
    return curve


if __name__ == "__main__":
    main()
