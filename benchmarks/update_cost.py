"""What an update of pixel Push costs: with the image in SAC's update, and with the image the
state estimator's alone.

    cd benchmarks && python update_cost.py [--batch-sizes 32 64 256] [--seconds 10]

For pixel Push with the puck from the image (`--goal-mode desired --frame-stack 1`), built by
`pixelrl.build.build_agent` as train.py builds it, per batch size, in milliseconds per call on
one fixed batch:

- the end-to-end update (`--encoder-grad critic`): SAC encodes the batch's images itself (obs
  with gradient, next obs without) and the critic's loss trains the encoder;
- SAC's update with the state estimator (`--encoder-grad estimator`, the default): the same
  heads on the stored estimate, the critic on the true achieved goal, no image;
- the no-pixels control's update (`--no-pixels`: proprioception and both goals, the puck's
  true position where the estimate is);

and, for the estimator, per call: one gradient step at each batch size, and one episode's
estimates rewritten (51 frames, no gradient). A training round of the default costs
--gradient-steps SAC updates, --estimator-gradient-steps estimator steps at
--estimator-batch-size and --estimate-refresh-episodes episodes' estimates.
"""

from __future__ import annotations

import argparse
import os
import platform

import gymnasium as gym
import numpy as np
import torch
from timing import calls_per_second
from update import SHAPES as STACKED_SHAPES
from update import make_batch

from pixelrl.buffers.replay import Batch, ReplaySpec
from pixelrl.build import build_agent
from pixelrl.config import EnvConfig, SACConfig, TrainConfig
from pixelrl.envs import ACHIEVED_GOAL, PIXELS, STATE_ESTIMATE

SHAPES = STACKED_SHAPES | {PIXELS: (3, 84, 84)}  # update.py's obs with one frame: --frame-stack 1
EPISODE_FRAMES = 51  # a Fetch episode's stored frames: 50 steps and the final observation


def config(obs_mode: str, encoder_grad: str = "estimator") -> TrainConfig:
    """Pixel Push from the image (today's defaults) with `encoder_grad`, or the no-pixels
    control."""
    env = EnvConfig(no_pixels=True, goal_mode="both") if obs_mode == "no-pixels" else EnvConfig()
    return TrainConfig(env=env, sac=SACConfig(encoder_grad=encoder_grad))


def make_agent(cfg: TrainConfig, device):
    """The agent train.py builds for `cfg` on Push's observation and action spaces."""
    spaces = {key: gym.spaces.Box(-np.inf, np.inf, shape) for key, shape in SHAPES.items()}
    if cfg.env.obs_mode == "pixels":
        spaces[PIXELS] = gym.spaces.Box(0, 255, SHAPES[PIXELS], np.uint8)
    else:
        del spaces[PIXELS]
    spec = ReplaySpec(SHAPES, 4, 50, 4, 1, 0.05, "sparse")
    torch.manual_seed(0)
    return build_agent(cfg, spec, gym.spaces.Dict(spaces), gym.spaces.Box(-1, 1, (4,)), device)


def with_estimates(batch: Batch) -> Batch:
    """The batch as the replay hands it to SAC with the estimator: no frames, the stored
    estimate of the puck (here its true position: the values do not change the cost)."""
    drop = lambda obs: {k: v for k, v in obs.items() if k != PIXELS}  # noqa: E731
    obs, next_obs = drop(batch.obs), drop(batch.next_obs)
    obs[STATE_ESTIMATE], next_obs[STATE_ESTIMATE] = obs[ACHIEVED_GOAL], next_obs[ACHIEVED_GOAL]
    return Batch(obs, batch.action, batch.reward, next_obs, batch.terminated)


def measure(b: int, device, ms) -> dict:
    """One table row: `ms(fn)` times fn in milliseconds per call."""
    end_to_end = make_agent(config("pixels", "critic"), device)
    split = make_agent(config("pixels"), device)
    no_pixels = make_agent(config("no-pixels"), device)
    batch = make_batch(b, device, SHAPES)
    frames = batch.obs[PIXELS]
    episode = make_batch(EPISODE_FRAMES, device, SHAPES).obs[PIXELS]
    return {
        "batch": b,
        "end_to_end_update_ms": ms(lambda: end_to_end.update(batch)),
        "sac_update_ms": ms(lambda: split.update(with_estimates(batch))),
        "no_pixels_update_ms": ms(lambda: no_pixels.update(batch)),
        "estimator_step_ms": ms(lambda: split.update_estimator(frames, batch.obs[ACHIEVED_GOAL])),
        "episode_estimates_ms": ms(lambda: split.estimate(episode)),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 256])
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--device", default="cpu")
    a = parser.parse_args(argv)
    if min(a.batch_sizes) < 2:
        parser.error(f"--batch-sizes {a.batch_sizes}: each must be >= 2")
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(
        f"# update cost: pixel Push (--goal-mode desired --frame-stack 1) against --no-pixels; "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {device}"
    )
    print(
        "| batch | end-to-end update (image in SAC), ms | SAC update (stored estimate), ms "
        "| no-pixels update, ms | estimator step, ms | one episode's estimates, ms |"
    )
    print("|---|---|---|---|---|---|")

    def ms(fn) -> float:
        return 1000.0 / calls_per_second(fn, a.seconds, sync, min_calls=3)

    rows = []
    for b in a.batch_sizes:
        row = measure(b, device, ms)
        rows.append(row)
        print(
            f"| {b} | {row['end_to_end_update_ms']:.1f} | {row['sac_update_ms']:.1f} "
            f"| {row['no_pixels_update_ms']:.1f} | {row['estimator_step_ms']:.1f} "
            f"| {row['episode_estimates_ms']:.1f} |",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
