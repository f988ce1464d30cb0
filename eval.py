"""Evaluate a checkpoint with the deterministic policy (tanh of the mean action).

    python eval.py --checkpoint runs/manip/seed0                      # its latest checkpoint
    python eval.py --checkpoint runs/manip/seed0/checkpoints/step_000000500000 --episodes 100
    python eval.py --checkpoint runs/manip/seed0 --video rollout.gif   # or .mp4 (imageio-ffmpeg)

Uses the training run's env settings; writes eval.json beside the checkpoint.
"""

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
# Idle OpenMP threads sleep instead of spinning: on a small CPU, spinning torch threads take
# the cores the env workers render on (collection 97 -> 130 env steps/s on 2 cores; the
# update speed does not change). Read when torch loads, so it is set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import tyro

from pixelrl.build import build_agent, describe_env, load_config, resolve_device
from pixelrl.checkpoint import load_checkpoint, resolve_checkpoint
from pixelrl.config import ConfigError
from pixelrl.envs import ACHIEVED_GOAL, DESIRED_GOAL, PIXELS
from pixelrl.frame_stack import FrameStack, policy_observation
from pixelrl.vector_env import FetchVectorEnv


@dataclass(frozen=True)
class EvalArgs:
    """Evaluate a pixelrl checkpoint."""

    checkpoint: str
    """A checkpoint directory (.../checkpoints/step_N) or a run directory (its latest)."""
    episodes: int = 100
    """Episodes to run."""
    n_envs: int | None = None
    """Parallel envs (default: the run's --n-envs)."""
    seed: int | None = None
    """Env seed (default: the run's seed + 10000, so evaluation goals differ from training)."""
    video: str | None = None
    """Write a video of the first episodes of env 0: a .gif, or .mp4 (needs imageio-ffmpeg)."""
    video_episodes: int = 3
    """Episodes in the video."""
    video_size: int = 480
    """Side of the video frames: a larger view of the same camera, goal marker drawn."""
    device: str = "auto"
    """cpu, cuda, or auto."""
    output: str | None = None
    """Results JSON (default: eval.json in the checkpoint directory)."""


def write_video(frames: list[np.ndarray], path: Path) -> None:
    if path.suffix.lower() == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)
        return
    try:
        import imageio.v2 as imageio

        imageio.mimwrite(path, frames, fps=25)
    except Exception as err:  # the ffmpeg backend is an optional extra
        raise ConfigError(
            f"--video {path}: cannot write this format ({err}); use a .gif, or "
            "pip install imageio-ffmpeg for .mp4"
        ) from err


def evaluate(args: EvalArgs) -> dict:
    if args.episodes < 1:
        raise ConfigError(f"--episodes {args.episodes}: must be >= 1")
    path = resolve_checkpoint(args.checkpoint)
    state, meta = load_checkpoint(path)
    cfg = load_config(meta)
    env_cfg = dataclasses.replace(
        cfg.env,
        n_envs=args.n_envs or cfg.env.n_envs,
        vector="sync" if args.video else cfg.env.vector,  # the video view renders here
    )
    cfg = dataclasses.replace(cfg, env=env_cfg)
    device = resolve_device(args.device)
    spec, obs_space, action_space = describe_env(env_cfg)
    agent = build_agent(cfg, spec, obs_space, action_space, device)
    agent.load_state(state["agent"])
    agent.eval()
    seed = args.seed if args.seed is not None else cfg.run.seed + 10_000
    n = env_cfg.n_envs
    results = {"success": [], "return": [], "final_distance": []}
    frames: list[np.ndarray] = []
    video_done = 0
    with FetchVectorEnv(env_cfg, seed=seed) as venv:
        obs = venv.reset()
        stack = None
        if PIXELS in obs:
            stack = FrameStack(n, env_cfg.frame_stack, obs[PIXELS].shape[1:], device)
            stack.reset(torch.as_tensor(obs[PIXELS], device=device))
        viewer = venv.local_env(0) if args.video else None
        if viewer is not None:
            frames.append(viewer.render_view(args.video_size))
        returns = np.zeros(n)
        while len(results["success"]) < args.episodes:
            policy_obs = policy_observation(obs, stack, device)
            actions = agent.act(policy_obs, deterministic=True).cpu().numpy()
            step = venv.step(actions)
            returns += step.reward
            if viewer is not None and video_done < args.video_episodes:
                frames.append(viewer.render_view(args.video_size))
                video_done += int(step.done[0])
            for i in np.flatnonzero(step.done):
                if len(results["success"]) < args.episodes:
                    final = step.next_obs
                    distance = np.linalg.norm(final[ACHIEVED_GOAL][i] - final[DESIRED_GOAL][i])
                    results["success"].append(bool(step.is_success[i]))
                    results["return"].append(float(returns[i]))
                    results["final_distance"].append(float(distance))
                returns[i] = 0.0
            if stack is not None:
                stack.push(torch.as_tensor(step.obs[PIXELS], device=device), step.done)
            obs = step.obs
    report = {
        "checkpoint": str(path),
        "checkpoint_step": meta["step"],
        "env_id": env_cfg.env_id,
        "seed": seed,
        "episodes": args.episodes,
        "success_rate": float(np.mean(results["success"])),
        "mean_return": float(np.mean(results["return"])),
        "mean_final_distance": float(np.mean(results["final_distance"])),
        "per_episode": [
            {"success": s, "return": r, "final_distance": d}
            for s, r, d in zip(
                results["success"], results["return"], results["final_distance"], strict=True
            )
        ],
    }
    out = Path(args.output) if args.output else path / "eval.json"
    out.write_text(json.dumps(report, indent=2))
    print(
        f"success rate {report['success_rate']:.1%} over {args.episodes} episodes, "
        f"mean return {report['mean_return']:.1f} -> {out}"
    )
    if args.video:
        write_video(frames, Path(args.video))
        print(f"video: {args.video} ({len(frames)} frames)")
    return report


def main() -> int:
    args = tyro.cli(EvalArgs, description=__doc__)
    try:
        evaluate(args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
