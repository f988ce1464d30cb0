"""A trained policy from a run or checkpoint directory, ready to act (SB3's load + predict).

    from pixelrl.policy import load_policy
    from pixelrl.envs import make_fetch_env

    cfg, policy = load_policy("runs/manip/seed0")          # the run's latest checkpoint
    env = make_fetch_env(cfg.env)
    obs, _ = env.reset(seed=0)
    done = False
    while not done:
        action = policy.act(obs, deterministic=True)       # keeps its own frame stack
        obs, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    policy.reset()                                         # before the next episode

The policy carries what acting needs and nothing else: the agent's networks with their input
normalization statistics, and a frame stack per env that starts each episode with copies of
its first frame, exactly as in training.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from pixelrl.agents.estimator import EstimatorAgent
from pixelrl.build import build_agent, describe_env, resolve_device
from pixelrl.checkpoint import load_checkpoint, resolve_checkpoint
from pixelrl.compat import agent_weights, config_to_evaluate
from pixelrl.config import ConfigError, TrainConfig
from pixelrl.envs import ACHIEVED_GOAL, PIXELS
from pixelrl.frame_stack import FrameStack, policy_observation
from pixelrl.transfer import to_device, to_host


class Policy:
    """Acts with a trained agent and keeps each env's frame stack.

    `act` takes one env's observation, `act_batch` N envs' stacked ones; the number of envs
    is fixed by the first call (until `reset()`). `true_estimate` (an agent with the state
    estimator only): the actor reads the observation's true achieved goal where it reads the
    estimate, to measure what the estimate's error costs the policy.
    """

    def __init__(self, agent, frame_stack: int, device: torch.device, true_estimate: bool = False):
        if true_estimate and not isinstance(agent, EstimatorAgent):
            raise ConfigError(
                "--true-estimate: this run has no state estimator (its actor reads no "
                "estimate); it applies to a pixel run with --encoder-grad estimator"
            )
        self.agent = agent.eval()
        self.true_estimate = true_estimate
        self.frame_stack, self.device = frame_stack, device
        self.stack: FrameStack | None = None
        self._new_episode: np.ndarray | None = None  # (N,) envs whose next obs starts one

    def reset(self, envs=None) -> None:
        """The next observation of these envs (all, if None) starts a new episode."""
        if envs is None:
            self.stack, self._new_episode = None, None
        elif self._new_episode is not None:
            self._new_episode[envs] = True

    @torch.no_grad()
    def act_batch(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        """Actions (N, A) for N envs' observations, dict of (N, ...) arrays (one frame each).

        Pushes the frames on the stacks first; envs marked by `reset` start theirs afresh.
        """
        n = len(next(iter(obs.values())))
        if self._new_episode is None:
            self._new_episode = np.ones(n, dtype=bool)
        elif len(self._new_episode) != n:
            raise ValueError(f"{n} observations for a policy acting for {len(self._new_episode)}")
        if PIXELS in obs:
            frames = to_device(obs[PIXELS], self.device)
            if self.stack is None:
                self.stack = FrameStack(n, self.frame_stack, frames.shape[1:], self.device)
                self.stack.reset(frames)
            else:
                self.stack.push(frames, self._new_episode)
        self._new_episode[:] = False
        policy_obs = policy_observation(obs, self.stack, self.device)
        if self.true_estimate:
            action = self.agent.act(policy_obs, deterministic, estimate=policy_obs[ACHIEVED_GOAL])
        else:
            action = self.agent.act(policy_obs, deterministic=deterministic)
        return to_host(action)

    def act(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        """The action (A,) for one env's observation."""
        return self.act_batch({k: np.asarray(v)[None] for k, v in obs.items()}, deterministic)[0]


def load_policy(
    path: str | os.PathLike, device: str = "auto", true_estimate: bool = False
) -> tuple[TrainConfig, Policy]:
    """(the config the policy acts with, a Policy) from a checkpoint directory or a run
    directory (its latest complete checkpoint). `cfg.env` builds envs that give the
    observations it expects; the policy's `checkpoint`, `checkpoint_step`, `run_commit` (the
    code that trained it) and `saved_config` (as the run saved it) say what was loaded. Runs
    saved by earlier versions are read through `pixelrl.compat`. `true_estimate`: see
    Policy."""
    checkpoint = resolve_checkpoint(path)
    saved_config = json.loads((checkpoint / "meta.json").read_text())["config"]
    cfg, layout = config_to_evaluate(saved_config)  # before the weights: it may refuse
    state, meta = load_checkpoint(checkpoint)
    device = resolve_device(device)
    spec, obs_space, action_space = describe_env(cfg.env)
    agent = build_agent(cfg, spec, obs_space, action_space, device)
    agent.load_weights(agent_weights(layout, saved_config, state["agent"]))
    policy = Policy(agent, cfg.env.frame_stack, device, true_estimate)
    policy.checkpoint, policy.checkpoint_step = checkpoint, int(meta["step"])
    policy.run_commit = meta.get("git_commit", "unknown")
    policy.saved_config = saved_config
    return cfg, policy
