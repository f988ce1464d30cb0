"""Offline localization: how fast and how precisely an image encoder and its state head learn
the achieved goal from stored frames, trained by the auxiliary loss alone (no RL).

    python benchmarks/localize.py RUN/checkpoints/step_N/replay --keypoint-trunk running \
        --temperature 0.1 --steps 2000

With `--state-estimate only` (pixelrl's default) the encoder learns from the auxiliary loss
alone, so this is what it does inside a run, on a fixed set of frames: a cheap way to compare
encoder choices without running RL. The replay a checkpoint saved is split by episode (the
first 80% train, the rest is held out); every 250 steps it prints (step, training loss,
held-out median error in cm, the keypoints' std across the held-out batch, temperature).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from pixelrl.config import NetworkConfig
from pixelrl.nets.encoders import STATE_HEAD_HIDDEN, ImageEncoder
from pixelrl.nets.heads import mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("replay", help="a checkpoint's replay/ directory")
    parser.add_argument("--keypoint-trunk", default="running")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--frame-stack", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    torch.manual_seed(a.seed)
    frames = torch.from_numpy(np.load(f"{a.replay}/storage.pixels.npy"))  # (E, T+1, 3, H, W)
    goals = torch.from_numpy(np.load(f"{a.replay}/storage.achieved_goal.npy"))  # (E, T+1, 3)
    episodes, steps_per_episode = frames.shape[:2]
    split = int(episodes * 0.8)
    train_goals = goals[:split].reshape(-1, 3)
    mean, std = train_goals.mean(0), train_goals.std(0)
    generator = torch.Generator().manual_seed(a.seed)
    k, side = a.frame_stack, frames.shape[-1]

    def batch(first: int, last: int, n: int):
        e = torch.randint(first, last, (n,), generator=generator)
        t = torch.randint(0, steps_per_episode - 1, (n,), generator=generator)
        stack = (t[:, None] + torch.arange(-k + 1, 1)).clamp(min=0)  # as the replay gathers
        return frames[e[:, None], stack].reshape(n, 3 * k, side, side), goals[e, t]

    cfg = NetworkConfig(keypoint_trunk=a.keypoint_trunk, spatial_softmax_temperature=a.temperature)
    encoder = ImageEncoder(cfg, 3 * k, side)
    features = encoder(torch.zeros(1, 3 * k, side, side, dtype=torch.uint8)).shape[-1]
    head = mlp(features, STATE_HEAD_HIDDEN, 3)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=a.lr)
    test_x, test_y = batch(split, episodes, 512)
    curve, start = [], time.monotonic()
    for step in range(1, a.steps + 1):
        x, y = batch(0, split, a.batch_size)
        loss = F.mse_loss(head(encoder(x, update_stats=True)), (y - mean) / std)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 250 == 0:
            with torch.no_grad():
                error = (head(encoder(test_x)) * std + mean - test_y).norm(dim=-1) * 100
                spread = encoder.pre_trunk(test_x).std(0).max().item()
            ss = encoder.spatial_softmax
            temperature = ss.temperature.item() if ss is not None else math.nan
            curve.append(
                (step, round(loss.item(), 4), round(error.median().item(), 2), round(spread, 4),
                 round(temperature, 3))
            )  # fmt: skip
            print(curve[-1], f"{time.monotonic() - start:.0f}s", flush=True)
    print(json.dumps({"args": vars(a), "curve": curve}))


if __name__ == "__main__":
    main()
