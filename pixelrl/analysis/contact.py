"""Did the policy go for the puck? What a run's stored training episodes say, oldest first.

    python -m pixelrl.analysis.contact RUN/checkpoints/step_N           # its newest checkpoint
    python -m pixelrl.analysis.contact RUN/checkpoints/step_N --policies OTHER/checkpoints/step_M

Push is learned in order: the gripper reaches the puck, touches it, and only then pushes it to
the goal. Success stays flat through the first two, so a flat success curve does not say which
of them a run is in; its replay does. Per window of `--window` steps, counted in committed
transitions (the env steps less any partial episodes a failed worker dropped), over the
episodes the replay still holds (read memory-mapped, frames never loaded):

- moved > 1 cm: the share of episodes whose achieved goal (the puck) ended more than 1 cm from
  where it started: episodes where the policy pushed it;
- success: the final achieved goal within 5 cm of the desired goal (FetchPush's threshold);
- closest: the median over episodes of the gripper's closest approach to the achieved goal,
  and the share that came within 6 cm (the puck's centre is ~2.5 cm from its edge);
- lifted > 5 cm: the share of episodes whose achieved goal rose more than 5 cm above where it
  started (PickAndPlace is learned as reach, grasp, lift; in Push, none);
- where the replay stores the state estimator's estimates: their median error (cm) over the
  steps with the achieved goal less than and more than 5 cm above its start, as SAC reads them
  now (the estimator learns only the heights its replay holds).

`--policies` runs each listed checkpoint's deterministic policy on up to 2,048 of these stored
states (the achieved goal above `--min-height`, more than 5 cm from the gripper in x-y) and
prints the mean cosine, in the table's plane, between the action and the direction from the
gripper to the achieved goal, beside the same against another state's direction: the score of
a policy that ignores where the puck is, and, for a policy that reads the state estimator's
estimate of the puck, its heading when it reads the true position instead: whether the
estimate's error is what holds it back. Any checkpoint whose networks read these observations
works (a no-pixels control ignores the frames, a policy that stacks fewer frames reads the
newest), so runs compare on one set of states.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pixelrl.agents.estimator import EstimatorAgent
from pixelrl.agents.sac import SAC
from pixelrl.buffers.replay import ESTIMATED_AT, NOT_ESTIMATED
from pixelrl.build import load_saved_replay
from pixelrl.envs import (
    ACHIEVED_GOAL,
    DESIRED_GOAL,
    PIXELS,
    PROPRIO_GRIP_POS,
    PROPRIOCEPTION,
    STATE_ESTIMATE,
)
from pixelrl.policy import load_policy

MOVED_M, SUCCESS_M, NEAR_M, FAR_M, LIFTED_M = 0.01, 0.05, 0.06, 0.05, 0.05


def episodes_oldest_first(checkpoint: str | Path) -> dict[str, np.ndarray]:
    """Per episode in a checkpoint's saved replay, oldest first: `ended`, the transitions
    committed when it ended; `achieved_goal_moved`, how far its achieved goal moved from its
    first step to its last; `final_distance`, from the desired goal at its end; `lift`, how
    far it rose above its first step's height; where proprioception is stored, `closest`, the
    gripper's closest approach to the achieved goal (metres; arrays of (episodes,)); and where
    estimates are stored, per step (episodes, T + 1), `height` above the first step and
    `estimate_error` (NaN past an episode's end and where none was written yet). Reads only
    those fields, memory-mapped."""
    keys = ["lengths", ACHIEVED_GOAL, DESIRED_GOAL]
    directory = Path(checkpoint) / "replay"
    if not (directory / "meta.json").is_file():
        raise SystemExit(f"{checkpoint} kept no replay: only a run's newest checkpoint has one")
    for key in (PROPRIOCEPTION, STATE_ESTIMATE, ESTIMATED_AT):
        if (directory / f"storage.{key}.npy").is_file():
            keys.append(key)
    meta = json.loads((directory / "meta.json").read_text())
    stored = {key: np.load(directory / f"storage.{key}.npy", mmap_mode="r") for key in keys}
    if "transitions_committed" not in meta:
        raise SystemExit(f"{checkpoint}: its replay predates the committed-transition count")
    n, capacity = meta["num_episodes"], meta["capacity"]
    if n == 0:
        raise SystemExit(f"{checkpoint}: the replay holds no complete episode")
    order = np.arange(n) if n < capacity else (np.arange(capacity) + meta["next_slot"]) % capacity
    lengths = np.asarray(stored["lengths"])[order]
    # The newest episode ended when the last transition was committed; each older one ended
    # before the transitions of all the episodes after it.
    ended = meta["transitions_committed"] - (lengths.sum() - np.cumsum(lengths))
    achieved = np.asarray(stored[ACHIEVED_GOAL])[order]  # (n, T + 1, G)
    final = achieved[np.arange(n), lengths]
    past_end = np.arange(achieved.shape[1])[None, :] > lengths[:, None]  # (n, T + 1)
    height = achieved[..., 2] - achieved[:, :1, 2]
    out = {
        "ended": ended,
        "achieved_goal_moved": np.linalg.norm(final - achieved[:, 0], axis=-1),
        "final_distance": np.linalg.norm(final - np.asarray(stored[DESIRED_GOAL])[order], axis=-1),
        "lift": np.where(past_end, -np.inf, height).max(axis=1),
    }
    if PROPRIOCEPTION in stored:
        gripper = np.asarray(stored[PROPRIOCEPTION])[order][..., PROPRIO_GRIP_POS]
        distance = np.linalg.norm(gripper - achieved, axis=-1)  # (n, T + 1)
        distance[past_end] = np.inf
        out["closest"] = distance.min(axis=1)
    if STATE_ESTIMATE in stored and ESTIMATED_AT in stored:
        error = np.linalg.norm(np.asarray(stored[STATE_ESTIMATE])[order] - achieved, axis=-1)
        not_written = np.asarray(stored[ESTIMATED_AT])[order] == NOT_ESTIMATED
        error[past_end | not_written[:, None]] = np.nan
        out["height"], out["estimate_error"] = height, error
    return out


def median_cm(values: np.ndarray) -> float | None:
    """The median of the non-NaN values, in cm; None if there are none."""
    values = values[~np.isnan(values)]
    return float(np.median(values)) * 100 if len(values) else None


def window_rows(episodes: dict[str, np.ndarray], window: int) -> list[dict]:
    rows = []
    ended = episodes["ended"]
    for start in range(int(ended[0] - 1) // window * window, int(ended[-1]), window):
        inside = (ended > start) & (ended <= start + window)
        if not inside.any():
            continue
        row = {
            "from": start,
            "to": start + window,
            "episodes": int(inside.sum()),
            "moved": float(np.mean(episodes["achieved_goal_moved"][inside] > MOVED_M)),
            "success": float(np.mean(episodes["final_distance"][inside] < SUCCESS_M)),
            "lifted": float(np.mean(episodes["lift"][inside] > LIFTED_M)),
        }
        if "closest" in episodes:
            row["closest_median"] = float(np.median(episodes["closest"][inside]))
            row["near"] = float(np.mean(episodes["closest"][inside] < NEAR_M))
        if "estimate_error" in episodes:
            error, up = episodes["estimate_error"][inside], episodes["height"][inside] > LIFTED_M
            row["estimate_low_cm"] = median_cm(error[~up])
            row["estimate_lifted_cm"] = median_cm(error[up])
        rows.append(row)
    return rows


def actions_with_the_true_goal(agent, obs: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The deterministic actions (B, A) when the actor reads the true achieved goal where it
    reads the state estimator's estimate of it; None for an agent that reads no estimate."""
    if not isinstance(agent, EstimatorAgent):
        return None
    return agent.sac.act({**obs, STATE_ESTIMATE: obs[ACHIEVED_GOAL]}, deterministic=True)


def newest_frames(obs: dict[str, torch.Tensor], frame_stack: int) -> dict[str, torch.Tensor]:
    """`obs` with its frame stacks (B, 3k, H, W), newest frame last, cut to the newest
    `frame_stack` frames: what a policy that stacks fewer frames than the run reads."""
    if PIXELS not in obs:
        return obs
    channels = 3 * frame_stack
    if channels > obs[PIXELS].shape[1]:
        raise SystemExit(
            f"--policies: a policy stacks {frame_stack} frames, the replay's stacks hold "
            f"{obs[PIXELS].shape[1] // 3}"
        )
    return obs | {PIXELS: obs[PIXELS][:, -channels:]}


def heading_to_goal(agent: SAC | EstimatorAgent, obs: dict[str, torch.Tensor]) -> dict[str, float]:
    """On `obs` (dict of (B, ...)), the mean cosine, in the table's plane, between the
    deterministic action and the direction from the gripper to the achieved goal (`cos`); the
    same against another state's direction (`cos_shuffled`, a policy's score for ignoring where
    the goal is); and for an agent that reads the state head's estimate, `cos` with the true
    achieved goal in its place (`cos_true_goal`: whether the estimate's error is what it costs).

    In the plane because the puck lies on the table below the gripper: in 3-D, any action
    that moves down would point partly toward it."""
    direction = (obs[ACHIEVED_GOAL] - obs[PROPRIOCEPTION][:, PROPRIO_GRIP_POS])[:, :2]
    cos = torch.nn.functional.cosine_similarity
    with torch.no_grad():
        action = agent.act(obs, deterministic=True)[:, :2]
        out = {
            "cos": float(cos(action, direction, dim=-1).mean()),
            "cos_shuffled": float(cos(action, direction.roll(1, dims=0), dim=-1).mean()),
        }
        true_goal_action = actions_with_the_true_goal(agent, obs)
    if true_goal_action is not None:
        out["cos_true_goal"] = float(cos(true_goal_action[:, :2], direction, dim=-1).mean())
    return out


def main(argv: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint directory that kept its replay")
    parser.add_argument("--window", type=int, default=10_000, help="env steps per row")
    parser.add_argument("--policies", nargs="*", default=[], help="checkpoints to act")
    parser.add_argument(
        "--min-height", type=float, default=0.4, help="metres (a puck on the table: 0.42)"
    )
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    if a.window < 1:
        parser.error(f"--window {a.window}: must be >= 1")
    episodes = episodes_oldest_first(a.checkpoint)
    rows = window_rows(episodes, a.window)
    print(
        "| env steps | episodes | moved > 1 cm | success | closest: median / within 6 cm "
        "| lifted > 5 cm | stored estimate's error: below 5 cm / above |"
    )
    print("|---|---|---|---|---|---|---|")

    def cm(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} cm"

    for r in rows:
        closest = f"{100 * r['closest_median']:.1f} cm / {r['near']:.0%}" if "near" in r else "-"
        estimate = (
            f"{cm(r['estimate_low_cm'])} / {cm(r['estimate_lifted_cm'])}"
            if "estimate_low_cm" in r
            else "-"
        )
        print(
            f"| {r['from'] / 1000:g}K-{r['to'] / 1000:g}K | {r['episodes']} | {r['moved']:.0%} "
            f"| {r['success']:.0%} | {closest} | {r['lifted']:.0%} | {estimate} |"
        )

    headings = []
    if a.policies:
        replay = load_saved_replay(a.checkpoint)
        if PROPRIOCEPTION not in replay.storage:
            raise SystemExit("--policies: the replay stores no proprioception (gripper)")
        obs = replay.sample_observations(2048, torch.Generator().manual_seed(a.seed))
        gripper = obs[PROPRIOCEPTION][:, PROPRIO_GRIP_POS]
        apart = (obs[ACHIEVED_GOAL] - gripper)[:, :2].norm(dim=-1)
        keep = (obs[ACHIEVED_GOAL][:, 2] >= a.min_height) & (apart > FAR_M)
        if not keep.any():  # e.g. FetchReach, whose achieved goal is the gripper
            raise SystemExit(
                f"--policies: no stored state has the achieved goal above --min-height "
                f"{a.min_height} and more than {100 * FAR_M:g} cm from the gripper"
            )
        obs = {key: value[keep] for key, value in obs.items()}
        print(
            f"\n{int(keep.sum())} stored states: the achieved goal above {a.min_height} m and "
            f"more than {100 * FAR_M:g} cm from the gripper in x-y"
        )
        print("| policy | env step | heading to the goal | another state's | true goal read |")
        print("|---|---|---|---|---|")
        for checkpoint in a.policies:
            policy_cfg, policy = load_policy(checkpoint, "cpu")
            heading = heading_to_goal(policy.agent, newest_frames(obs, policy_cfg.env.frame_stack))
            step = policy.checkpoint_step
            headings.append(
                {"checkpoint": str(policy.checkpoint), "step": step, "states": int(keep.sum())}
                | heading
            )
            true_goal = f"{heading['cos_true_goal']:+.2f}" if "cos_true_goal" in heading else "-"
            run = policy.checkpoint.parent.parent
            print(
                f"| {run} | {step:,} | {heading['cos']:+.2f} | {heading['cos_shuffled']:+.2f} "
                f"| {true_goal} |"
            )
    return rows, headings


if __name__ == "__main__":
    main()
