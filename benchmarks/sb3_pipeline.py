"""The SB3 prototype's SB3 pipeline, rebuilt as the baseline pixelrl is compared against.

Only this module (and the benchmarks that call it) imports stable_baselines3; install it with
`pip install -e .[bench]`. pixelrl itself never imports SB3.

What the SB3 prototype ran: SB3 SAC + HerReplayBuffer on dict observations whose
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
    """The SB3 prototype's observation space: pixels stacked k times, proprioception, both goals."""
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
    """SB3's HerReplayBuffer as the SB3 prototype configured it (future strategy, CPU numpy
    storage).

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
# The SB3 prototype's networks in SB3 form: ManipulationExtractor and the critic-encoder SAC policy
# The conv stack
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
    (identity-based parameter filtering, as in the SB3 prototype)."""

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


# The SB3 prototype's networks for SB3's SAC: ManipulationExtractor features, 256-256 heads.
POLICY_KWARGS = {"features_extractor_class": ManipulationExtractor, "net_arch": [256, 256]}


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
    """SB3 SAC with the SB3 prototype's critic-encoder policy and ManipulationExtractor."""
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
        policy_kwargs=POLICY_KWARGS,
        device=device,
        verbose=0,
    )
    model.set_logger(configure(None, []))
    return model


# ---------------------------------------------------------------------------------------------
# The SB3 prototype's pixel env: render 480x480 + PIL bilinear resize to
# 84 (or --native-render at 84), frames stacked in the worker, proprioception and goals beside.
# The goal marker stays visible, as in the SB3 prototype. Proprioception uses the robot-only indices
# (the SB3 prototype's observation[:10] slip is not carried over).

from collections import deque  # noqa: E402
from functools import partial  # noqa: E402

from pixelrl.envs import proprioception_indices  # noqa: E402


class SeedPixelWrapper(gym.Wrapper):
    def __init__(self, env, image_size=84, frame_stack=4, native_render=False):
        super().__init__(env)
        self.image_size, self.native_render = image_size, native_render
        self.frames = deque(maxlen=frame_stack)
        self.proprio_idx = proprioception_indices(bool(env.unwrapped.has_object))
        self.observation_space = stacked_pixel_space(frame_stack, image_size)

    def _frame(self):
        frame = self.env.render()
        if not self.native_render:
            from PIL import Image

            size = (self.image_size, self.image_size)
            frame = np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))
        return frame.transpose(2, 0, 1)

    def _obs(self, raw):
        return {
            "pixels": np.concatenate(list(self.frames), axis=0),
            "proprioception": raw["observation"][self.proprio_idx].astype(np.float32),
            "achieved_goal": raw["achieved_goal"].astype(np.float32),
            "desired_goal": raw["desired_goal"].astype(np.float32),
        }

    def reset(self, **kwargs):
        raw, info = self.env.reset(**kwargs)
        frame = self._frame()
        for _ in range(self.frames.maxlen):
            self.frames.append(frame)
        return self._obs(raw), info

    def step(self, action):
        raw, reward, terminated, truncated, info = self.env.step(action)
        self.frames.append(self._frame())
        return self._obs(raw), reward, terminated, truncated, info

    def compute_reward(self, achieved_goal, desired_goal, info):
        return self.env.unwrapped.compute_reward(achieved_goal, desired_goal, info)


def make_seed_env(
    env_id="FetchPush-v4", image_size=84, frame_stack=4, native_render=False, render_size=480
):
    import os

    os.environ.setdefault("MUJOCO_GL", "egl")
    _register_fetch()
    side = image_size if native_render else render_size
    env = gym.make(
        env_id, render_mode="rgb_array", width=side, height=side, disable_env_checker=True
    )
    return SeedPixelWrapper(env, image_size, frame_stack, native_render)


def make_sb3_pipeline(
    env_id="FetchPush-v4",
    n_envs=4,
    native_render=False,
    frame_stack=4,
    vec_env="subproc",
    buffer_size=500_000,
    her_n_sampled_goal=8,
    learning_rate=1e-4,
    gamma=0.95,
    tau=0.005,
    batch_size=256,
    ent_coef=0.05,
    learning_starts=1000,
    train_freq=1,
    gradient_steps=1,
    drq=False,
    device="auto",
    seed=0,
):
    """The SB3 prototype's training setup: SB3 SAC + HerReplayBuffer (+ DrQ) + DrQv2SACPolicy
    with ManipulationExtractor on SubprocVecEnv (or DummyVecEnv, what its make_vec_env used)."""
    from stable_baselines3 import SAC as SB3SAC
    from stable_baselines3.common.vec_env import SubprocVecEnv

    factory = partial(make_seed_env, env_id, 84, frame_stack, native_render)
    if vec_env == "subproc":
        venv = SubprocVecEnv([factory] * n_envs, start_method="spawn")
    else:
        venv = DummyVecEnv([factory] * n_envs)
    venv.seed(seed)
    return SB3SAC(
        DrQv2SACPolicy,
        venv,
        learning_rate=learning_rate,
        buffer_size=buffer_size,
        learning_starts=learning_starts,
        batch_size=batch_size,
        tau=tau,
        gamma=gamma,
        train_freq=train_freq,
        gradient_steps=gradient_steps,
        ent_coef=ent_coef,
        replay_buffer_class=HerDrQReplayBuffer if drq else HerReplayBuffer,
        replay_buffer_kwargs={
            "n_sampled_goal": her_n_sampled_goal,
            "goal_selection_strategy": "future",
        },
        policy_kwargs=POLICY_KWARGS,
        device=device,
        seed=seed,
        verbose=0,
    )


class HerDrQReplayBuffer(HerReplayBuffer):
    """HER + DrQ as the SB3 prototype composed them: random shift of obs and next_obs pixels, each
    independently, after sampling."""

    def sample(self, batch_size, env=None):
        from pixelrl.buffers.augment import random_shift

        samples = super().sample(batch_size, env)
        samples.observations["pixels"] = random_shift(samples.observations["pixels"], 4)
        samples.next_observations["pixels"] = random_shift(samples.next_observations["pixels"], 4)
        return samples
