"""evaluate(): the report's per-episode figures, with a fixed-action policy on no-pixel envs."""

import json

import numpy as np
import pytest

import pixelrl.evaluation as evaluation
from pixelrl.checkpoint import git_commit
from pixelrl.config import EnvConfig, TrainConfig, to_dict
from pixelrl.envs import DESIRED_GOAL


class FixedActionPolicy:
    """Stands in for load_policy's Policy: the same action in every env at every step."""

    checkpoint_step = 0
    run_commit = "a1b2c3d"

    def __init__(self, action, cfg):
        self.action = np.asarray(action, dtype=np.float32)
        self.saved_config = to_dict(cfg)

    def act_batch(self, obs, deterministic=True):
        return np.tile(self.action, (len(obs[DESIRED_GOAL]), 1))

    def reset(self, envs=None):
        pass


def run_evaluation(tmp_path, monkeypatch, env_id, action, episodes=4):
    cfg = TrainConfig(env=EnvConfig(env_id=env_id, n_envs=2, no_pixels=True, vector="sync"))
    monkeypatch.setattr(evaluation, "resolve_checkpoint", lambda path: tmp_path)
    monkeypatch.setattr(
        evaluation,
        "load_policy",
        lambda path, device, true_estimate: (cfg, FixedActionPolicy(action, cfg)),
    )
    args = evaluation.EvalArgs(
        checkpoint=str(tmp_path), episodes=episodes, output=str(tmp_path / "e.json")
    )
    return evaluation.evaluate(args)


def test_a_puck_nobody_touches_has_not_moved_in_any_episode(tmp_path, monkeypatch):
    # Two episodes per env: the second one's start must be its own reset's puck position, not
    # the first episode's (those differ by centimetres).
    report = run_evaluation(tmp_path, monkeypatch, "FetchPush-v4", [0.0, 0.0, 0.0, 0.0])
    moved = [e["achieved_goal_moved"] for e in report["per_episode"]]
    assert len(moved) == 4 and max(moved) < 1e-3
    assert report["mean_achieved_goal_moved"] == pytest.approx(np.mean(moved))


def test_the_report_says_what_ran_and_how_it_was_evaluated(tmp_path, monkeypatch):
    report = run_evaluation(tmp_path, monkeypatch, "FetchReach-v4", [0.0, 0.0, 0.0, 0.0], 2)
    assert report["what_ran"] == {
        "env_id": "FetchReach-v4",
        "obs_mode": "no-pixels",
        "goal_mode": "desired",
        "proprioception": True,
        "frame_stack": 1,
        "encoder": None,  # no image: no encoder, no routing, no estimate
        "encoder_grad": None,
        "state_estimate": None,
        "privileged_critic": False,
    }
    assert report["config"]["env"]["no_pixels"] is True and report["config"]["sac"]["gamma"] == 0.95
    assert report["run_commit"] == "a1b2c3d" and report["eval_commit"] == git_commit()
    assert (report["seed"], report["n_envs"], report["episodes"]) == (10_000, 2, 2)
    assert report["true_estimate"] is False
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["what_ran"] == report["what_ran"]


def test_a_gripper_driven_sideways_has_moved_the_same_distance_in_every_episode(
    tmp_path, monkeypatch
):
    # FetchReach's achieved goal is the gripper; it starts at the same place every episode, so
    # the same action sequence moves it the same distance, and far beyond the 5 cm threshold.
    report = run_evaluation(tmp_path, monkeypatch, "FetchReach-v4", [1.0, 0.0, 0.0, 0.0])
    moved = np.array([e["achieved_goal_moved"] for e in report["per_episode"]])
    assert moved.min() > 0.1
    assert moved == pytest.approx(np.full(4, moved[0]), abs=1e-3)


@pytest.mark.parametrize("env_id", ["FetchPush-v4", "FetchPickAndPlace-v4"])
def test_success_is_split_by_whether_the_goal_is_in_the_air(tmp_path, monkeypatch, env_id):
    # Push's goals lie on the table; half of PickAndPlace's are drawn above it. A policy that
    # never moves succeeds only where the goal happens to lie within 5 cm of the object, so never
    # for a goal more than 5 cm up.
    report = run_evaluation(tmp_path, monkeypatch, env_id, [0.0, 0.0, 0.0, 0.0], episodes=20)
    heights = np.array([e["goal_height"] for e in report["per_episode"]])
    success = np.array([e["success"] for e in report["per_episode"]])
    split = report["success_by_goal_height"]
    in_air = heights >= evaluation.IN_AIR_M
    assert split["on_table"]["episodes"] + split["in_air"]["episodes"] == 20
    assert split["in_air"]["episodes"] == in_air.sum()
    if env_id == "FetchPush-v4":
        assert np.abs(heights).max() < 1e-3 and split["in_air"]["success_rate"] is None
    else:
        assert 3 <= in_air.sum() <= 17 and heights.max() > 0.1 and heights.min() > -1e-3
        assert not success[heights > 0.05].any()
        assert split["in_air"]["success_rate"] == pytest.approx(success[in_air].mean())
    assert split["on_table"]["success_rate"] == pytest.approx(success[~in_air].mean())
