"""Env steps per second of the pixel vector env for N = 1, 2, 4 workers.

    python benchmarks/env_fps.py [--steps 400] [--workers 1 2 4]

Random actions, no learner: this measures simulation + rendering + IPC only. Both render
paths: native 84x84 and the SB3 prototype's 480x480 render + PIL bilinear resize.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("MUJOCO_GL", "egl")

from pixelrl.config import EnvConfig  # noqa: E402
from pixelrl.vector_env import FetchVectorEnv  # noqa: E402


def measure(cfg: EnvConfig, vector_steps: int, warmup: int = 20) -> float:
    with FetchVectorEnv(cfg, seed=0) as venv:
        venv.reset()
        for _ in range(warmup):
            venv.step(venv.random_actions())
        start = time.perf_counter()
        for _ in range(vector_steps):
            venv.step(venv.random_actions())
        elapsed = time.perf_counter() - start
    return vector_steps * cfg.n_envs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-steps", type=int, default=800, help="env steps per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--env-id", default="FetchPush-v4")
    args = parser.parse_args()
    print(
        f"# env_fps {args.env_id}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, MUJOCO_GL={os.environ['MUJOCO_GL']}"
    )
    print("| workers | render path | env steps/s |")
    print("|---|---|---|")
    for n in args.workers:
        for native in (True, False):
            cfg = EnvConfig(
                env_id=args.env_id,
                n_envs=n,
                native_render=native,
                vector="async" if n > 1 else "sync",
            )
            fps = measure(cfg, max(1, args.env_steps // n))
            label = "native 84" if native else "480 + PIL resize"
            print(f"| {n} ({cfg.vector}) | {label} | {fps:.1f} |", flush=True)


if __name__ == "__main__":
    main()
