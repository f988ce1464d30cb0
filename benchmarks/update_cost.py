"""Where the time of pixel Push's update goes: the image, or the heads that act and judge.

    python benchmarks/update_cost.py [--batch-sizes 64 256] [--seconds 10] [--device cpu]

For pixel Push with the puck from the image (`--goal-mode desired --frame-stack 1`, the state
head's estimate in the image features' place, the privileged critic: the defaults), per batch
size, in milliseconds per call on one fixed batch:

- the whole SAC update (`SAC.update`);
- one pass of the encoder over a batch of images, without gradient: the update makes two (obs
  for the auxiliary loss and the actor's estimate, next obs for the next action's estimate) and
  a backward pass through the first;
- the no-pixels control's update (`--no-pixels`: the same heads on proprioception and both
  goals, no image): what the update costs without the image.

The heads read 3 numbers where the image was, so the difference between the first and the last
is the price of the image: the auxiliary loss and the estimates the actor reads.
"""

from __future__ import annotations

import argparse
import os
import platform

import torch
from timing import calls_per_second
from update import SHAPES as STACKED_SHAPES
from update import make_batch

from pixelrl.agents.sac import SAC
from pixelrl.config import NetworkConfig, SACConfig
from pixelrl.envs import ACHIEVED_GOAL, DESIRED_GOAL, PIXELS, PROPRIOCEPTION

SHAPES = STACKED_SHAPES | {PIXELS: (3, 84, 84)}  # update.py's obs with one frame: --frame-stack 1
PIXEL_PUSH_KEYS = [PIXELS, PROPRIOCEPTION, DESIRED_GOAL]  # --goal-mode desired
NO_PIXELS_KEYS = [PROPRIOCEPTION, ACHIEVED_GOAL, DESIRED_GOAL]  # --no-pixels, --goal-mode both


def shapes_of(keys: list[str]) -> dict[str, tuple[int, ...]]:
    """The stored obs of a run whose networks read `keys`: the replay keeps the achieved goal
    for HER (and the auxiliary loss) whether or not they read it."""
    return {key: SHAPES[key] for key in keys} | {ACHIEVED_GOAL: SHAPES[ACHIEVED_GOAL]}


def make_agent(keys: list[str], device) -> SAC:
    torch.manual_seed(0)
    sac = SACConfig() if PIXELS in keys else SACConfig(aux_coef=0.0)  # the aux loss needs an image
    return SAC(
        shapes_of(keys),
        keys,
        [-1.0] * 4,
        [1.0] * 4,
        NetworkConfig(),
        sac,
        device,
        reward_range=(-1.0, 0.0),
    )


def measure(b: int, device, ms) -> dict:
    """One table row: `ms(fn)` times fn in milliseconds per call."""
    pixel_agent = make_agent(PIXEL_PUSH_KEYS, device)
    pixel_batch = make_batch(b, device, shapes_of(PIXEL_PUSH_KEYS))
    no_pixels_agent = make_agent(NO_PIXELS_KEYS, device)
    no_pixels_batch = make_batch(b, device, shapes_of(NO_PIXELS_KEYS))
    obs = pixel_agent.normalizer(pixel_batch.obs)
    with torch.no_grad():
        encoder_ms = ms(lambda: pixel_agent.critic_encoder.parts(obs))
    return {
        "batch": b,
        "pixel_update_ms": ms(lambda: pixel_agent.update(pixel_batch)),
        "encoder_pass_ms": encoder_ms,
        "no_pixels_update_ms": ms(lambda: no_pixels_agent.update(no_pixels_batch)),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--device", default="cpu")
    a = parser.parse_args(argv)
    if min(a.batch_sizes) < 2:
        parser.error(f"--batch-sizes {a.batch_sizes}: each must be >= 2")
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(
        f"# update cost: pixel Push (--goal-mode desired --frame-stack 1, defaults) against "
        f"--no-pixels; {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {device}"
    )
    print("| batch | pixel update, ms | encoder pass (no gradient), ms | no-pixels update, ms |")
    print("|---|---|---|---|")

    def ms(fn) -> float:
        return 1000.0 / calls_per_second(fn, a.seconds, sync, min_calls=3)

    rows = []
    for b in a.batch_sizes:
        row = measure(b, device, ms)
        rows.append(row)
        print(
            f"| {b} | {row['pixel_update_ms']:.1f} | {row['encoder_pass_ms']:.1f} "
            f"| {row['no_pixels_update_ms']:.1f} |",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
