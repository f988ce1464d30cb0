"""The env layer against real MuJoCo + EGL rendering."""

import os

import mujoco
import numpy as np
import pytest
import torch

from pixelrl.config import ConfigError, EnvConfig
from pixelrl.envs import (
    ACHIEVED_GOAL,
    DESIRED_GOAL,
    PIXELS,
    PROPRIOCEPTION,
    STATE,
    FetchObservation,
    make_fetch_env,
    policy_keys,
    proprioception_indices,
)
from pixelrl.frame_stack import FrameStack
from pixelrl.vector_env import FetchVectorEnv, env_seed


def _raw_obs(env: FetchObservation) -> dict:
    return env.unwrapped._get_obs()


@pytest.mark.parametrize("env_id", ["FetchPush-v4", "FetchReach-v4"])
def test_pixel_mode_keys_shapes_dtypes_ranges(env_id):
    env = make_fetch_env(EnvConfig(env_id=env_id))
    obs, _ = env.reset(seed=0)
    assert list(obs) == [PIXELS, PROPRIOCEPTION, ACHIEVED_GOAL, DESIRED_GOAL]
    assert obs[PIXELS].shape == (3, 84, 84) and obs[PIXELS].dtype == np.uint8
    assert obs[PROPRIOCEPTION].shape == (10,) and obs[PROPRIOCEPTION].dtype == np.float32
    assert obs[ACHIEVED_GOAL].shape == (3,) and obs[DESIRED_GOAL].dtype == np.float32
    # A real image: not constant, spans a range of intensities.
    assert obs[PIXELS].std() > 10 and obs[PIXELS].max() > 100
    assert env.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    assert reward in (0.0, -1.0) and "is_success" in info
    env.close()


def test_full_state_and_no_pixels_modes():
    full = make_fetch_env(EnvConfig(full_state=True))
    obs, _ = full.reset(seed=1)
    assert list(obs) == [STATE, ACHIEVED_GOAL, DESIRED_GOAL]
    np.testing.assert_allclose(obs[STATE], _raw_obs(full)[STATE].astype(np.float32))
    assert obs[STATE].shape == (25,) and obs[STATE].dtype == np.float32
    vec = make_fetch_env(EnvConfig(no_pixels=True))
    obs, _ = vec.reset(seed=1)
    assert list(obs) == [PROPRIOCEPTION, ACHIEVED_GOAL, DESIRED_GOAL]
    assert vec.unwrapped.render_mode is None  # no renderer at all without pixels


def test_no_proprioception_leaves_pixels_and_goals():
    env = make_fetch_env(EnvConfig(env_id="FetchReach-v4", proprioception=False))
    obs, _ = env.reset(seed=2)
    assert list(obs) == [PIXELS, ACHIEVED_GOAL, DESIRED_GOAL]
    assert env.observation_space.contains(obs)
    keys = policy_keys(list(obs), "desired")
    assert keys == [PIXELS, DESIRED_GOAL]  # the gripper's position must come from the image
    env.close()


@pytest.mark.parametrize("env_id", ["FetchPush-v4", "FetchReach-v4", "FetchPickAndPlace-v4"])
def test_proprioception_is_robot_only_indices(env_id):
    env = make_fetch_env(EnvConfig(env_id=env_id, no_pixels=True))
    env.reset(seed=3)
    idx = proprioception_indices(bool(env.unwrapped.has_object))
    rng = np.random.default_rng(0)
    for _ in range(20):
        obs, *_ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        raw = _raw_obs(env)[STATE]
        np.testing.assert_allclose(obs[PROPRIOCEPTION], raw[idx].astype(np.float32))
    if env.unwrapped.has_object:
        np.testing.assert_array_equal(idx, np.r_[0:3, 9:11, 20:23, 23:25])


def test_proprioception_follows_gripper_not_object():
    env = make_fetch_env(EnvConfig(no_pixels=True))
    obs0, _ = env.reset(seed=5)
    base = env.unwrapped
    # Gripper moves up, away from the puck on the table: proprioception changes, the object not.
    for _ in range(5):
        obs1, *_ = env.step(np.array([0.0, 0.0, 1.0, 0.0], np.float32))
    assert np.abs(obs1[PROPRIOCEPTION][:3] - obs0[PROPRIOCEPTION][:3]).max() > 0.01
    np.testing.assert_allclose(obs1[ACHIEVED_GOAL], obs0[ACHIEVED_GOAL], atol=1e-4)
    # Teleport the object: the raw state and achieved goal change, proprioception does not.
    qpos = base._utils.get_joint_qpos(base.model, base.data, "object0:joint").copy()
    qpos[:2] += 0.1
    base._utils.set_joint_qpos(base.model, base.data, "object0:joint", qpos)
    mujoco.mj_forward(base.model, base.data)
    moved = env.observe(_raw_obs(env))
    np.testing.assert_allclose(moved[PROPRIOCEPTION], obs1[PROPRIOCEPTION], atol=1e-6)
    assert np.abs(moved[ACHIEVED_GOAL] - obs1[ACHIEVED_GOAL]).max() > 0.05


def _move_goal_and_render(env: FetchObservation, offset) -> tuple[np.ndarray, np.ndarray]:
    before = env.render_frame().astype(int)
    env.unwrapped.goal = env.unwrapped.goal + np.asarray(offset)
    after = env.render_frame().astype(int)
    return before, after


def test_goal_marker_hidden_by_default_and_shown_with_flag():
    offset = [0.0, 0.12, 0.0]  # stays on the table, in view of the default camera
    hidden = make_fetch_env(EnvConfig(image_size=128))
    hidden.reset(seed=2)
    before, after = _move_goal_and_render(hidden, offset)
    np.testing.assert_array_equal(before, after)  # the goal is nowhere in the image

    shown = make_fetch_env(EnvConfig(image_size=128, show_goal=True))
    shown.reset(seed=2)
    shown_before, shown_after = _move_goal_and_render(shown, offset)
    moved = np.abs(shown_before - shown_after).sum(0) > 0
    assert moved.sum() > 0  # the marker left one place and appeared at another
    assert moved.mean() < 0.01  # and nothing else in the image changed
    # Same state, same goal: the two images differ exactly where the marker is drawn.
    diff = np.abs(shown_after - after).sum(0) > 0
    assert diff.sum() > 0 and diff.mean() < 0.01
    assert (diff & moved).sum() > 0


def test_resize_render_path_and_named_camera():
    env = make_fetch_env(EnvConfig(native_render=False))  # 480x480, resized to 84
    obs, _ = env.reset(seed=0)
    assert obs[PIXELS].shape == (3, 84, 84) and obs[PIXELS].std() > 10
    cam = make_fetch_env(EnvConfig(camera="head_camera_rgb"))
    obs_cam, _ = cam.reset(seed=0)
    native = make_fetch_env(EnvConfig())
    obs_native, _ = native.reset(seed=0)
    assert not np.array_equal(obs_cam[PIXELS], obs_native[PIXELS])
    with pytest.raises(ConfigError, match="--camera 'nope'.*head_camera_rgb"):
        make_fetch_env(EnvConfig(camera="nope"))


def _single_env_rollout(cfg: EnvConfig, seed: int, actions: np.ndarray):
    """Reference: one env stepped by hand, reset without a seed when an episode ends."""
    env = make_fetch_env(cfg)
    obs, _ = env.reset(seed=seed)
    firsts, nexts, dones = [obs], [], []
    for action in actions:
        nxt, _, terminated, truncated, _ = env.step(action)
        nexts.append(nxt)
        dones.append(terminated or truncated)
        if dones[-1]:
            nxt, _ = env.reset()
        firsts.append(nxt)
    env.close()
    return firsts, nexts, dones


def test_vector_env_matches_single_envs_and_respects_episode_boundary():
    cfg = EnvConfig(n_envs=2, vector="async")
    steps = 53  # crosses the 50-step boundary
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, 2, 4)).astype(np.float32)
    with FetchVectorEnv(cfg, seed=10) as venv:
        obs = venv.reset()
        vec_obs, vec_next, vec_done = [obs], [], []
        for t in range(steps):
            step = venv.step(actions[t])
            vec_obs.append(step.to_act_on)
            vec_next.append(step.next_obs)
            vec_done.append(step.done)
    for i in range(2):
        firsts, nexts, dones = _single_env_rollout(cfg, env_seed(10, i), actions[:, i])
        for t in range(steps):
            assert bool(vec_done[t][i]) == dones[t]
            for key in firsts[0]:
                np.testing.assert_array_equal(vec_next[t][key][i], nexts[t][key], err_msg=key)
                np.testing.assert_array_equal(vec_obs[t + 1][key][i], firsts[t + 1][key])
    # The boundary, explicitly: the 50th step truncates; its next_obs is the episode's final
    # frame (continuous with step 49), while obs is a new episode with a new goal.
    done_steps = [t for t in range(steps) if vec_done[t].any()]
    assert done_steps == [49]
    final, restart = vec_next[49], vec_obs[50]
    np.testing.assert_array_equal(final[DESIRED_GOAL], vec_obs[49][DESIRED_GOAL])
    assert not np.allclose(restart[DESIRED_GOAL], final[DESIRED_GOAL])
    assert not np.array_equal(restart[PIXELS], final[PIXELS])
    # The step after the boundary is a real transition of the new episode, not a reset step.
    assert not np.array_equal(vec_next[50][PROPRIOCEPTION], restart[PROPRIOCEPTION])


def test_sync_vector_env_reports_success_at_episode_end():
    cfg = EnvConfig(env_id="FetchReach-v4", no_pixels=True, n_envs=2, vector="sync")
    with FetchVectorEnv(cfg, seed=0) as venv:
        obs = venv.reset()
        for _ in range(50):
            # A greedy controller toward the goal solves Reach.
            delta = obs[DESIRED_GOAL] - obs[ACHIEVED_GOAL]
            action = np.concatenate([np.clip(delta * 10, -1, 1), np.zeros((2, 1))], 1)
            step = venv.step(action.astype(np.float32))
            obs = step.to_act_on
        assert step.done.all() and step.is_success.all()


def test_frame_stack_repeats_first_frame_and_keeps_newest_last():
    n, k = 3, 4
    stack = FrameStack(n, k, (3, 8, 8), device="cpu")
    first = torch.randint(0, 255, (n, 3, 8, 8), dtype=torch.uint8)
    stack.reset(first)
    stacked = stack.stacked()
    assert stacked.shape == (n, 3 * k, 8, 8)
    for slot in range(k):
        assert torch.equal(stacked[:, 3 * slot : 3 * slot + 3], first)
    second = first + 1
    stack.push(second)
    assert torch.equal(stack.stacked()[:, -3:], second)
    assert torch.equal(stack.stacked()[:, -6:-3], first)
    # Env 1 starts a new episode: its whole stack is its new first frame.
    third = first + 2
    stack.push(third, new_episode=np.array([False, True, False]))
    assert torch.equal(stack.stacked()[1], third[1].repeat(k, 1, 1))
    assert torch.equal(stack.stacked()[0, -6:-3], second[0])


def test_policy_keys_follow_goal_mode():
    keys = [PIXELS, PROPRIOCEPTION, ACHIEVED_GOAL, DESIRED_GOAL]
    assert policy_keys(keys, "both") == keys
    assert policy_keys(keys, "desired") == [PIXELS, PROPRIOCEPTION, DESIRED_GOAL]
    assert policy_keys(keys, "none") == [PIXELS, PROPRIOCEPTION]


@pytest.mark.parametrize(
    "cfg, message",
    [
        (EnvConfig(env_id="FetchFly-v9"), r"--env-id 'FetchFly-v9'.*FetchPush-v4"),
        (EnvConfig(env_id="HalfCheetah-v5"), r"--env-id"),
        (EnvConfig(goal_mode="sideways"), r"--goal-mode 'sideways'.*none, desired, both"),
        (EnvConfig(full_state=True, no_pixels=True), r"--full-state and --no-pixels"),
        (EnvConfig(image_size=16), r"--image-size 16: must be >= 32"),
        (EnvConfig(full_state=True, proprioception=False), r"--no-proprioception needs"),
        (EnvConfig(no_pixels=True, proprioception=False), r"goals only"),
    ],
)
def test_bad_config_is_a_clear_error(cfg, message):
    with pytest.raises(ConfigError, match=message):
        make_fetch_env(cfg)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_render_failure_names_osmesa(monkeypatch):
    env = make_fetch_env(EnvConfig())
    monkeypatch.setitem(os.environ, "MUJOCO_GL", "no-such-backend")
    with pytest.raises(RuntimeError, match="osmesa"):
        env.reset(seed=0)


def test_saved_sim_states_restore_the_same_episode_continuation():
    """get_states / set_states: a fresh vector env continues exactly, across a boundary."""
    cfg = EnvConfig(n_envs=2, vector="async")
    actions = np.random.default_rng(1).uniform(-1, 1, (100, 2, 4)).astype(np.float32)
    with FetchVectorEnv(cfg, seed=0) as venv:
        venv.reset()
        for t in range(30):
            step = venv.step(actions[t])
        states, obs_at_save = venv.get_states(), step.to_act_on
        reference = [venv.step(actions[t]) for t in range(30, 80)]
    with FetchVectorEnv(cfg, seed=99) as restored:
        obs = restored.set_states(states)
        for key in obs:
            np.testing.assert_array_equal(obs[key], obs_at_save[key], err_msg=key)
        for t, ref in zip(range(30, 80), reference, strict=True):
            step = restored.step(actions[t])
            assert np.array_equal(step.done, ref.done)
            for key in step.to_act_on:
                np.testing.assert_array_equal(step.next_obs[key], ref.next_obs[key])
                np.testing.assert_array_equal(step.to_act_on[key], ref.to_act_on[key])
    assert any(r.done.any() for r in reference)  # the continuation crossed an episode end
