"""The image encoder, the heads and the SAC update (pixelrl/agents/sac.py)."""

import io
import math

import pytest
import torch

from pixelrl.agents.sac import SAC
from pixelrl.buffers.replay import Batch
from pixelrl.config import SACConfig
from pixelrl.envs import ACHIEVED_GOAL, DESIRED_GOAL, PIXELS, PROPRIOCEPTION, STATE_ESTIMATE
from pixelrl.nets.encoders import ImageEncoder, ManipulationCNN, SpatialSoftmax
from pixelrl.nets.heads import SquashedGaussianActor, squashed_gaussian_log_prob

SHAPES = {PIXELS: (12, 84, 84), PROPRIOCEPTION: (10,), ACHIEVED_GOAL: (3,), DESIRED_GOAL: (3,)}
KEYS = list(SHAPES)
VECTOR_SHAPES = {k: v for k, v in SHAPES.items() if k != PIXELS}
LOW, HIGH = [-1.0] * 4, [1.0] * 4


def random_obs(b: int, gen: torch.Generator, pixels=SHAPES[PIXELS]) -> dict:
    return {
        PIXELS: torch.randint(0, 256, (b, *pixels), dtype=torch.uint8, generator=gen),
        PROPRIOCEPTION: torch.randn(b, 10, generator=gen),
        ACHIEVED_GOAL: torch.rand(b, 3, generator=gen),
        DESIRED_GOAL: torch.rand(b, 3, generator=gen),
    }


def random_batch(b: int = 8, seed: int = 0, pixels=SHAPES[PIXELS]) -> Batch:
    """obs and next obs of `random_obs` (stacked pixels of shape `pixels`), random actions
    and sparse rewards, nothing terminated."""
    gen = torch.Generator().manual_seed(seed)
    return Batch(
        obs=random_obs(b, gen, pixels),
        action=torch.rand(b, 4, generator=gen) * 2 - 1,
        reward=-(torch.rand(b, generator=gen) > 0.5).float(),
        next_obs=random_obs(b, gen, pixels),
        terminated=torch.zeros(b),
    )


def make_agent(
    ent_coef="0.05",
    seed=0,
    keys=KEYS,
    critic_keys=None,
    shapes=SHAPES,
    hidden_sizes=(256, 256),
    **sac,
) -> SAC:
    """SAC end to end by default: the heads read the image encoder's features and the vectors,
    and the critic's loss trains the encoder (`--encoder-grad critic`)."""
    torch.manual_seed(seed)
    cfg = SACConfig(ent_coef=ent_coef, encoder_grad="critic", **sac)
    return SAC(shapes, keys, critic_keys or keys, LOW, HIGH, cfg, hidden_sizes)


# ---------------------------------------------------------------- encoders
def test_cnn_shapes():
    x = torch.rand(2, 12, 84, 84)
    assert ManipulationCNN(12)(x).shape == (2, 32, 21, 21)


def test_image_encoder_gives_64_normalized_keypoint_features():
    pixels = torch.randint(0, 256, (3, 12, 84, 84), dtype=torch.uint8)
    encoder = ImageEncoder(12, 84)
    assert encoder.features_dim == 64 and encoder(pixels, update_stats=True).shape == (3, 64)
    assert encoder.keypoints(pixels).abs().max() <= 1.0  # SpatialSoftmax coordinates


def test_sac_inputs_join_the_image_features_and_the_vectors():
    agent = make_agent()
    obs = agent.normalizer(random_obs(4, torch.Generator().manual_seed(0)))
    features = agent.join(agent.inputs(obs), KEYS)
    assert features.shape == (4, 64 + 10 + 3 + 3)  # the SB3 pipeline's 80-D features
    assert torch.equal(features[:, 64:74], obs[PROPRIOCEPTION])  # vectors pass through
    assert torch.equal(features[:, -3:], obs[DESIRED_GOAL])
    vectors = make_agent(keys=[PROPRIOCEPTION, DESIRED_GOAL], shapes=VECTOR_SHAPES)
    assert vectors.image is None and vectors.actor.trunk[0].in_features == 13


def test_pixels_are_scaled_once():
    enc = ImageEncoder(3, 32)
    seen = {}

    def record_input(module, inputs, output):
        seen["x"] = inputs[0]

    enc.net[0].convs[0].register_forward_hook(record_input)
    enc(torch.full((1, 3, 32, 32), 255, dtype=torch.uint8))
    assert torch.allclose(seen["x"], torch.ones(1, 3, 32, 32))


def test_spatial_softmax_coordinates_weights_and_gradient():
    ss = SpatialSoftmax(21, 21)
    feats = torch.randn(4, 32, 21, 21, requires_grad=True)
    out = ss(feats)
    assert out.shape == (4, 64) and out.abs().max() <= 1.0
    weights = ss.attention(feats)
    assert torch.allclose(weights.sum(dim=(2, 3)), torch.ones(4, 32))
    out.sum().backward()
    assert ss.log_temperature.grad is not None and ss.log_temperature.grad.abs() > 0
    assert feats.grad.abs().sum() > 0
    # A one-hot activation at row i, column j gives x = grid[j], y = grid[i].
    grid = torch.linspace(-1, 1, 21)
    for i, j in [(0, 0), (3, 17), (20, 10), (10, 20)]:
        onehot = torch.zeros(1, 1, 21, 21)
        onehot[0, 0, i, j] = 50.0
        x, y = SpatialSoftmax(21, 21)(onehot)[0]
        assert torch.allclose(x, grid[j], atol=1e-4) and torch.allclose(y, grid[i], atol=1e-4)


# ---------------------------------------------------------------- actor head
def test_squashed_gaussian_log_prob_equals_numerical_density():
    torch.set_default_dtype(torch.float64)
    try:
        mean = torch.tensor([[0.3, -1.2, 0.0]])
        log_std = torch.tensor([[-0.5, 0.2, -1.0]])
        u = torch.tensor([[0.1, -0.4, 1.3]])
        ours = squashed_gaussian_log_prob(u, mean, log_std)
        # Density of a = tanh(u) by change of variables with a numerical derivative of atanh.
        a, h = torch.tanh(u), 1e-6
        du_da = (torch.atanh(a + h) - torch.atanh(a - h)) / (2 * h)
        normal = torch.distributions.Normal(mean, log_std.exp())
        reference = (normal.log_prob(torch.atanh(a)) + du_da.log()).sum(-1)
        assert torch.allclose(ours, reference, atol=1e-6)
        # In 1-D the density integrates to 1 over (-1, 1).
        grid = torch.linspace(-1 + 1e-9, 1 - 1e-9, 200001)
        pre = torch.atanh(grid)[:, None]
        density = squashed_gaussian_log_prob(
            pre, torch.tensor([[0.4]]), torch.tensor([[-0.3]])
        ).exp()
        assert abs(torch.trapezoid(density, grid).item() - 1.0) < 1e-3
    finally:
        torch.set_default_dtype(torch.float32)


def test_actor_sample_and_deterministic_action():
    torch.manual_seed(0)
    actor = SquashedGaussianActor(80, 4, (64, 64), LOW, HIGH)
    features = torch.randn(16, 80)
    mean, log_std = actor(features)
    assert torch.allclose(actor.deterministic(features), torch.tanh(mean))
    assert log_std.min() >= -20 and log_std.max() <= 2
    action, log_prob = actor.sample(features)
    assert action.abs().max() < 1 and log_prob.shape == (16,)


# ---------------------------------------------------------------- what trains what
def optimizer_param_ids(opt):
    return {id(p) for group in opt.param_groups for p in group["params"]}


def test_end_to_end_the_encoder_is_in_the_critic_optimizer_only():
    agent = make_agent()
    critic_ids = optimizer_param_ids(agent.critic_optimizer)
    actor_ids = optimizer_param_ids(agent.actor_optimizer)
    encoder = {id(p) for p in agent.image.parameters()}
    assert len(encoder) == 9  # 4 convs x 2 + log temperature (the keypoint norm has none)
    assert encoder <= critic_ids and not (encoder & actor_ids)
    assert actor_ids == {id(p) for p in agent.actor.parameters()}
    assert not {id(p) for p in agent.target_critic.parameters()} & (critic_ids | actor_ids)


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _changed(before, params):
    return any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))


def test_the_critic_step_moves_the_encoder_and_the_actor_step_does_not():
    agent = make_agent()
    observed = {}
    for step_name in ("critic", "actor"):
        optimizer = getattr(agent, f"{step_name}_optimizer")
        original = optimizer.step

        def step(*args, _original=original, _name=step_name, **kwargs):
            before = _snapshot(agent.image.parameters())
            result = _original(*args, **kwargs)
            observed[_name] = _changed(before, agent.image.parameters())
            return result

        optimizer.step = step
    agent.update(random_batch())
    assert observed == {"critic": True, "actor": False}


def test_target_moves_only_by_polyak():
    agent = make_agent(tau=0.05)
    target, online = list(agent.target_critic.parameters()), list(agent.critic.parameters())
    for _ in range(2):
        before = _snapshot(target)
        agent.update(random_batch(seed=1))
        for b, t, o in zip(before, target, online, strict=True):
            assert torch.allclose(t, b + 0.05 * (o.detach() - b), atol=1e-7)
    # After two updates the target differs from the online weights (it lags).
    assert _changed(_snapshot(online), target)


def test_actor_and_critic_read_their_own_keys_in_every_call():
    """With the estimate in the actor's keys and the true achieved goal in the critic's (the
    privileged critic), every critic call reads the achieved goal (obs' for Q, next obs' for
    the target) and every actor call the estimate (next action, actor step, acting)."""
    shapes = VECTOR_SHAPES | {STATE_ESTIMATE: (3,)}
    actor_keys = [PROPRIOCEPTION, DESIRED_GOAL, STATE_ESTIMATE]
    critic_keys = [PROPRIOCEPTION, DESIRED_GOAL, ACHIEVED_GOAL]
    agent = make_agent(keys=actor_keys, critic_keys=critic_keys, shapes=shapes)
    seen = {"critic": [], "target_critic": [], "actor": []}
    for name, calls in seen.items():
        getattr(agent, name).register_forward_pre_hook(
            lambda module, args, _calls=calls: _calls.append(args[0][:, -3:].detach().clone())
        )
    batch = random_batch(16, seed=3)
    gen = torch.Generator().manual_seed(4)
    batch.obs[STATE_ESTIMATE] = batch.obs[ACHIEVED_GOAL] + torch.rand(16, 3, generator=gen)
    batch.next_obs[STATE_ESTIMATE] = batch.next_obs[ACHIEVED_GOAL] + 0.5
    agent.update(batch)
    assert len(seen["critic"]) == 2 and len(seen["target_critic"]) == 1
    assert len(seen["actor"]) == 2  # the next action, the actor step
    # What each call read, scaled with the statistics the update scaled with (this batch's).
    scaled = {
        "goal": agent.normalizer(batch.obs)[ACHIEVED_GOAL],
        "next_goal": agent.normalizer(batch.next_obs)[ACHIEVED_GOAL],
        "estimate": agent.normalizer(batch.obs)[STATE_ESTIMATE],
        "next_estimate": agent.normalizer(batch.next_obs)[STATE_ESTIMATE],
    }
    for read in seen["critic"]:
        torch.testing.assert_close(read, scaled["goal"], rtol=0, atol=0)
    torch.testing.assert_close(seen["target_critic"][0], scaled["next_goal"], rtol=0, atol=0)
    torch.testing.assert_close(seen["actor"][0], scaled["next_estimate"], rtol=0, atol=0)
    torch.testing.assert_close(seen["actor"][1], scaled["estimate"], rtol=0, atol=0)
    # Acting reads no achieved goal: the actor reads the estimate.
    obs = {k: v[:5] for k, v in batch.obs.items() if k != ACHIEVED_GOAL}
    assert agent.act(obs, deterministic=True).shape == (5, 4)
    torch.testing.assert_close(seen["actor"][-1], scaled["estimate"][:5], rtol=0, atol=0)


# ---------------------------------------------------------------- the update
@pytest.mark.parametrize("end_to_end", [True, False])
@pytest.mark.parametrize("ent_coef", ["0.05", "auto"])
def test_update_is_finite_and_reports_sb3_scalars(end_to_end, ent_coef):
    keys = KEYS if end_to_end else [PROPRIOCEPTION, ACHIEVED_GOAL, DESIRED_GOAL]
    agent = make_agent(ent_coef=ent_coef, keys=keys)
    metrics = agent.update(random_batch())
    expected = {"critic_loss", "actor_loss", "ent_coef", "q_mean"}
    if ent_coef == "auto":
        expected.add("ent_coef_loss")
    assert set(metrics) == expected
    for value in metrics.values():
        assert value.dim() == 0 and torch.isfinite(value) and not value.requires_grad
    if ent_coef == "auto":
        before = agent.log_alpha.item()
        agent.update(random_batch(seed=2))
        assert agent.log_alpha.item() != before


def test_bootstrap_uses_terminated_only():
    agent = make_agent()
    batch = random_batch()
    captured = {}
    original = torch.nn.functional.mse_loss

    def spy(q, target):
        captured.setdefault("target", target.clone())
        return original(q, target)

    torch.nn.functional.mse_loss = spy
    try:
        torch.manual_seed(0)
        agent.update(batch)
        target_truncated = captured.pop("target")
        agent2 = make_agent()
        batch.terminated = torch.ones(8)
        torch.manual_seed(0)
        agent2.update(batch)
        target_terminated = captured.pop("target")
    finally:
        torch.nn.functional.mse_loss = original
    assert torch.allclose(target_terminated, batch.reward)  # no bootstrap when terminated
    assert not torch.allclose(target_truncated, batch.reward)  # bootstraps otherwise


def test_repeated_updates_on_a_fixed_batch_drive_critic_loss_down():
    agent = make_agent(learning_rate=3e-4)
    batch = random_batch(b=16, seed=3)
    losses = [agent.update(batch)["critic_loss"].item() for _ in range(150)]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.3 * first, (first, last)


def test_state_round_trip_gives_identical_actions_and_updates():
    agent = make_agent(ent_coef="auto")
    for seed in range(3):
        agent.update(random_batch(seed=seed))
    buffer = io.BytesIO()
    torch.save(agent.state(), buffer)
    buffer.seek(0)
    restored = make_agent(ent_coef="auto", seed=123)
    restored.load_state(torch.load(buffer))
    for (name, a), b in zip(
        agent.state_dict().items(), restored.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    obs = random_obs(5, torch.Generator().manual_seed(9))
    assert torch.equal(agent.act(obs, deterministic=True), restored.act(obs, deterministic=True))
    torch.manual_seed(7)
    m1 = agent.update(random_batch(seed=5))
    torch.manual_seed(7)
    m2 = restored.update(random_batch(seed=5))
    for key in m1:
        assert torch.equal(m1[key], m2[key]), key
    assert math.isclose(agent.log_alpha.item(), restored.log_alpha.item())
