"""The seeds' SB3 pipeline, rebuilt as the baseline pixelrl is compared against.

Only this module (and the benchmarks that call it) imports stable_baselines3; install it with
`pip install -e .[bench]`. pixelrl itself never imports SB3.

What the seeds ran (shared/seeds): SB3 SAC + HerReplayBuffer on dict observations whose
"pixels" entry is stored frame-stacked (12, 84, 84) for obs AND next_obs, with the goals and
10-D proprioception beside it.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from stable_baselines3 import HerReplayBuffer
from stable_baselines3.common.vec_env import DummyVecEnv

from pixelrl.envs import _register_fetch


def stacked_pixel_space(k: int, side: int, proprio_dim: int = 10, goal_dim: int = 3):
    """The seeds' observation space: pixels stacked k times, proprioception, both goals."""
    box = gym.spaces.Box
    return gym.spaces.Dict(
        {
            "pixels": box(0, 255, (3 * k, side, side), np.uint8),
            "proprioception": box(-np.inf, np.inf, (proprio_dim,), np.float32),
            "achieved_goal": box(-np.inf, np.inf, (goal_dim,), np.float32),
            "desired_goal": box(-np.inf, np.inf, (goal_dim,), np.float32),
        }
    )


def make_her_buffer(
    buffer_size: int, observation_space, env_id: str = "FetchPush-v4", n_sampled_goal: int = 8
) -> HerReplayBuffer:
    """SB3's HerReplayBuffer as the seeds configured it (future strategy, CPU numpy storage).

    HER rewards come from the env's compute_reward through VecEnv.env_method, as in SB3.
    """
    _register_fetch()
    reward_env = DummyVecEnv([lambda: gym.make(env_id, disable_env_checker=True)])
    action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    return HerReplayBuffer(
        buffer_size,
        observation_space,
        action_space,
        env=reward_env,
        device="cpu",
        n_envs=1,
        n_sampled_goal=n_sampled_goal,
        goal_selection_strategy="future",
    )


def sb3_bytes_per_transition(buffer: HerReplayBuffer) -> float:
    """Bytes SB3 keeps per stored transition (obs and next_obs dicts, action, reward, done)."""
    total = sum(a.nbytes for a in buffer.observations.values())
    total += sum(a.nbytes for a in buffer.next_observations.values())
    total += buffer.actions.nbytes + buffer.rewards.nbytes + buffer.dones.nbytes
    total += buffer.timeouts.nbytes
    return total / (buffer.buffer_size * buffer.n_envs)
