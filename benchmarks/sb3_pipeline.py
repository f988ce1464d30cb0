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


# ---------------------------------------------------------------------------------------------
# The seeds' networks in SB3 form: ManipulationExtractor and the critic-encoder SAC policy
# (scripts/labs/manipulation_encoder.py and drqv2_sac_policy.py in the seeds). The conv stack
# and SpatialSoftmax are pixelrl's modules, so both sides run the same architecture.

import torch as th  # noqa: E402
from stable_baselines3.common.policies import ContinuousCritic  # noqa: E402
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor  # noqa: E402
from stable_baselines3.sac.policies import Actor, SACPolicy  # noqa: E402

from pixelrl.nets.encoders import ManipulationCNN, SpatialSoftmax  # noqa: E402


class ManipulationExtractor(BaseFeaturesExtractor):
    """pixels -> ManipulationCNN -> SpatialSoftmax -> LayerNorm -> Tanh (64), concatenated with
    proprioception and both goals: 80-D. SB3 has already scaled pixels to [0, 1]."""

    def __init__(self, observation_space):
        channels, side, _ = observation_space["pixels"].shape
        cnn = ManipulationCNN(channels)
        with th.no_grad():
            _, c, h, w = cnn(th.zeros(1, channels, side, side)).shape
        vector_dim = sum(
            space.shape[0] for key, space in observation_space.spaces.items() if key != "pixels"
        )
        super().__init__(observation_space, features_dim=2 * c + vector_dim)
        self.image = th.nn.Sequential(
            cnn, SpatialSoftmax(h, w), th.nn.LayerNorm(2 * c), th.nn.Tanh()
        )
        self.vector_keys = [k for k in observation_space.spaces if k != "pixels"]

    def forward(self, observations):
        parts = [self.image(observations["pixels"])]
        parts += [observations[k].flatten(1) for k in self.vector_keys]
        return th.cat(parts, dim=1)


class CriticEncoderCritic(ContinuousCritic):
    """Always lets gradients through the (shared) encoder, unlike SB3's critic."""

    def forward(self, obs, actions):
        features = self.extract_features(obs, self.features_extractor)
        qvalue_input = th.cat([features, actions], dim=1)
        return tuple(q_net(qvalue_input) for q_net in self.q_networks)


class CriticEncoderActor(Actor):
    """Detaches the shared encoder's features: the actor loss never trains the encoder."""

    def get_action_dist_params(self, obs):
        features = self.extract_features(obs, self.features_extractor).detach()
        latent_pi = self.latent_pi(features)
        mean_actions = self.mu(latent_pi)
        log_std = th.clamp(self.log_std(latent_pi), -20, 2)
        return mean_actions, log_std, {}


class DrQv2SACPolicy(SACPolicy):
    """SB3 SAC policy with the DrQ-v2 routing: shared encoder in the critic optimizer only
    (identity-based parameter filtering, as in the seeds)."""

    def __init__(self, *args, **kwargs):
        kwargs["share_features_extractor"] = True
        super().__init__(*args, **kwargs)

    def make_actor(self, features_extractor=None):
        kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return CriticEncoderActor(**kwargs).to(self.device)

    def make_critic(self, features_extractor=None):
        kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return CriticEncoderCritic(**kwargs).to(self.device)

    def _build(self, lr_schedule):
        super()._build(lr_schedule)
        encoder_ids = {id(p) for p in self.actor.features_extractor.parameters()}
        lr = lr_schedule(1)
        self.actor.optimizer = self.optimizer_class(
            [p for p in self.actor.parameters() if id(p) not in encoder_ids],
            lr=lr,
            **self.optimizer_kwargs,
        )
        self.critic.optimizer = self.optimizer_class(
            list(self.critic.parameters()), lr=lr, **self.optimizer_kwargs
        )


class _SpaceOnlyEnv(gym.Env):
    """An env that only carries spaces: SB3's SAC needs one to build its policy."""

    def __init__(self, observation_space, action_space):
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def make_sb3_sac(
    observation_space,
    learning_rate=1e-4,
    gamma=0.95,
    ent_coef=0.05,
    batch_size=256,
    buffer_size=1000,
    device="cpu",
):
    """SB3 SAC with the seeds' critic-encoder policy and ManipulationExtractor."""
    from stable_baselines3 import SAC as SB3SAC
    from stable_baselines3.common.buffers import DictReplayBuffer
    from stable_baselines3.common.logger import configure

    action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    env = DummyVecEnv([lambda: _SpaceOnlyEnv(observation_space, action_space)])
    model = SB3SAC(
        DrQv2SACPolicy,
        env,
        learning_rate=learning_rate,
        gamma=gamma,
        ent_coef=ent_coef,
        batch_size=batch_size,
        buffer_size=buffer_size,
        replay_buffer_class=DictReplayBuffer,
        policy_kwargs={"features_extractor_class": ManipulationExtractor, "net_arch": [256, 256]},
        device=device,
        verbose=0,
    )
    model.set_logger(configure(None, []))
    return model
