"""Can the image show a lifted object? Frames of scripted pick-and-place episodes, a frame
grid by the object's height, and a fresh state estimator's error by height (no RL).

    python -m pixelrl.analysis.heights --out results/frames/pickandplace_default_camera
    python -m pixelrl.analysis.heights --camera-elevation -30 --out ...   # another camera
    python -m pixelrl.analysis.heights --checkpoint RUN/checkpoints/step_N --out ...

In FetchPickAndPlace the achieved goal is the object's 3-D position and half the goals are in
the air (up to 45 cm above the table), so the image must show the object off the table, in
the gripper, and tell its height. A policy that has not learned to grasp never lifts it, so
the frames come from a scripted controller that does (above the object, down, close, carry
to the goal), rendered exactly as a run renders them (the same env wrapper and camera flags).
Its episodes are split in order, the first 80% to train a fresh state estimator (the one a
run trains, by its own loss) and the rest held out. With `--checkpoint`, a run's own state
estimator is scored instead, on every episode, rendered with the run's camera and image size:
what the actor would read of an object lifted higher than the run's policy has lifted it so
far (its replay holds only the heights its policy reached). Written to `--out`:

- `grid.png`: held-out 84x84 frames (enlarged, pixels kept sharp), columns by the object's
  height above the table, one row per episode, each labelled with that height;
- `heights.json`: the arguments, the held-out estimate's median error (cm) per height band,
  with the frames in each band, and the training curve (with `--checkpoint`: the run's
  estimator's error on all the episodes, and the checkpoint's step).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from pixelrl.agents.estimator import EstimatorAgent, StateEstimator
from pixelrl.config import EnvConfig
from pixelrl.envs import ACHIEVED_GOAL, DESIRED_GOAL, PIXELS, PROPRIOCEPTION, make_fetch_env
from pixelrl.policy import load_policy

# Height bands above the table (m): on the table, just lifted, then 10 cm steps to the top
# of the goals' range.
BANDS_M = (0.0, 0.02, 0.10, 0.20, 0.30, 0.50)
GRID_HEIGHTS_M = (0.0, 0.05, 0.15, 0.25, 0.35)
MOVE_GAIN = 10.0  # action per metre from the target (actions move the gripper <= 5 cm)
ABOVE_M, AT_M = 0.01, 0.008  # how close counts as arrived above the object, and at it
CLOSE_STEPS = 4
TRAIN_SHARE = 0.8  # the first 80% of the episodes train the estimator, the rest are held out


def held_out_start(episodes: int) -> int:
    """The first held-out episode; an error naming --episodes where a side would be empty."""
    split = int(episodes * TRAIN_SHARE)
    if split < 1 or split == episodes:
        raise SystemExit(f"--episodes: {episodes} episodes cannot be split 80/20")
    return split


def scripted_action(phase: dict, grip: np.ndarray, obj: np.ndarray, goal: np.ndarray):
    """Pick-and-place by hand: above the object with the gripper open, down to it, close,
    carry it to the goal closed. `phase` ({"name", "closed_for"}) carries the state between
    steps. Returns a (4,) action in [-1, 1]: the gripper's move, then open (1) or close (-1)."""
    if phase["name"] == "above":
        target, grip_cmd = obj + np.array([0.0, 0.0, 0.05]), 1.0
        if np.linalg.norm(grip - target) < ABOVE_M:
            phase["name"] = "down"
    if phase["name"] == "down":
        target, grip_cmd = obj, 1.0
        if np.linalg.norm(grip - target) < AT_M:
            phase["name"] = "close"
    if phase["name"] == "close":
        target, grip_cmd = grip, -1.0
        phase["closed_for"] += 1
        if phase["closed_for"] >= CLOSE_STEPS:
            phase["name"] = "carry"
    if phase["name"] == "carry":
        target, grip_cmd = goal, -1.0
    move = np.clip(MOVE_GAIN * (target - grip), -1.0, 1.0)
    return np.append(move, grip_cmd).astype(np.float32)


def collect(env_cfg: EnvConfig, episodes: int, seed: int) -> dict[str, np.ndarray]:
    """Scripted episodes rendered as a run renders them: `pixels` uint8 (E, T, 3, H, W),
    `achieved_goal` (E, T, 3) and `table_z`, the object's height at the start (m)."""
    env = make_fetch_env(env_cfg)
    frames, goals, table_z = [], [], []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            table_z.append(float(obs[ACHIEVED_GOAL][2]))
            phase = {"name": "above", "closed_for": 0}
            ep_frames, ep_goals, done = [], [], False
            while not done:
                ep_frames.append(obs[PIXELS])
                ep_goals.append(obs[ACHIEVED_GOAL])
                grip = obs[PROPRIOCEPTION][:3]  # the gripper's position leads proprioception
                action = scripted_action(phase, grip, obs[ACHIEVED_GOAL], obs[DESIRED_GOAL])
                obs, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
            frames.append(np.stack(ep_frames))
            goals.append(np.stack(ep_goals))
    finally:
        env.close()
    return {
        PIXELS: np.stack(frames),
        ACHIEVED_GOAL: np.stack(goals).astype(np.float32),
        "table_z": float(np.median(table_z)),
    }


def frame_grid(frames: np.ndarray, heights: np.ndarray, rows: int, scale: int = 3):
    """A PIL image: per row an episode, per column the frame whose object height is nearest
    each of GRID_HEIGHTS_M (episodes that reach the highest first), labelled in cm."""
    from PIL import Image, ImageDraw

    order = np.argsort(-heights.max(axis=1))[:rows]
    side = frames.shape[-1] * scale
    label = 12
    grid = Image.new("RGB", (side * len(GRID_HEIGHTS_M), (side + label) * len(order)), "white")
    draw = ImageDraw.Draw(grid)
    for row, episode in enumerate(order):
        for col, want in enumerate(GRID_HEIGHTS_M):
            t = int(np.argmin(np.abs(heights[episode] - want)))
            tile = Image.fromarray(frames[episode, t].transpose(1, 2, 0)).resize(
                (side, side), Image.NEAREST
            )
            x, y = col * side, row * (side + label)
            grid.paste(tile, (x, y + label))
            draw.text((x + 2, y), f"{heights[episode, t] * 100:.0f} cm up", fill="black")
    return grid


def error_by_height(error_cm: np.ndarray, heights: np.ndarray) -> list[dict]:
    """Median error (cm) and frame count per height band (BANDS_M); a frame a hair below
    the table's height (the object settling) counts as on it."""
    heights = np.maximum(heights, 0.0)
    bands = []
    for low, high in zip(BANDS_M[:-1], BANDS_M[1:], strict=True):
        inside = (heights >= low) & (heights < high)
        median = float(np.median(error_cm[inside])) if inside.any() else None
        bands.append({"band_cm": [low * 100, high * 100], "frames": int(inside.sum()),
                      "median_error_cm": None if median is None else round(median, 2)})  # fmt: skip
    return bands


def train_estimator(data: dict, split: int, steps: int, batch_size: int, lr: float, seed: int):
    """A fresh state estimator trained on the episodes before `split`, scored on the rest;
    returns (held-out error in cm per frame, held-out heights above the table, curve of
    (step, loss, median held-out error))."""
    torch.manual_seed(seed)
    frames = torch.from_numpy(data[PIXELS])
    goals = torch.from_numpy(data[ACHIEVED_GOAL])
    train_x, train_y = frames[:split].flatten(0, 1), goals[:split].flatten(0, 1)
    test_x, test_y = frames[split:].flatten(0, 1), goals[split:].flatten(0, 1)
    mean, std = train_y.mean(0), train_y.std(0).clamp(min=1e-3)
    estimator = StateEstimator(tuple(frames.shape[2:]), 3, learning_rate=lr)
    generator = torch.Generator().manual_seed(seed)

    def held_out_error() -> torch.Tensor:
        with torch.no_grad():
            estimate = torch.cat([estimator(chunk) for chunk in test_x.split(256)])
        return (estimate * std + mean - test_y).norm(dim=-1) * 100

    curve, start = [], time.monotonic()
    for step in range(1, steps + 1):
        rows = torch.randint(len(train_x), (batch_size,), generator=generator)
        loss = estimator.update(train_x[rows], (train_y[rows] - mean) / std)["aux_loss"]
        if step % 250 == 0 or step == steps:
            curve.append((step, round(loss.item(), 4), round(held_out_error().median().item(), 2)))
            print(curve[-1], f"{time.monotonic() - start:.0f}s", flush=True)
    heights = (test_y[:, 2] - data["table_z"]).numpy()
    return held_out_error().numpy(), heights, curve


def run_estimator(checkpoint: str):
    """(the run's env config, its EstimatorAgent, the checkpoint's step); an error naming
    --checkpoint for a run without a state estimator or stacking frames."""
    cfg, policy = load_policy(checkpoint, "cpu")
    if not isinstance(policy.agent, EstimatorAgent):
        raise SystemExit(f"--checkpoint {checkpoint}: this run has no state estimator")
    if cfg.env.frame_stack != 1:
        raise SystemExit(
            f"--checkpoint {checkpoint}: the run stacks {cfg.env.frame_stack} frames; the "
            "scripted episodes are scored one frame at a time (--frame-stack 1 runs)"
        )
    return cfg.env, policy.agent, policy.checkpoint_step


def score_run_estimator(agent: EstimatorAgent, data: dict) -> tuple[np.ndarray, np.ndarray]:
    """The run's estimate's error (cm) and the object's height above the table (m), per frame
    of every episode in `data`."""
    frames = torch.from_numpy(data[PIXELS]).flatten(0, 1)
    truth = data[ACHIEVED_GOAL].reshape(-1, 3)
    error_cm = np.linalg.norm(agent.estimate(frames).numpy() - truth, axis=-1) * 100
    return error_cm, truth[:, 2] - data["table_z"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-id", default="FetchPickAndPlace-v4")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=2000, help="estimator gradient steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--grid-rows", type=int, default=4)
    defaults = EnvConfig()
    parser.add_argument("--camera", default=defaults.camera)
    parser.add_argument("--camera-lookat", type=float, nargs=3, default=defaults.camera_lookat)
    parser.add_argument("--camera-distance", type=float, default=defaults.camera_distance)
    parser.add_argument("--camera-azimuth", type=float, default=defaults.camera_azimuth)
    parser.add_argument("--camera-elevation", type=float, default=defaults.camera_elevation)
    parser.add_argument("--checkpoint", default=None,
                        help="score this run's state estimator (its env, camera and image "
                             "size) instead of training a fresh one")  # fmt: skip
    parser.add_argument("--out", required=True, help="folder for grid.png and heights.json")
    a = parser.parse_args(argv)
    env_cfg = replace(
        defaults, env_id=a.env_id, image_size=a.image_size, camera=a.camera,
        camera_lookat=tuple(a.camera_lookat), camera_distance=a.camera_distance,
        camera_azimuth=a.camera_azimuth, camera_elevation=a.camera_elevation,
    )  # fmt: skip
    if a.checkpoint:  # before minutes of rendering
        env_cfg, agent, checkpoint_step = run_estimator(a.checkpoint)
        split = 0  # nothing to train: every episode is scored
    else:
        split = held_out_start(a.episodes)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    data = collect(env_cfg, a.episodes, a.seed)
    heights = data[ACHIEVED_GOAL][..., 2] - data["table_z"]
    lifted_share = float((heights.max(1) >= 0.10).mean())
    print(f"{a.episodes} episodes rendered in {time.monotonic() - start:.0f}s; object lifted "
          f">= 10 cm in {lifted_share:.0%} of them", flush=True)  # fmt: skip
    frame_grid(data[PIXELS][split:], heights[split:], a.grid_rows).save(out / "grid.png")
    if a.checkpoint:
        error_cm, test_heights = score_run_estimator(agent, data)
        scored = {"checkpoint_step": checkpoint_step, "run_env": asdict(env_cfg)}
    else:
        error_cm, test_heights, curve = train_estimator(
            data, split, a.steps, a.batch_size, a.lr, a.seed
        )
        scored = {"curve": curve}
    result = {
        "args": vars(a),
        "lifted_10cm_share": round(lifted_share, 3),
        "held_out_median_error_cm": round(float(np.median(error_cm)), 2),
        "by_height": error_by_height(error_cm, test_heights),
        **scored,
    }
    (out / "heights.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("held_out_median_error_cm", "by_height")}))
    return result


if __name__ == "__main__":
    main()
