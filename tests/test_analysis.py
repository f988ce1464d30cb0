"""pixelrl.analysis: localize reads a saved replay as training does, probe splits its samples
by height and tells a lagging estimate, contact reads stored episodes oldest first and scores
headings; replay_check is tested beside the replay (tests/test_replay.py)."""

import math

import pytest
import torch

from pixelrl.analysis import contact, localize, probe
from pixelrl.build import build_agent, build_replay, describe_env, load_saved_replay
from pixelrl.checkpoint import save_checkpoint
from pixelrl.config import ConfigError, EnvConfig, ReplayConfig, TrainConfig, to_dict
from pixelrl.envs import ACHIEVED_GOAL, PIXELS, PROPRIOCEPTION
from pixelrl.policy import load_policy


def numbered_replay(cfg: TrainConfig, lengths: list[int]):
    """A replay of len(lengths) episodes whose every entry says which (episode, step) it is:
    frames (episode, step) in channels 0 and 1, achieved goal (episode, step, step / T);
    proprioception zeros (the gripper at the origin). An episode shorter than T terminates."""
    spec, obs_space, action_space = describe_env(cfg.env)
    replay = build_replay(cfg, spec, "cpu")
    T = spec.max_episode_steps

    def obs(episode, step):
        out = {k: torch.zeros((1, *shape)) for k, shape in spec.obs_shapes.items()}
        out[PIXELS] = torch.zeros((1, *spec.obs_shapes[PIXELS]), dtype=torch.uint8)
        out[PIXELS][0, 0], out[PIXELS][0, 1] = episode, step
        out[ACHIEVED_GOAL][0] = torch.tensor([episode, step, step / T])
        return out

    replay.start_episodes(obs(0, 0))
    for episode, length in enumerate(lengths):
        for t in range(length):
            last = t == length - 1
            replay.add(
                torch.zeros((1, spec.action_dim)),
                obs(episode, t + 1),
                terminated=[last and length < T],
                truncated=[last and length == T],
                to_act_on=obs(episode + 1, 0) if last else None,
            )
    return replay, spec, obs_space, action_space


def tiny_reach(buffer_size: int) -> TrainConfig:
    return TrainConfig(
        env=EnvConfig(env_id="FetchReach-v4", n_envs=1, image_size=48),
        replay=ReplayConfig(buffer_size=buffer_size),
    )


@pytest.fixture
def saved_run(tmp_path):
    """A checkpoint with an untrained agent and the `numbered_replay` of 10 whole episodes."""
    cfg = tiny_reach(1000)
    replay, spec, obs_space, action_space = numbered_replay(cfg, [50] * 10)
    agent = build_agent(cfg, spec, obs_space, action_space, torch.device("cpu"))
    meta = {"config": to_dict(cfg)}
    return cfg, save_checkpoint(tmp_path, 500, {"agent": agent.state()}, meta, replay=replay)


def test_localize_reads_a_checkpoints_replay_as_training_gathers_it(saved_run, tmp_path):
    """pixelrl.analysis.localize: each frame stack comes with the achieved goal of its last frame,
    and the held-out episodes never reach the training batches."""
    cfg, checkpoint = saved_run
    loaded = load_saved_replay(checkpoint)
    generator = torch.Generator().manual_seed(0)
    for first, last in ((0, 8), (8, 10)):
        frames, goals = localize.draw(loaded, first, last, 256, generator)
        assert frames.shape == (256, 3 * cfg.env.frame_stack, 48, 48)
        newest = frames[:, -3:, 0, 0].float()  # the stack's last frame, channels 0 and 1
        assert torch.equal(newest[:, :2], goals[:, :2])
        assert set(goals[:, 0].long().tolist()) == set(range(first, last))

    curve = localize.main([str(checkpoint), "--steps", "250", "--batch-size", "4"])
    assert len(curve) == 1 and math.isfinite(curve[0][2])
    # Heights are step / 50: the held-out steps from the third on are more than 5 cm up.
    lifted = localize.draw_lifted(loaded, 8, 10, 1000, generator)
    assert len(lifted[1]) == 2 * 47 and bool((lifted[1][:, 2] > 0.05).all())
    assert lifted[1][:, 0].long().unique().tolist() == [8, 9]
    assert torch.equal(lifted[0][:, 1, 0, 0].float(), lifted[1][:, 1])  # each frame its own step
    assert math.isfinite(curve[0][3])
    assert localize.draw_lifted(loaded, 8, 10, 10, generator)[1].shape == (10, 3)
    with pytest.raises(SystemExit, match="--episodes"):
        localize.main([str(checkpoint), "--episodes", "1", "--steps", "0"])
    with pytest.raises(ConfigError, match="kept no replay"):
        load_saved_replay(save_checkpoint(tmp_path, 600, {}, {"config": to_dict(cfg)}))


def test_probe_splits_the_samples_by_height(saved_run):
    """pixelrl.analysis.probe: the second row of each repeat holds exactly the samples whose
    achieved goal is at least --min-height high, the first row all of them."""
    _, checkpoint = saved_run
    rows, bins, _ = probe.main([str(checkpoint), "--min-height", "0.5", "--repeats", "2"])
    assert len(rows) == 4 and all(row["samples"] == 512 for row in rows[::2])
    # Heights are step / 50 for steps 0..49 drawn uniformly: about half are >= 0.5.
    assert all(200 < row["samples"] < 312 for row in rows[1::2])
    assert all("probe/state_estimate_r2" in row for row in rows)
    # The gripper (proprioception: zeros) is |(episode, step, step / 50)| m away: far.
    assert [b["near_cm"] for b in bins] == [20]
    assert bins[0]["samples"] == rows[1]["samples"] + rows[3]["samples"]


def test_contact_reads_the_episodes_oldest_first_by_the_steps_at_which_they_ended(saved_run):
    """pixelrl.analysis.contact: per window, the episodes that ended in it. The gripper sits at
    the origin and episode e's achieved goal starts at (e, 0, 0), so its closest approach is
    e metres: each window's median names its episodes."""
    _, checkpoint = saved_run
    rows, headings = contact.main([str(checkpoint), "--window", "100"])
    assert [(r["from"], r["to"], r["episodes"]) for r in rows] == [
        (start, start + 100, 2) for start in range(0, 500, 100)
    ]
    assert [r["closest_median"] for r in rows] == pytest.approx([0.5, 2.5, 4.5, 6.5, 8.5])
    # Every achieved goal moved (from (e, 0, 0) to (e, 50, 1)) and none is near the zero goal.
    assert all(r["moved"] == 1.0 and r["success"] == 0.0 for r in rows)
    assert headings == []


def test_contact_starts_a_full_ring_at_its_oldest_episode_and_stops_each_at_its_end(tmp_path):
    """Room for 4 episodes, 6 written: episodes 2..5 remain, the oldest in the ring's second
    slot. Episode 3 terminates after 30 steps; what its slot holds past that is not its own."""
    cfg = tiny_reach(200)
    replay, *_ = numbered_replay(cfg, [50, 50, 50, 30, 50, 50])
    assert replay.next_slot == 2 and replay.host_lengths[3] == 30
    replay.storage[ACHIEVED_GOAL][3, 31:] = 0.0  # on the gripper: read, it would be closest
    checkpoint = save_checkpoint(tmp_path, 280, {}, {"config": to_dict(cfg)}, replay=replay)
    episodes = contact.episodes_oldest_first(checkpoint)
    assert episodes["ended"].tolist() == [150, 180, 230, 280]
    assert episodes["closest"] == pytest.approx([2, 3, 4, 5])
    final = [(2, 50, 1), (3, 30, 0.6), (4, 50, 1), (5, 50, 1)]  # the desired goal: zeros
    assert episodes["final_distance"] == pytest.approx([math.dist(f, (0, 0, 0)) for f in final])
    moved = [math.dist(f, (f[0], 0, 0)) for f in final]
    assert episodes["achieved_goal_moved"] == pytest.approx(moved)


def test_contact_reads_how_high_the_goal_rose_and_the_stored_estimates_error(tmp_path):
    """Episode e's achieved goal rises from (e, 0, 0) to (e, 50, 1), more than 5 cm above its
    start from its fourth step on; episode 3 terminates after 30 steps (its slot past that set
    far up: never read). Estimates of zero are |(e, s, s / 50)| off, written for episodes 0-2:
    episode 3's were not yet written."""
    import numpy as np

    cfg = tiny_reach(1000)
    replay, *_ = numbered_replay(cfg, [50, 50, 50, 30])
    replay.storage[ACHIEVED_GOAL][3, 31:, 2] = 5.0
    replay.write_estimates(np.arange(3), lambda frames: torch.zeros(len(frames), 3), 150)
    checkpoint = save_checkpoint(tmp_path, 180, {}, {"config": to_dict(cfg)}, replay=replay)
    episodes = contact.episodes_oldest_first(checkpoint)
    assert episodes["lift"] == pytest.approx([1.0, 1.0, 1.0, 0.6])
    rows = contact.window_rows(episodes, 100)
    assert [(r["episodes"], r["lifted"]) for r in rows] == [(2, 1.0), (2, 1.0)]

    def error_cm(episodes, steps):
        return [100 * math.dist((e, s, s / 50), (0, 0, 0)) for e in episodes for s in steps]

    low, lifted = range(3), range(3, 51)  # heights 0, 2 and 4 cm; 6 cm and up
    assert rows[0]["estimate_low_cm"] == pytest.approx(np.median(error_cm([0, 1], low)))
    assert rows[0]["estimate_lifted_cm"] == pytest.approx(np.median(error_cm([0, 1], lifted)))
    assert rows[1]["estimate_low_cm"] == pytest.approx(np.median(error_cm([2], low)))
    assert rows[1]["estimate_lifted_cm"] == pytest.approx(np.median(error_cm([2], lifted)))


def test_contact_measures_the_heading_of_the_policys_actions(saved_run):
    gripper_to_goal = torch.tensor([[0.0, 2.0, -1.0], [3.0, 0.0, -1.0]])
    obs = {ACHIEVED_GOAL: gripper_to_goal, PROPRIOCEPTION: torch.zeros(2, 10)}

    class Heading:
        def __init__(self, sign):
            self.sign = sign

        def act(self, obs, deterministic):
            gripper_action = torch.ones(2, 1)  # the 4th action dimension: not a direction
            return torch.cat([self.sign * obs[ACHIEVED_GOAL], gripper_action], dim=-1)

    # Against another state's direction the two are at right angles: 0.
    expected = {"cos": 1.0, "cos_shuffled": 0.0}
    with pytest.MonkeyPatch.context() as patch:  # an agent that reads no state estimate
        patch.setattr(contact, "actions_with_the_true_goal", lambda agent, obs: None)
        assert contact.heading_to_goal(Heading(+1), obs) == pytest.approx(expected)
        expected = {"cos": -1.0, "cos_shuffled": 0.0}
        assert contact.heading_to_goal(Heading(-1), obs) == pytest.approx(expected)
    # Through the script: an untrained agent on the stored states above 0.5 m, which are
    # those of steps 25..49 of each episode: half of the 2,048 drawn, give or take.
    _, checkpoint = saved_run
    argv = [str(checkpoint), "--policies", str(checkpoint), "--min-height", "0.5"]
    _, headings = contact.main(argv)
    assert len(headings) == 1 and 900 < headings[0]["states"] < 1150
    assert -1.0 <= headings[0]["cos"] <= 1.0
    # The default agent reads the state estimate; given the true achieved goal there, its
    # action differs (an untrained estimator's estimate is not the goal).
    assert "cos_true_goal" in headings[0] and headings[0]["cos_true_goal"] != headings[0]["cos"]


def test_contact_gives_the_actor_the_true_goal_where_it_reads_the_estimate(saved_run):
    """With an estimator that returns the achieved goal exactly, the actions with the true goal
    are the agent's own actions; with one that does not, they differ."""
    _, checkpoint = saved_run
    _, policy = load_policy(checkpoint, "cpu")
    agent = policy.agent
    obs = load_saved_replay(checkpoint).sample_observations(64, torch.Generator().manual_seed(0))
    with torch.no_grad():
        with_true_goal = contact.actions_with_the_true_goal(agent, obs)
        agent.estimate = lambda pixels: obs[ACHIEVED_GOAL]  # an exact estimator
        assert torch.allclose(agent.act(obs, deterministic=True), with_true_goal)
        agent.estimate = lambda pixels: obs[ACHIEVED_GOAL] + 0.1  # one that is off by 17 cm
        assert not torch.allclose(agent.act(obs, deterministic=True), with_true_goal)


def test_probe_tells_an_estimate_that_lags_one_step(saved_run):
    """An estimate that returns the achieved goal of the step before: 0 cm from where it was,
    and |(0, 1, 1/50)| m from where it is (the numbered replay moves it every step)."""
    _, checkpoint = saved_run
    replay = load_saved_replay(checkpoint)
    _, policy = load_policy(checkpoint, "cpu")

    def lagging_estimate(pixels):
        episode, step = pixels[:, -3, 0, 0].long(), pixels[:, -2, 0, 0].long()
        return replay.storage[ACHIEVED_GOAL][episode % replay.capacity, step - 1]

    policy.agent.estimate = lagging_estimate
    out = probe.error_while_moving(policy.agent, replay, torch.Generator().manual_seed(0))
    assert out["moved_samples"] == out["samples"] > 3800  # every step moves; step 0 is skipped
    assert out["moved_error_before_cm"] == 0.0
    assert out["moved_error_now_cm"] == pytest.approx(100 * math.hypot(1, 1 / 50))


def test_contact_hands_a_policy_that_stacks_fewer_frames_the_newest():
    frames = torch.arange(4).repeat_interleave(3).view(1, 12, 1, 1).expand(2, 12, 2, 2)
    obs = {PIXELS: frames, ACHIEVED_GOAL: torch.zeros(2, 3)}
    newest = contact.newest_frames(obs, 1)[PIXELS]
    assert newest.shape == (2, 3, 2, 2) and bool((newest == 3).all())
    assert torch.equal(contact.newest_frames(obs, 4)[PIXELS], frames)
    with pytest.raises(SystemExit, match="stacks 5 frames"):
        contact.newest_frames(obs, 5)


def test_heights_scripted_controller_lifts_the_object_to_goals_in_the_air():
    # The frames of a lifted object come from this controller: it must grasp and carry, as
    # the env's own success test says, and reach goals in the air.
    from dataclasses import replace

    from pixelrl.analysis.heights import scripted_action
    from pixelrl.envs import DESIRED_GOAL, make_fetch_env

    env = make_fetch_env(replace(EnvConfig(), env_id="FetchPickAndPlace-v4", no_pixels=True))
    successes, lifts = [], []
    try:
        for seed in range(6):
            obs, _ = env.reset(seed=seed)
            table_z, lift, done = obs[ACHIEVED_GOAL][2], 0.0, False
            phase = {"name": "above", "closed_for": 0}
            while not done:
                action = scripted_action(
                    phase, obs[PROPRIOCEPTION][:3], obs[ACHIEVED_GOAL], obs[DESIRED_GOAL]
                )
                obs, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                lift = max(lift, obs[ACHIEVED_GOAL][2] - table_z)
            successes.append(info["is_success"])
            lifts.append(lift)
    finally:
        env.close()
    assert all(successes)
    assert max(lifts) > 0.10  # seeds 1-5 include goals 12-37 cm up


def test_heights_error_by_height_bands_the_held_out_frames():
    import numpy as np

    from pixelrl.analysis.heights import error_by_height

    heights = np.array([0.0, 0.01, 0.05, 0.15, 0.15, 0.45])
    error = np.array([1.0, 3.0, 2.0, 4.0, 6.0, 9.0])
    bands = error_by_height(error, heights)
    assert [b["frames"] for b in bands] == [2, 1, 2, 0, 1]
    assert [b["median_error_cm"] for b in bands] == [2.0, 2.0, 5.0, None, 9.0]


def test_heights_writes_a_frame_grid_and_the_error_by_height(tmp_path):
    import json

    from PIL import Image

    from pixelrl.analysis import heights

    out = tmp_path / "frames"
    args = ["--episodes", "5", "--steps", "2", "--batch-size", "8", "--image-size", "40"]
    result = heights.main([*args, "--grid-rows", "1", "--out", str(out)])
    grid = Image.open(out / "grid.png")
    assert grid.size == (40 * 3 * len(heights.GRID_HEIGHTS_M), 40 * 3 + 12)
    saved = json.loads((out / "heights.json").read_text())
    assert saved["by_height"] == result["by_height"]
    assert sum(b["frames"] for b in saved["by_height"]) == 50  # the held-out episode's steps


def test_heights_refuses_episodes_it_cannot_split_before_rendering(tmp_path):
    from pixelrl.analysis import heights

    with pytest.raises(SystemExit, match="--episodes: 1 episodes"):
        heights.main(["--episodes", "1", "--out", str(tmp_path / "frames")])
    assert not (tmp_path / "frames").exists()  # nothing rendered, nothing written


def test_heights_scores_a_runs_own_estimator_by_the_objects_height(tmp_path, monkeypatch):
    # The run's estimator says the same position c for every frame (its head's last layer set
    # so); with the object h metres above c, its error is exactly h: the bands must hold the
    # saved estimator's answer, in centimetres, by height above the table.
    import numpy as np

    from pixelrl.analysis import heights

    cfg = TrainConfig(
        env=EnvConfig(env_id="FetchPickAndPlace-v4", n_envs=1, image_size=40, goal_mode="desired")
    )
    spec, obs_space, action_space = describe_env(cfg.env)
    agent = build_agent(cfg, spec, obs_space, action_space, torch.device("cpu"))
    last_layer = agent.estimator.head[-1]
    with torch.no_grad():
        last_layer.weight.zero_()
        last_layer.bias.copy_(torch.tensor([0.3, -0.2, 0.5]))
    c = agent.estimate(torch.zeros((1, 3, 40, 40), dtype=torch.uint8))[0].numpy()
    checkpoint = save_checkpoint(tmp_path / "run", 700, {"agent": agent.state()},
                                 {"config": to_dict(cfg)})  # fmt: skip
    lift = np.array([0.0, 0.01, 0.05, 0.15, 0.25, 0.35])  # one per band but the first twice
    goals = np.tile(c, (2, 6, 1)) + np.stack([np.zeros_like(lift)] * 2 + [lift], -1)[None]
    rendered = {
        PIXELS: np.zeros((2, 6, 3, 40, 40), np.uint8),
        ACHIEVED_GOAL: goals.astype(np.float32),
        "table_z": float(c[2]),
    }
    monkeypatch.setattr(heights, "collect", lambda env_cfg, episodes, seed: rendered)
    result = heights.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "h")])
    assert result["checkpoint_step"] == 700 and result["run_env"]["image_size"] == 40
    assert [b["frames"] for b in result["by_height"]] == [4, 2, 2, 2, 2]
    assert [b["median_error_cm"] for b in result["by_height"]] == pytest.approx(
        [0.5, 5.0, 15.0, 25.0, 35.0], abs=0.01
    )

    no_pixels = TrainConfig(env=EnvConfig(env_id="FetchPickAndPlace-v4", no_pixels=True))
    spec, obs_space, action_space = describe_env(no_pixels.env)
    agent = build_agent(no_pixels, spec, obs_space, action_space, torch.device("cpu"))
    state_only = save_checkpoint(tmp_path / "state", 700, {"agent": agent.state()},
                                 {"config": to_dict(no_pixels)})  # fmt: skip
    with pytest.raises(SystemExit, match="--checkpoint .*no state estimator"):
        heights.main(["--checkpoint", str(state_only), "--out", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()
