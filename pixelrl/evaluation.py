"""Evaluating a checkpoint: the deterministic policy (tanh of the mean action) on fresh envs.

`evaluate(EvalArgs(...))` is what eval.py runs and what a sweep's trial runs after training;
it writes eval.json beside the checkpoint: what ran (`what_ran`: what the networks saw and
which path trained them; the run's whole `config`; the commit that trained it and the one that
evaluated it), how (the env seed, n_envs, the episodes) and what came of it (success rate, mean
return, per-episode success, return, final goal distance, how far the achieved goal moved and
how high the goal was above where it started, and the success rate by that height), with the
checkpoint's step. `--true-estimate` hands a state-estimator run's actor the true achieved goal
in place of the estimate (`true_estimate` in the report).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelrl.checkpoint import git_commit, resolve_checkpoint
from pixelrl.compat import what_ran_saved
from pixelrl.config import ConfigError
from pixelrl.envs import ACHIEVED_GOAL, DESIRED_GOAL
from pixelrl.policy import load_policy
from pixelrl.vector_env import FetchVectorEnv

# A goal at least this far above where the achieved goal began its episode is in the air: in
# PickAndPlace half the goals are drawn 0-45 cm above the table, and the object must be lifted
# to them; Push's goals are all on the table (height 0).
IN_AIR_M = 0.02


def success_by_goal_height(success: list[bool], goal_height: list[float]) -> dict:
    """Episodes and success rate for goals on the table and in the air (IN_AIR_M); a rate is
    None where no goal was of that kind."""
    in_air = np.asarray(goal_height) >= IN_AIR_M
    out = {}
    for name, kind in (("on_table", ~in_air), ("in_air", in_air)):
        episodes = int(kind.sum())
        rate = float(np.mean(np.asarray(success)[kind])) if episodes else None
        out[name] = {"episodes": episodes, "success_rate": rate}
    return out


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
    true_estimate: bool = False
    """A run with the state estimator only: the actor reads the true achieved goal (the
    object's position) where it reads the estimate from the image, so that the difference from
    a plain evaluation is what the estimate's error costs."""
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
    """Run the deterministic policy for `args.episodes` episodes; write and return the report."""
    if args.episodes < 1:
        raise ConfigError(f"--episodes {args.episodes}: must be >= 1")
    path = resolve_checkpoint(args.checkpoint)
    cfg, policy = load_policy(path, args.device, args.true_estimate)
    n = args.n_envs or cfg.env.n_envs
    env_cfg = dataclasses.replace(
        cfg.env,
        n_envs=n,
        vector="sync" if args.video else cfg.env.vector,  # the video view renders here
    )
    seed = args.seed if args.seed is not None else cfg.run.seed + 10_000
    results = {
        "success": [], "return": [], "final_distance": [], "achieved_goal_moved": [],
        "goal_height": [],
    }  # fmt: skip
    frames: list[np.ndarray] = []
    video_done = 0
    with FetchVectorEnv(env_cfg, seed=seed) as venv:
        obs = venv.reset()
        # Where each env's achieved goal began its episode. In Push and PickAndPlace that is the
        # puck: an episode that ends with it within ~1 cm of where it started is one where the
        # policy did not push it, which tells a policy that goes for the puck from one that
        # does not.
        episode_start_achieved_goal = obs[ACHIEVED_GOAL].copy()
        viewer = venv.local_env(0) if args.video else None
        if viewer is not None:
            frames.append(viewer.render_view(args.video_size))
        returns = np.zeros(n)
        while len(results["success"]) < args.episodes:
            step = venv.step(policy.act_batch(obs, deterministic=True))
            returns += step.reward
            if viewer is not None and video_done < args.video_episodes:
                frames.append(viewer.render_view(args.video_size))
                video_done += int(step.done[0])
            for i in np.flatnonzero(step.done):
                if len(results["success"]) < args.episodes:
                    final = step.next_obs
                    distance = np.linalg.norm(final[ACHIEVED_GOAL][i] - final[DESIRED_GOAL][i])
                    start = episode_start_achieved_goal[i]
                    moved = np.linalg.norm(final[ACHIEVED_GOAL][i] - start)
                    results["success"].append(bool(step.is_success[i]))
                    results["return"].append(float(returns[i]))
                    results["final_distance"].append(float(distance))
                    results["achieved_goal_moved"].append(float(moved))
                    results["goal_height"].append(float(final[DESIRED_GOAL][i][2] - start[2]))
                returns[i] = 0.0
            returns[step.lost] = 0.0  # a failed env's partial episode is dropped
            restarted = np.flatnonzero(step.new_episode)
            policy.reset(restarted)
            episode_start_achieved_goal[restarted] = step.to_act_on[ACHIEVED_GOAL][restarted]
            obs = step.to_act_on
            if venv.gave_up:  # an env left without a worker would never finish an episode
                raise RuntimeError(f"evaluation stopped: {venv.gave_up}")
    report = {
        "checkpoint": str(path),
        "checkpoint_step": policy.checkpoint_step,
        "env_id": env_cfg.env_id,
        "what_ran": what_ran_saved(policy.saved_config),
        "config": policy.saved_config,
        "run_commit": policy.run_commit,
        "eval_commit": git_commit(),
        "seed": seed,
        "n_envs": n,
        "episodes": args.episodes,
        "true_estimate": args.true_estimate,
        "success_rate": float(np.mean(results["success"])),
        "mean_return": float(np.mean(results["return"])),
        "mean_final_distance": float(np.mean(results["final_distance"])),
        "mean_achieved_goal_moved": float(np.mean(results["achieved_goal_moved"])),
        "success_by_goal_height": success_by_goal_height(
            results["success"], results["goal_height"]
        ),
        # One dict per episode with the same keys as `results`.
        "per_episode": [
            dict(zip(results, values, strict=True))
            for values in zip(*results.values(), strict=True)
        ],
    }
    out = Path(args.output) if args.output else path / "eval.json"
    out.write_text(json.dumps(report, indent=2))
    in_air = report["success_by_goal_height"]["in_air"]
    print(
        f"success rate {report['success_rate']:.1%} over {args.episodes} episodes"
        + (f" ({in_air['success_rate']:.1%} of {in_air['episodes']} with the goal in the air)"
           if in_air["episodes"] else "")
        + f", mean return {report['mean_return']:.1f} -> {out}"
    )  # fmt: skip
    if args.video:
        write_video(frames, Path(args.video))
        print(f"video: {args.video} ({len(frames)} frames)")
    return report
