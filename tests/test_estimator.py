"""The state estimator and SAC on vectors (pixelrl.agents.estimator): the image leaves SAC's
update, each learner steps its own weights, and the actor trains on what it acts on."""

import copy
import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import test_sac as sac_tests
import torch

from pixelrl.agents.sac import SAC
from pixelrl.buffers.replay import Batch, ReplaySpec
from pixelrl.build import build_agent, check_resume_config
from pixelrl.compat import config_tag
from pixelrl.config import (
    ConfigError,
    EnvConfig,
    ReplayConfig,
    SACConfig,
    TrainConfig,
    estimator_applies,
    privileged_critic_applies,
    to_dict,
    validate,
)
from pixelrl.diagnostics import encoder_report
from pixelrl.envs import ACHIEVED_GOAL, DESIRED_GOAL, PIXELS, PROPRIOCEPTION, STATE_ESTIMATE
from pixelrl.trainer import MetricSums

SHAPES = {PIXELS: (3, 84, 84), PROPRIOCEPTION: (10,), ACHIEVED_GOAL: (3,), DESIRED_GOAL: (3,)}
SPEC = ReplaySpec(SHAPES, 4, 50, 1, 1, 0.05, "sparse")
OBS_SPACE = gym.spaces.Dict(
    {
        PIXELS: gym.spaces.Box(0, 255, SHAPES[PIXELS], np.uint8),
        **{k: gym.spaces.Box(-np.inf, np.inf, SHAPES[k]) for k in SHAPES if k != PIXELS},
    }
)
ACTION_SPACE = gym.spaces.Box(-1.0, 1.0, (4,))


def agent_for(cfg: TrainConfig, seed: int = 0):
    torch.manual_seed(seed)
    spaces = OBS_SPACE.spaces
    if cfg.env.obs_mode != "pixels":  # the vector modes' obs: no image (full state: 25-D)
        spaces = {k: v for k, v in spaces.items() if k != PIXELS}
    if cfg.env.full_state:
        spaces = {"observation" if k == PROPRIOCEPTION else k: v for k, v in spaces.items()}
    return build_agent(cfg, SPEC, gym.spaces.Dict(spaces), ACTION_SPACE, torch.device("cpu"))


def recipe(**sac) -> TrainConfig:
    """Today's defaults (pixels, --goal-mode desired, single frames), SAC's settings changed."""
    return TrainConfig(sac=SACConfig(**sac))


def random_obs(b: int, gen: torch.Generator) -> dict:
    return sac_tests.random_obs(b, gen, SHAPES[PIXELS])


def random_batch(b: int = 16, seed: int = 0) -> Batch:
    return sac_tests.random_batch(b, seed, SHAPES[PIXELS])


def without_pixels(batch: Batch, estimate, next_estimate) -> Batch:
    """The batch as the replay gives it to SAC with the estimator: stored estimates, no image."""
    obs = {k: v for k, v in batch.obs.items() if k != PIXELS} | {STATE_ESTIMATE: estimate}
    next_obs = {k: v for k, v in batch.next_obs.items() if k != PIXELS}
    next_obs[STATE_ESTIMATE] = next_estimate
    return Batch(obs, batch.action, batch.reward, next_obs, batch.terminated)


def test_the_actor_trains_on_what_it_acts_on():
    """A frame's estimate, stored by the replay and normalized in SAC's update, is the input the
    actor reads when it acts on the same frame: the actor trains on what it acts on."""
    from pixelrl.buffers.replay import EpisodeReplay

    agent = agent_for(recipe())
    spec = dataclasses.replace(SPEC, n_envs=1, estimate_dim=3)
    replay = EpisodeReplay(ReplayConfig(buffer_size=100), spec, "cpu", verbose=False)
    gen = torch.Generator().manual_seed(5)
    replay.start_episodes(random_obs(1, gen))
    for t in range(50):
        replay.add(torch.zeros(1, 4), random_obs(1, gen), [False], [t == 49], random_obs(1, gen))
    episode, t = torch.zeros(8, dtype=torch.long), torch.arange(0, 16, 2)
    agent.normalizer.update(replay.observations_at(episode, t))  # statistics as in a run
    replay.write_estimates(replay.stale_episodes(0), agent.estimate, env_step=50)
    stored = replay.observations_at(episode, t)
    seen = []
    agent.sac.actor.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    actor_keys = agent.sac.actor_keys
    trained = agent.sac.join(agent.sac.inputs(agent.normalizer(stored)), actor_keys)
    agent.act({k: v for k, v in stored.items() if k != STATE_ESTIMATE}, deterministic=True)
    torch.testing.assert_close(seen[-1], trained, rtol=0, atol=0)


def test_sac_reads_no_image_and_each_learner_steps_only_its_own_weights():
    agent = agent_for(recipe())
    assert agent.sac.image is None
    assert agent.sac.actor_keys == [PROPRIOCEPTION, DESIRED_GOAL, STATE_ESTIMATE]
    # The critic reads the true achieved goal in the estimate's place (the privileged critic).
    assert agent.sac.critic_keys == [PROPRIOCEPTION, DESIRED_GOAL, ACHIEVED_GOAL]
    batch = random_batch()
    estimate = agent.estimate(batch.obs[PIXELS])
    vectors = without_pixels(batch, estimate, agent.estimate(batch.next_obs[PIXELS]))

    def snapshot(module):
        return [p.detach().clone() for p in module.parameters()]

    def moved(before, module):
        return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))

    estimator, sac = snapshot(agent.estimator), snapshot(agent.sac)
    agent.update(vectors)
    assert moved(sac, agent.sac) and not moved(estimator, agent.estimator)
    sac = snapshot(agent.sac)
    agent.update_estimator(batch.obs[PIXELS], batch.obs[ACHIEVED_GOAL])
    assert moved(estimator, agent.estimator) and not moved(sac, agent.sac)


def test_the_estimate_is_scaled_with_the_goal_statistics_and_never_changes_them():
    batch = random_batch()
    with_estimate, without = agent_for(recipe()).normalizer, agent_for(recipe()).normalizer
    with_estimate.update({STATE_ESTIMATE: torch.full((16, 3), 9.0), **batch.obs})
    without.update(batch.obs)
    for key, value in without.state_dict().items():
        assert torch.equal(with_estimate.state_dict()[key], value), key
    scaled = with_estimate({STATE_ESTIMATE: batch.obs[ACHIEVED_GOAL], **batch.obs})
    torch.testing.assert_close(scaled[STATE_ESTIMATE], scaled[ACHIEVED_GOAL], rtol=0, atol=0)


def test_acting_reads_the_estimate_of_the_newest_frames_and_no_achieved_goal():
    agent = agent_for(recipe())
    obs = random_obs(5, torch.Generator().manual_seed(1))
    agent.normalizer.update(obs)
    del obs[ACHIEVED_GOAL]
    action = agent.act(obs, deterministic=True)
    expected = agent.sac.act({**obs, STATE_ESTIMATE: agent.estimate(obs[PIXELS])}, True)
    torch.testing.assert_close(action, expected, rtol=0, atol=0)
    other = {**obs, PIXELS: obs[PIXELS].flip(0)}
    assert not torch.allclose(agent.act(other, deterministic=True), action)


def test_state_round_trip_gives_identical_actions_and_updates():
    agent = agent_for(recipe())
    batch = random_batch()
    vectors = without_pixels(
        batch, *(agent.estimate(o[PIXELS]) for o in (batch.obs, batch.next_obs))
    )
    for _ in range(2):
        agent.update(vectors)
        agent.update_estimator(batch.obs[PIXELS], batch.obs[ACHIEVED_GOAL])
    restored = agent_for(recipe(), seed=1)
    restored.load_state(copy.deepcopy(agent.state()))
    obs = {k: v for k, v in batch.obs.items() if k != ACHIEVED_GOAL}
    torch.testing.assert_close(restored.act(obs, True), agent.act(obs, True), rtol=0, atol=0)
    torch.manual_seed(3)
    expected = agent.update(vectors) | agent.update_estimator(
        batch.obs[PIXELS], batch.obs[ACHIEVED_GOAL]
    )
    torch.manual_seed(3)
    got = restored.update(vectors) | restored.update_estimator(
        batch.obs[PIXELS], batch.obs[ACHIEVED_GOAL]
    )
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)


def test_diagnostics_measure_the_stored_estimates_against_the_truth_and_the_estimator():
    agent = agent_for(recipe())
    obs = random_obs(64, torch.Generator().manual_seed(2))
    agent.normalizer.update(obs)
    fresh = agent.estimate(obs[PIXELS])
    out = encoder_report(agent, {**obs, STATE_ESTIMATE: fresh + torch.tensor([0.03, 0, 0])})
    torch.testing.assert_close(out["estimate/staleness_cm"].float(), torch.tensor(3.0))
    truth = (fresh + torch.tensor([0.03, 0, 0]) - obs[ACHIEVED_GOAL]).norm(dim=-1).median() * 100
    torch.testing.assert_close(out["estimate/stored_error_cm"].float(), truth)
    assert {"probe/state_estimate_median_error_cm", "probe/achieved_goal_r2"} <= set(out)
    assert "estimate/staleness_cm" not in encoder_report(agent, obs)  # none stored


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(replay=ReplayConfig(drq=True)), "--drq"),
        (dict(sac=SACConfig(estimator_batch_size=0)), "--estimator-batch-size"),
        (dict(sac=SACConfig(estimator_gradient_steps=0)), "--estimator-gradient-steps"),
        (dict(sac=SACConfig(estimate_refresh_episodes=-1)), "--estimate-refresh-episodes"),
    ],
)
def test_estimator_flags_that_cannot_run_name_the_flag(change, message):
    with pytest.raises(ConfigError, match=message):
        validate(TrainConfig(**change))


def test_the_estimator_applies_with_pixels_only_and_the_other_routings_stay():
    assert estimator_applies(TrainConfig())
    for env in (EnvConfig(no_pixels=True), EnvConfig(full_state=True)):
        cfg = TrainConfig(env=env)
        validate(cfg)  # the default routing idles without an image
        assert not estimator_applies(cfg)
        assert isinstance(agent_for(cfg), SAC)
    end_to_end = recipe(encoder_grad="critic")
    validate(end_to_end)
    assert not estimator_applies(end_to_end) and isinstance(agent_for(end_to_end), SAC)
    assert not privileged_critic_applies(end_to_end)


def test_run_directories_keep_their_names_when_defaults_change():
    """Tags are taken against a fixed reference: a run made with the earlier defaults keeps
    its directory name, and the estimator's settings appear only where it runs."""
    earlier_defaults = TrainConfig(
        env=EnvConfig(goal_mode="both", frame_stack=4),
        replay=ReplayConfig(buffer_size=500_000),
        sac=SACConfig(learning_rate=1e-4, gradient_steps=1, encoder_grad="critic"),
    )
    assert config_tag(earlier_defaults) == "manip_estimate-off_aux0"  # end to end, as it ran
    assert config_tag(TrainConfig()) == (
        "manip_goal-desired_fs1_buf300000_lr0.001_estimatorEnc_gs4"
    )
    assert "ebs64" in config_tag(recipe(estimator_batch_size=64))
    no_pixels = TrainConfig(env=EnvConfig(no_pixels=True), sac=SACConfig(estimator_batch_size=64))
    assert "ebs" not in config_tag(no_pixels)
    # Resuming where the estimator does not run ignores its settings.
    check_resume_config(to_dict(no_pixels), TrainConfig(env=EnvConfig(no_pixels=True)))
    with pytest.raises(ConfigError, match="--estimator-batch-size"):
        check_resume_config(to_dict(recipe(estimator_batch_size=64)), TrainConfig())


def test_metric_means_count_each_metric_on_its_own():
    sums = MetricSums(since=0)
    sums.add({"critic_loss": torch.tensor(1.0)})
    sums.add({"critic_loss": torch.tensor(3.0)})
    sums.add({"aux_loss": torch.tensor(5.0)})
    means = sums.means()
    assert means["train/critic_loss"].item() == 2.0 and means["train/aux_loss"].item() == 5.0
