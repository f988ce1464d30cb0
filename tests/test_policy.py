"""load_policy: act with a trained run in a few lines, frame stack included."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from test_estimator import agent_for
from test_train import tiny

from pixelrl.build import run_directory
from pixelrl.config import ConfigError, EnvConfig, TrainConfig
from pixelrl.envs import ACHIEVED_GOAL, PIXELS, STATE_ESTIMATE, make_fetch_env
from pixelrl.frame_stack import FrameStack, policy_observation
from pixelrl.policy import Policy, load_policy
from pixelrl.trainer import Trainer


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    cfg = tiny(tmp_path_factory.mktemp("runs"), total_steps=120, checkpoint_freq=1000)
    cfg = replace(cfg, env=replace(cfg.env, frame_stack=4))  # stacks to check
    assert Trainer(cfg).run() == 0
    return cfg


def test_policy_acts_on_one_env_like_the_agent_on_its_stack(trained_run):
    cfg, policy = load_policy(run_directory(trained_run), device="cpu")
    assert cfg.env == trained_run.env and policy.checkpoint_step == 120
    env = make_fetch_env(cfg.env)
    obs, _ = env.reset(seed=3)
    stack = FrameStack(1, cfg.env.frame_stack, obs[PIXELS].shape, torch.device("cpu"))
    stack.reset(torch.from_numpy(obs[PIXELS])[None])
    for t in range(6):
        action = policy.act(obs, deterministic=True)
        batch = {k: np.asarray(v)[None] for k, v in obs.items()}
        expected = policy.agent.act(policy_observation(batch, stack, "cpu"), deterministic=True)
        assert action.shape == (4,) and np.allclose(action, expected[0].numpy())
        if t == 2:  # a new episode: the policy's stack must restart like the reference's
            obs, _ = env.reset(seed=4)
            policy.reset()
            stack.reset(torch.from_numpy(obs[PIXELS])[None])
            continue
        obs, *_ = env.step(action)
        stack.push(torch.from_numpy(obs[PIXELS])[None])
    env.close()


def test_policy_stack_holds_the_last_frames_and_restarts_per_env(trained_run):
    _, policy = load_policy(run_directory(trained_run), device="cpu")
    env = make_fetch_env(trained_run.env)
    first, _ = env.reset(seed=0)
    second, *_ = env.step(np.zeros(4, np.float32))
    both = {k: np.stack([first[k], second[k]]) for k in first}
    policy.act_batch(both)
    assert torch.equal(policy.stack.frames[1, 0], torch.from_numpy(second[PIXELS]))
    swapped = {k: np.stack([second[k], first[k]]) for k in first}
    policy.reset(np.array([1]))  # env 1 starts a new episode, env 0 goes on
    policy.act_batch(swapped)
    frames = policy.stack.frames
    assert torch.equal(frames[0, -1], torch.from_numpy(second[PIXELS]))
    assert torch.equal(frames[0, -2], torch.from_numpy(first[PIXELS]))
    assert all(torch.equal(frames[1, i], torch.from_numpy(first[PIXELS])) for i in range(4))
    with pytest.raises(ValueError, match="3 observations for a policy acting for 2"):
        policy.act_batch({k: np.stack([first[k]] * 3) for k in first})
    env.close()


def test_true_estimate_hands_the_actor_the_true_achieved_goal(trained_run):
    # The run's actor reads the state estimator's estimate; with true_estimate it reads the
    # observation's achieved goal in its place, so moving only that moves the action.
    _, policy = load_policy(run_directory(trained_run), device="cpu", true_estimate=True)
    _, plain = load_policy(run_directory(trained_run), device="cpu")
    env = make_fetch_env(trained_run.env)
    obs, _ = env.reset(seed=5)
    moved = {**obs, ACHIEVED_GOAL: obs[ACHIEVED_GOAL] + np.float32(0.2)}
    action = policy.act(obs)
    batch = {k: np.asarray(v)[None] for k, v in obs.items()}
    vectors = policy_observation(batch, policy.stack, "cpu")
    truth = torch.from_numpy(obs[ACHIEVED_GOAL])[None]
    expected = policy.agent.sac.act({**vectors, STATE_ESTIMATE: truth}, deterministic=True)
    assert np.allclose(action, expected[0].numpy())
    assert not np.allclose(policy.act(moved), action, atol=1e-4)
    assert np.allclose(plain.act(moved), plain.act(obs))  # the estimate reads the image alone
    assert not np.allclose(plain.act(obs), action, atol=1e-4)
    env.close()


def test_true_estimate_refuses_a_run_without_the_estimator():
    agent = agent_for(TrainConfig(env=EnvConfig(no_pixels=True)))
    with pytest.raises(ConfigError, match="--true-estimate: this run has no state estimator"):
        Policy(agent, 1, torch.device("cpu"), true_estimate=True)
