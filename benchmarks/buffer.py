"""Replay memory and sampling throughput: pixelrl's EpisodeReplay beside SB3's HerReplayBuffer.

    python benchmarks/buffer.py [--episodes 200] [--seconds 10] [--device cpu]

Both buffers hold the same episodes (random 84x84 frames, 50 steps, k=4 stacks, HER future
k=8) and sample batches of 256. pixelrl rebuilds stacks by gather from single frames on the
device; SB3 stores stacked obs and next_obs in numpy and copies each batch to torch.
"""

from __future__ import annotations

import argparse
import os
import platform

import numpy as np
import torch
from timing import calls_per_second

from pixelrl.buffers.replay import EpisodeReplay, ReplaySpec
from pixelrl.config import ReplayConfig
from pixelrl.envs import ACHIEVED_GOAL, DESIRED_GOAL, PIXELS, PROPRIOCEPTION, reward_params


def make_episodes(n: int, T: int, side: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        PIXELS: rng.integers(0, 256, (n, T + 1, 3, side, side), dtype=np.uint8),
        PROPRIOCEPTION: rng.normal(size=(n, T + 1, 10)).astype(np.float32),
        ACHIEVED_GOAL: rng.uniform(1.0, 1.5, (n, T + 1, 3)).astype(np.float32),
        DESIRED_GOAL: rng.uniform(1.0, 1.5, (n, 3)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, T, 4)).astype(np.float32),
    }


def fill_pixelrl(data, T, k, device) -> EpisodeReplay:
    n = len(data[PIXELS])
    threshold, reward_type = reward_params("FetchPush-v4")
    shapes = {
        PIXELS: data[PIXELS].shape[2:],
        PROPRIOCEPTION: (10,),
        ACHIEVED_GOAL: (3,),
        DESIRED_GOAL: (3,),
    }
    spec = ReplaySpec(shapes, 4, T, 1, k, threshold, reward_type)
    cfg = ReplayConfig(buffer_size=n * T, her_n_sampled_goal=8)
    replay = EpisodeReplay(cfg, spec, device, verbose=False)

    def obs_at(e, t):
        out = {
            key: torch.from_numpy(data[key][e, t][None])
            for key in (PIXELS, PROPRIOCEPTION, ACHIEVED_GOAL)
        }
        out[DESIRED_GOAL] = torch.from_numpy(data[DESIRED_GOAL][e][None])
        return out

    replay.start_episodes(obs_at(0, 0))
    for e in range(n):
        for t in range(T):
            last = t == T - 1
            replay.add(
                data["actions"][e, t][None],
                obs_at(e, t + 1),
                [False],
                [last],
                obs_at((e + 1) % n, 0) if last else None,
            )
    return replay


def fill_sb3(data, T, k):
    from sb3_pipeline import make_her_buffer, stacked_pixel_space

    n, side = len(data[PIXELS]), data[PIXELS].shape[-1]
    buffer = make_her_buffer(n * T, stacked_pixel_space(k, side))

    def stacked(e, t):
        idx = [max(0, t - k + 1 + j) for j in range(k)]
        return data[PIXELS][e, idx].reshape(1, 3 * k, side, side)

    for e in range(n):
        for t in range(T):
            obs = {
                PIXELS: stacked(e, t),
                PROPRIOCEPTION: data[PROPRIOCEPTION][e, t][None],
                ACHIEVED_GOAL: data[ACHIEVED_GOAL][e, t][None],
                DESIRED_GOAL: data[DESIRED_GOAL][e][None],
            }
            nxt = {
                PIXELS: stacked(e, t + 1),
                PROPRIOCEPTION: data[PROPRIOCEPTION][e, t + 1][None],
                ACHIEVED_GOAL: data[ACHIEVED_GOAL][e, t + 1][None],
                DESIRED_GOAL: data[DESIRED_GOAL][e][None],
            }
            done = np.array([t == T - 1])
            buffer.add(
                obs,
                nxt,
                data["actions"][e, t][None],
                np.array([-1.0]),
                done,
                [{"TimeLimit.truncated": bool(done[0])}],
            )
    return buffer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-sb3", action="store_true", help="skip the SB3 side")
    args = parser.parse_args()
    T, k, side, B = 50, 4, 84, args.batch_size
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    data = make_episodes(args.episodes, T, side)
    print(
        f"# buffer benchmark: {args.episodes} episodes x {T} steps, batch {B}, k={k}, "
        f"HER future k=8; {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}, device {device}"
    )
    rows = []
    replay = fill_pixelrl(data, T, k, device)
    ours = calls_per_second(lambda: replay.sample(B), args.seconds, sync)
    rows.append(("pixelrl EpisodeReplay", replay.bytes_per_transition, f"{ours:.1f}"))
    sb3 = None
    if not args.no_sb3:
        from sb3_pipeline import sb3_bytes_per_transition

        buffer = fill_sb3(data, T, k)
        sb3 = calls_per_second(lambda: buffer.sample(B), args.seconds)
        rows.append(("SB3 HerReplayBuffer", sb3_bytes_per_transition(buffer), f"{sb3:.1f}"))
    print("| buffer | bytes/transition | batches/s HER+stack |")
    print("|---|---|---|")
    for name, nbytes, rate in rows:
        print(f"| {name} | {nbytes:,.0f} | {rate} |")
    if sb3:
        print(
            f"\nratio pixelrl/SB3 (HER + stack): {ours / sb3:.1f}x; memory "
            f"{rows[1][1] / rows[0][1]:.1f}x smaller"
        )


if __name__ == "__main__":
    main()
