"""The encoder diagnostics of one checkpoint, on all stored observations and on those whose
achieved goal is at least `--min-height` high (in Push: the puck still on the table).

    python -m pixelrl.analysis.probe RUN/checkpoints/step_N --min-height 0.4 --repeats 4

Each repeat draws 512 stored observations, as a run's logging does, and prints the probe of
the image features (R^2 / median error) and the state estimator's estimate (R^2 / median error),
first over all of them, then over those above the height. R^2 pools squared errors, so a few
pucks pushed off the table (tens of centimetres below it) can decide it while the median
error does not move; this separates the two. Then the state head's estimate by the gripper's
distance from the achieved goal, and where the achieved goal moved in the step before: an
estimate that lags behind a moving puck is closer to where it was than to where it is.
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch

from pixelrl.build import load_saved_replay
from pixelrl.diagnostics import DIAGNOSTIC_SAMPLES, encoder_report
from pixelrl.envs import ACHIEVED_GOAL, PIXELS, PROPRIO_GRIP_POS, PROPRIOCEPTION
from pixelrl.policy import load_policy

DISTANCE_BINS_CM = (0, 5, 10, 20, math.inf)


def main(argv: list[str] | None = None) -> tuple[list[dict], list[dict], dict | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint directory that kept its replay")
    parser.add_argument("--min-height", type=float, default=0.4, help="metres (the table: 0.42)")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--seed", type=int, default=123)
    a = parser.parse_args(argv)
    _, policy = load_policy(a.checkpoint, device="cpu")
    agent = policy.agent
    estimating = hasattr(agent, "estimator")  # the estimate of the achieved goal, to probe
    replay = load_saved_replay(a.checkpoint)
    generator = torch.Generator().manual_seed(a.seed)
    print("| repeat | samples | probe R^2 / median error | estimate R^2 / median error |")
    print("|---|---|---|---|")
    rows, errors, distances = [], [], []
    for repeat in range(a.repeats):
        obs = replay.sample_observations(DIAGNOSTIC_SAMPLES, generator)
        above = obs[ACHIEVED_GOAL][:, 2] >= a.min_height
        if estimating and PROPRIOCEPTION in obs:
            goal = obs[ACHIEVED_GOAL][above]
            estimate = agent.estimate(obs[PIXELS][above])
            errors.append((estimate - goal).norm(dim=-1) * 100)
            gripper = obs[PROPRIOCEPTION][above][:, PROPRIO_GRIP_POS]
            distances.append((gripper - goal).norm(dim=-1) * 100)
        for name, rows_of in (("all", slice(None)), (f">= {a.min_height} m", above)):
            d = encoder_report(agent, {k: v[rows_of] for k, v in obs.items()})
            row = {k: float(v) for k, v in d.items() if k.startswith("probe/")}
            row["samples"] = int(obs[ACHIEVED_GOAL][rows_of].shape[0])
            rows.append(row)
            print(
                f"| {repeat} | {name}: {row['samples']} "
                f"| {row['probe/achieved_goal_r2']:.3f} / "
                f"{row['probe/achieved_goal_median_error_cm']:.2f} cm "
                f"| {row.get('probe/state_estimate_r2', float('nan')):.3f} / "
                f"{row.get('probe/state_estimate_median_error_cm', float('nan')):.2f} cm |"
            )
    bins = error_by_distance(errors, distances, a.min_height)
    moving = None
    if estimating:
        moving = error_while_moving(agent, replay, generator)
    return rows, bins, moving


def error_while_moving(agent, replay, generator, samples=4096, moved_cm=0.5) -> dict | None:
    """Print and return the estimate's median error (cm) at stored steps where the achieved
    goal moved more than `moved_cm` since the step before, against where it is now and where
    it was a step before, and at steps where it did not move.

    In Push the puck is still in most stored steps, so an estimate that reads the whole frame
    stack instead of its newest frame is rarely wrong for it; where the puck moves, such an
    estimate lags, which this shows as a smaller error against the step before."""
    episode, t = replay.sample_indices(samples, generator)
    episode, t = episode[t > 0], t[t > 0]
    now = replay.storage[ACHIEVED_GOAL][episode, t]
    before = replay.storage[ACHIEVED_GOAL][episode, t - 1]
    moved = (now - before).norm(dim=-1) * 100 > moved_cm
    if not moved.any():
        return None
    estimate = agent.estimate(replay.frames_at(episode, t))
    out = {
        "moved_samples": int(moved.sum()),
        "samples": len(t),
        "moved_error_now_cm": float((estimate - now)[moved].norm(dim=-1).median() * 100),
        "moved_error_before_cm": float((estimate - before)[moved].norm(dim=-1).median() * 100),
        "still_error_cm": float((estimate - now)[~moved].norm(dim=-1).median() * 100),
    }
    print(
        f"\nWhere the achieved goal moved more than {moved_cm} cm in the step before "
        f"({out['moved_samples']} of {out['samples']} stored steps), the estimate's median "
        f"error is {out['moved_error_now_cm']:.2f} cm from where it is and "
        f"{out['moved_error_before_cm']:.2f} cm from where it was a step before; where it did "
        f"not move, {out['still_error_cm']:.2f} cm."
    )
    return out


def error_by_distance(errors: list, distances: list, min_height: float) -> list[dict]:
    """Print and return the estimate's error (cm) binned by the gripper's distance (cm)."""
    if not errors:
        return []
    error, distance = torch.cat(errors), torch.cat(distances)
    print(f"\nThe estimate's error by the gripper's distance (achieved goal >= {min_height} m):\n")
    print("| gripper to achieved goal | samples | median error | 90th percentile |")
    print("|---|---|---|---|")
    bins = []
    for near, far in itertools.pairwise(DISTANCE_BINS_CM):
        inside = (distance >= near) & (distance < far)
        if not inside.any():
            continue
        e = error[inside]
        bins.append({"near_cm": near, "far_cm": far, "samples": int(inside.sum()),
                     "median_cm": float(e.median()), "p90_cm": float(e.quantile(0.9))})  # fmt: skip
        span = f"{near}-{far} cm" if far < math.inf else f">= {near} cm"
        print(f"| {span} | {bins[-1]['samples']} | {bins[-1]['median_cm']:.2f} cm "
              f"| {bins[-1]['p90_cm']:.2f} cm |")  # fmt: skip
    return bins


if __name__ == "__main__":
    main()
