"""SAC updates per second at batch 256: pixelrl's SAC for each encoder beside SB3's
critic-encoder policy `train()` (the SB3 prototype's DrQv2SACPolicy + ManipulationExtractor).

    python benchmarks/update.py [--seconds 20] [--device cpu]
    python benchmarks/update.py --variants eager compile   # torch.compile
    python benchmarks/update.py --device cuda --variants eager compile amp compile+amp

Both sides update on the same fixed batch (k=4 stacks of 84x84, proprioception, goals);
SB3's replay sampling is replaced by that batch so only the update is timed.
"""

from __future__ import annotations

import argparse
import os
import platform

import torch
from timing import calls_per_second

from pixelrl.agents.sac import SAC
from pixelrl.buffers.replay import Batch
from pixelrl.config import SACConfig
from pixelrl.envs import ACHIEVED_GOAL, DESIRED_GOAL, PIXELS, PROPRIOCEPTION

SHAPES = {PIXELS: (12, 84, 84), PROPRIOCEPTION: (10,), ACHIEVED_GOAL: (3,), DESIRED_GOAL: (3,)}
VARIANTS = ("eager", "compile", "amp", "compile+amp")


def make_batch(b: int, device, shapes: dict[str, tuple[int, ...]] = SHAPES) -> Batch:
    """A fixed random batch of b transitions with obs of `shapes` (pixels uint8, proprioception
    standard normal, goals uniform in [0, 1)); benchmarks/update_cost.py builds its batches
    here too."""
    gen = torch.Generator().manual_seed(0)

    def obs():
        out = {}
        for key, shape in shapes.items():
            if key == PIXELS:
                out[key] = torch.randint(0, 256, (b, *shape), dtype=torch.uint8, generator=gen)
            elif key == PROPRIOCEPTION:
                out[key] = torch.randn(b, *shape, generator=gen)
            else:
                out[key] = torch.rand(b, *shape, generator=gen)
        return out

    batch = Batch(
        obs(),
        torch.rand(b, 4, generator=gen) * 2 - 1,
        -(torch.rand(b, generator=gen) > 0.5).float(),
        obs(),
        torch.zeros(b),
    )
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return Batch(
        move(batch.obs),
        batch.action.to(device),
        batch.reward.to(device),
        move(batch.next_obs),
        batch.terminated.to(device),
    )


def sb3_rate(batch: Batch, seconds: float, device) -> float:
    from sb3_pipeline import make_sb3_sac, stacked_pixel_space
    from stable_baselines3.common.type_aliases import DictReplayBufferSamples

    model = make_sb3_sac(stacked_pixel_space(4, 84), device=device)
    samples = DictReplayBufferSamples(
        observations=batch.obs,
        actions=batch.action,
        next_observations=batch.next_obs,
        dones=batch.terminated[:, None],
        rewards=batch.reward[:, None],
        discounts=None,
    )
    model.replay_buffer.sample = lambda *args, **kwargs: samples
    return calls_per_second(
        lambda: model.train(gradient_steps=1, batch_size=len(batch.action)),
        seconds,
        min_calls=3,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-sb3", action="store_true")
    parser.add_argument(
        "--sb3-seconds", type=float, default=None, help="SB3's timing (default: --seconds)"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["eager"],
        choices=VARIANTS,
        help="pixelrl's update as written (eager), torch.compile'd, under bf16 autocast (amp, "
        "CUDA), or both",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batch = make_batch(args.batch_size, device)
    print(
        f"# update benchmark: batch {args.batch_size}, k=4 84x84, critic-encoder routing; "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {device}"
    )
    results = {}
    if not args.no_sb3:  # first: a stage stopped early still has the ratio's denominator
        sb3_seconds = args.sb3_seconds if args.sb3_seconds is not None else args.seconds
        results["SB3 DrQv2SACPolicy manip"] = sb3_rate(batch, sb3_seconds, device)
        print(
            f"  SB3 DrQv2SACPolicy manip: {results['SB3 DrQv2SACPolicy manip']:.3f} updates/s",
            flush=True,
        )
    for variant in args.variants:
        torch.manual_seed(0)
        agent = SAC(
            SHAPES,
            list(SHAPES),
            list(SHAPES),
            [-1.0] * 4,
            [1.0] * 4,
            SACConfig(encoder_grad="critic"),  # the image in the update, as SB3's
            device=device,
            compile="compile" in variant,
            amp="bf16" if "amp" in variant else "none",
        )
        name = f"pixelrl ({variant}) manip"
        # Compiling happens in the first calls (and on CUDA, recording the CUDA graphs): they
        # are warm-up, not timed.
        warmup = 3 if "compile" in variant else 1
        results[name] = calls_per_second(
            lambda a=agent: a.update(batch), args.seconds, sync, min_calls=3, warmup=warmup
        )
        print(f"  {name}: {results[name]:.3f} updates/s", flush=True)
    print("| implementation | encoder | updates/s | ratio to SB3 (manip) |")
    print("|---|---|---|---|")
    sb3 = results.get("SB3 DrQv2SACPolicy manip")
    for name, value in results.items():
        ratio = f"{value / sb3:.2f}x" if sb3 else "-"
        impl, encoder = name.rsplit(" ", 1)
        print(f"| {impl} | {encoder} | {value:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
