"""Vector-input normalization: exact statistics, where it is applied, and why it matters."""

from types import SimpleNamespace

import numpy as np
import torch
from test_sac import KEYS, SHAPES, make_agent, random_batch, random_obs

from pixelrl.envs import ACHIEVED_GOAL, DESIRED_GOAL, PIXELS, PROPRIOCEPTION
from pixelrl.nets.heads import TwinQ
from pixelrl.nets.normalize import ObservationNormalizer, RunningMeanStd

VECTOR_SHAPES = {PROPRIOCEPTION: (10,), ACHIEVED_GOAL: (3,), DESIRED_GOAL: (3,)}


def test_running_statistics_equal_numpy_over_all_rows_seen():
    gen = torch.Generator().manual_seed(0)
    stats = RunningMeanStd(5)
    seen = []
    for size in (1, 7, 64, 3, 200):  # uneven batches, one of a single row
        rows = 0.3 + 0.05 * torch.randn(size, 5, generator=gen)
        stats.update(rows)
        seen.append(rows.double().numpy())
        every = np.concatenate(seen)
        np.testing.assert_allclose(stats.mean.numpy(), every.mean(0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(stats.std.numpy(), every.std(0), rtol=0, atol=1e-12)
    assert stats.count.item() == len(every)


def test_unseen_statistics_are_the_identity():
    stats = RunningMeanStd(3)
    assert torch.equal(stats.std, torch.ones(3, dtype=torch.float64))
    assert torch.equal(
        ObservationNormalizer(VECTOR_SHAPES, list(VECTOR_SHAPES))(
            {PROPRIOCEPTION: torch.ones(2, 10)}
        )[PROPRIOCEPTION],
        torch.ones(2, 10),
    )


def test_normalizer_shares_goal_statistics_clips_and_leaves_pixels_alone():
    norm = ObservationNormalizer(SHAPES, KEYS, clip=5.0)
    assert set(norm.stats) == {PROPRIOCEPTION, "goal"}
    obs = random_obs(16, torch.Generator().manual_seed(1))
    norm.update(obs)
    goals = torch.cat([obs[ACHIEVED_GOAL], obs[DESIRED_GOAL]]).double()
    np.testing.assert_allclose(norm.stats["goal"].mean.numpy(), goals.mean(0).numpy(), atol=1e-12)
    out = norm(obs)
    assert out[PIXELS] is obs[PIXELS]
    # One scale for both goals: the difference the reward depends on stays a difference.
    std = norm.stats["goal"].std.float()
    assert torch.allclose(
        out[ACHIEVED_GOAL] - out[DESIRED_GOAL], (obs[ACHIEVED_GOAL] - obs[DESIRED_GOAL]) / std
    )
    expected = (obs[PROPRIOCEPTION] - obs[PROPRIOCEPTION].mean(0)) / obs[PROPRIOCEPTION].std(
        0, unbiased=False
    )
    assert torch.allclose(out[PROPRIOCEPTION], expected, atol=1e-5)
    far = {**obs, PROPRIOCEPTION: obs[PROPRIOCEPTION] + 1e3}
    assert norm(far)[PROPRIOCEPTION].max().item() == 5.0


def test_constant_dimension_is_centred_not_blown_up():
    norm = ObservationNormalizer(VECTOR_SHAPES, list(VECTOR_SHAPES), min_std=1e-2)
    obs = random_obs(32, torch.Generator().manual_seed(2))
    obs[DESIRED_GOAL][:, 2] = 0.42  # the table height: the same in every goal
    obs[ACHIEVED_GOAL][:, 2] = 0.42
    norm.update(obs)
    z = norm(obs)[DESIRED_GOAL][:, 2]
    assert torch.allclose(z, torch.zeros_like(z))
    shifted = norm({**obs, DESIRED_GOAL: obs[DESIRED_GOAL] + 0.001})[DESIRED_GOAL][:, 2]
    assert torch.allclose(shifted, torch.full_like(shifted, 0.1), atol=1e-4)  # 0.001 / 0.01


# ---------------------------------------------------------------- in the agent
def _record_inputs(agent, seen: list):
    """Record the normalized obs dict of every `agent.inputs` call (the update's obs and next
    obs, acting); `.remove()` on the result stops recording."""
    original = agent.inputs

    def inputs(obs, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in obs.items()})
        return original(obs, *args, **kwargs)

    agent.inputs = inputs
    return SimpleNamespace(remove=lambda: delattr(agent, "inputs"))


def test_acting_and_training_see_the_same_normalized_vectors():
    agent = make_agent()
    batch = random_batch(b=16, seed=6)
    agent.update(batch)  # the statistics now hold this batch
    seen_update, seen_act = [], []
    handle = _record_inputs(agent, seen_update)
    agent.update(batch)  # the first call is obs (with gradient)
    handle.remove()
    _record_inputs(agent, seen_act)
    stats_before = {k: v.clone() for k, v in agent.normalizer.state_dict().items()}
    agent.act(batch.obs)
    # Acting reads the statistics, it does not change them.
    for key, value in agent.normalizer.state_dict().items():
        assert torch.equal(value, stats_before[key]), key
    trained, acted = seen_update[0], seen_act[0]
    for key in (PROPRIOCEPTION, ACHIEVED_GOAL, DESIRED_GOAL):
        assert torch.equal(trained[key], acted[key]), key
        assert not torch.allclose(acted[key], batch.obs[key])  # really normalized
        assert acted[key].abs().max() <= 5.0
    assert torch.equal(acted[PIXELS], batch.obs[PIXELS])  # uint8, untouched


def test_next_obs_is_normalized_with_the_same_statistics():
    agent = make_agent()
    batch = random_batch(b=16, seed=7)
    agent.update(batch)
    seen = []
    _record_inputs(agent, seen)
    agent.update(batch)
    expected = agent.normalizer(batch.next_obs)  # statistics after that update
    assert len(seen) == 2  # obs, then next obs
    for key in (PROPRIOCEPTION, ACHIEVED_GOAL, DESIRED_GOAL):
        assert torch.equal(seen[1][key], expected[key]), key


def test_normalizer_statistics_travel_with_the_agent_state():
    agent = make_agent()
    for seed in range(3):
        agent.update(random_batch(seed=seed))
    restored = make_agent(seed=1)
    restored.load_state(agent.state())
    for key, value in agent.normalizer.state_dict().items():
        assert torch.equal(value, restored.normalizer.state_dict()[key]), key
    assert restored.normalizer.stats["goal"].count.item() == 3 * 8 * 2  # ag and dg rows


# ---------------------------------------------------------------- why it matters
def _fit_vector_target(normalize: bool, steps: int = 300, batch: int = 256) -> float:
    """Train a twin-Q critic on [64 random image-like features, raw-scale Fetch vectors] to
    predict a function of the vectors only; the final loss as a fraction of the target's
    variance. Every batch is fresh, so the image features cannot be memorized: the critic
    must read the vectors."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    normalizer = ObservationNormalizer(VECTOR_SHAPES, list(VECTOR_SHAPES) if normalize else [])
    critic = TwinQ(64 + 16, 4, (256, 256))
    optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3)
    action = torch.zeros(batch, 4)
    centre = torch.tensor([1.3, 0.75, 0.42])  # Fetch's table, in metres
    losses = []
    for _ in range(steps):
        achieved = centre + 0.08 * torch.randn(batch, 3, generator=gen)
        desired = centre + 0.08 * torch.randn(batch, 3, generator=gen)
        obs = {
            PROPRIOCEPTION: torch.cat([achieved, 0.02 * torch.randn(batch, 7, generator=gen)], 1),
            ACHIEVED_GOAL: achieved,
            DESIRED_GOAL: desired,
        }
        image_features = torch.tanh(torch.randn(batch, 64, generator=gen))  # LayerNorm + Tanh
        target = -torch.linalg.vector_norm(achieved - desired, dim=1) / 0.1
        normalizer.update(obs)
        scaled = normalizer(obs)
        features = torch.cat([image_features, *(scaled[k] for k in VECTOR_SHAPES)], dim=1)
        q1, q2 = critic(features, action)
        loss = 0.5 * ((q1 - target) ** 2 + (q2 - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item() / target.var().item())
    return sum(losses[-50:]) / 50


def test_critic_fits_a_vector_target_beside_image_features_only_when_normalized():
    normalized, raw = _fit_vector_target(True), _fit_vector_target(False)
    assert normalized < 0.2, normalized  # measured: 0.015
    assert raw > 0.8, raw  # measured: 1.02 (no better than predicting the mean)


# ---------------------------------------------------------------- checkpoints saved before
def test_statistics_saved_with_a_0_dim_count_still_load():
    from pixelrl.compat import agent_state_to_resume

    agent = make_agent()
    agent.update(random_batch())
    state = agent.state()
    networks = dict(state["networks"])
    key = "normalizer.stats.goal.count"
    networks[key] = networks[key].reshape(())  # as checkpoints before the (1,) count hold
    restored = make_agent(seed=1)
    restored.load_state(agent_state_to_resume({**state, "networks": networks}))
    assert restored.normalizer.stats["goal"].count.tolist() == [16.0]
