"""load_policy: act with a trained run in a few lines, frame stack included."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from test_train import tiny

from pixelrl.build import run_directory
from pixelrl.envs import PIXELS, make_fetch_env
from pixelrl.frame_stack import FrameStack, policy_observation
from pixelrl.policy import load_policy
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
