"""Did the policy go for the puck? What a run's stored training episodes say, oldest first.

    python benchmarks/contact.py RUN/checkpoints/step_N                  # its newest checkpoint
    python benchmarks/contact.py RUN/checkpoints/step_N --policies OTHER/checkpoints/step_M ...

Push is learned in a known order: the gripper reaches the puck, touches it, and only then
pushes it to the goal. Success stays flat through the first two, so a flat success curve does
not say which of them a run is in; its replay does. Per window of `--window` env steps (by the
transitions committed before each episode ended), over the episodes the replay still holds:

- moved > 1 cm: the share of episodes whose achieved goal (the puck) moved more than 1 cm
  from the episode's first step to its last: episodes where the policy touched it;
- success: the final achieved goal within 5 cm of the desired goal (FetchPush's threshold);
- closest: the median over episodes of the gripper's closest approach to the achieved goal,
  and the share that came within 6 cm (the puck's centre is ~2.5 cm from its edge).

`--policies` runs each listed checkpoint's deterministic policy on 2,048 of these stored states
(the achieved goal above `--min-height`, the gripper more than 5 cm from it) and prints the
mean cosine between the action's xyz and the direction from the gripper to the achieved goal:
near 0 for a policy that ignores where the puck is, positive for one that heads for it. Any
checkpoint whose networks read these observations works (a no-pixels control ignores the
frames), so runs can be compared on the same states.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pixelrl.buffers.replay import EpisodeReplay
from pixelrl.build import load_saved_replay
from pixelrl.envs import ACHIEVED_GOAL, DESIRED_GOAL, PROPRIO_GRIP_POS, PROPRIOCEPTION
from pixelrl.policy import load_policy

MOVED_M, SUCCESS_M, NEAR_M, FAR_M = 0.01, 0.05, 0.06, 0.05


def episodes_oldest_first(replay: EpisodeReplay) -> dict[str, np.ndarray]:
    """Per stored episode, oldest first: the transitions committed when it ended, how far its
    achieved goal moved, its final distance to the desired goal and (with proprioception)
    the gripper's closest approach to the achieved goal, in metres."""
    n, capacity = replay.num_episodes, replay.capacity
    order = np.arange(n) if n < capacity else (np.arange(capacity) + replay.next_slot) % capacity
    lengths = replay.host_lengths[order]
    # The newest episode ended when the last transition was committed; each older one ended
    # before the transitions of all the episodes after it.
    ended = replay.transitions_committed - (lengths.sum() - np.cumsum(lengths))
    goals = replay.storage[ACHIEVED_GOAL][torch.from_numpy(order)].numpy()  # (n, T + 1, G)
    last = goals[np.arange(n), lengths]
    out = {
        "ended": ended,
        "moved": np.linalg.norm(last - goals[:, 0], axis=-1),
        "final_distance": np.linalg.norm(
            last - replay.storage[DESIRED_GOAL][torch.from_numpy(order)].numpy(), axis=-1
        ),
    }
    if PROPRIOCEPTION in replay.storage:
        gripper = replay.storage[PROPRIOCEPTION][torch.from_numpy(order)].numpy()[
            ..., PROPRIO_GRIP_POS
        ]
        distance = np.linalg.norm(gripper - goals, axis=-1)  # (n, T + 1)
        steps = np.arange(distance.shape[1])
        distance[steps[None, :] > lengths[:, None]] = np.inf  # past an episode's end
        out["closest"] = distance.min(axis=1)
    return out


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
            "moved": float(np.mean(episodes["moved"][inside] > MOVED_M)),
            "success": float(np.mean(episodes["final_distance"][inside] < SUCCESS_M)),
        }
        if "closest" in episodes:
            row["closest_median"] = float(np.median(episodes["closest"][inside]))
            row["near"] = float(np.mean(episodes["closest"][inside] < NEAR_M))
        rows.append(row)
    return rows


def heading_to_goal(agent, obs: dict[str, torch.Tensor]) -> float:
    """Mean cosine between the deterministic action's xyz and the gripper -> achieved goal
    direction on `obs`."""
    with torch.no_grad():
        action = agent.act(obs, deterministic=True)[:, :3]
    direction = obs[ACHIEVED_GOAL] - obs[PROPRIOCEPTION][:, PROPRIO_GRIP_POS]
    return float(torch.nn.functional.cosine_similarity(action, direction, dim=-1).mean())


def main(argv: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint directory that kept its replay")
    parser.add_argument("--window", type=int, default=10_000, help="env steps per row")
    parser.add_argument("--policies", nargs="*", default=[], help="checkpoints to act")
    parser.add_argument("--min-height", type=float, default=0.4, help="metres (the table: 0.42)")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    if a.window < 1:
        parser.error(f"--window {a.window}: must be >= 1")
    replay = load_saved_replay(a.checkpoint)
    if replay.num_episodes == 0:
        raise SystemExit(f"{a.checkpoint}: the replay holds no complete episode")
    episodes = episodes_oldest_first(replay)
    rows = window_rows(episodes, a.window)
    print("| env steps | episodes | moved > 1 cm | success | closest: median / within 6 cm |")
    print("|---|---|---|---|---|")
    for r in rows:
        closest = f"{100 * r['closest_median']:.1f} cm / {r['near']:.0%}" if "near" in r else "-"
        print(
            f"| {r['from'] / 1000:g}K-{r['to'] / 1000:g}K | {r['episodes']} | {r['moved']:.0%} "
            f"| {r['success']:.0%} | {closest} |"
        )

    headings = []
    if a.policies:
        if PROPRIOCEPTION not in replay.storage:
            raise SystemExit("--policies: the replay stores no proprioception (gripper)")
        generator = torch.Generator().manual_seed(a.seed)
        obs = replay.sample_observations(2048, generator)
        gripper = obs[PROPRIOCEPTION][:, PROPRIO_GRIP_POS]
        apart = (obs[ACHIEVED_GOAL] - gripper).norm(dim=-1)
        keep = (obs[ACHIEVED_GOAL][:, 2] >= a.min_height) & (apart > FAR_M)
        obs = {key: value[keep] for key, value in obs.items()}
        print(f"\n{int(keep.sum())} stored states, gripper > {100 * FAR_M:g} cm from the goal")
        print("| policy | env step | cos(action, gripper -> achieved goal) |")
        print("|---|---|---|")
        for checkpoint in a.policies:
            _, policy = load_policy(checkpoint, "cpu")
            step, cos = policy.checkpoint_step, heading_to_goal(policy.agent, obs)
            headings.append({"checkpoint": checkpoint, "step": step, "cos": cos})
            print(f"| {Path(checkpoint).parent.parent} | {step:,} | {cos:+.2f} |")
    return rows, headings


if __name__ == "__main__":
    main()
