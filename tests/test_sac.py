"""Encoders, heads and the SAC update: the SB3 prototype's verification checks, as tests."""

import io
import math

import pytest
import torch

from pixelrl.agents.sac import SAC
from pixelrl.buffers.replay import Batch
from pixelrl.config import NetworkConfig, SACConfig
from pixelrl.envs import ACHIEVED_GOAL, DESIRED_GOAL, PIXELS, PROPRIOCEPTION
from pixelrl.nets.encoders import (
    ImageEncoder,
    ManipulationCNN,
    NatureCNN,
    ObservationEncoder,
    SpatialSoftmax,
)
from pixelrl.nets.heads import SquashedGaussianActor, squashed_gaussian_log_prob

SHAPES = {PIXELS: (12, 84, 84), PROPRIOCEPTION: (10,), ACHIEVED_GOAL: (3,), DESIRED_GOAL: (3,)}
KEYS = list(SHAPES)
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
    routing="critic",
    encoder="manip",
    ent_coef="0.05",
    seed=0,
    net: NetworkConfig | None = None,
    reward_range=(-1.0, 0.0),
    **sac,
) -> SAC:
    """An agent whose heads read the image features and whose encoder only the RL losses
    train (no auxiliary loss, no state estimate), so that these tests see SAC's own gradient
    routing; the auxiliary loss and the estimate have their tests in test_encoder_position."""
    torch.manual_seed(seed)
    sac = {"aux_coef": 0.0, **sac}
    return SAC(
        SHAPES,
        KEYS,
        LOW,
        HIGH,
        net or NetworkConfig(encoder=encoder, state_estimate="off"),
        SACConfig(encoder_grad=routing, ent_coef=ent_coef, **sac),
        reward_range=reward_range,
    )


# ---------------------------------------------------------------- encoders
def test_cnn_shapes():
    x = torch.rand(2, 12, 84, 84)
    assert NatureCNN(12, 84).forward(x).shape == (2, 256)
    assert ManipulationCNN(12)(x).shape == (2, 32, 21, 21)


def test_image_encoder_variants_and_sizes():
    pixels = torch.randint(0, 256, (3, 12, 84, 84), dtype=torch.uint8)
    sizes = {}
    for cfg in (
        NetworkConfig(encoder="manip"),
        NetworkConfig(encoder="drqv2"),
        NetworkConfig(encoder="manip", spatial_softmax=False),
        NetworkConfig(encoder="nature"),
        NetworkConfig(encoder="nature", norm=True),
    ):
        out = ImageEncoder(cfg, 12, 84)(pixels)
        sizes[(cfg.encoder, cfg.uses_spatial_softmax, cfg.norm)] = out.shape[1]
        if cfg.encoder != "nature" or cfg.norm:
            assert out.abs().max() <= 1.0  # LayerNorm + Tanh trunk
    assert sizes == {
        ("manip", True, False): 64,
        ("manip", False, False): 50,  # drqv2 and manip --no-spatial-softmax: one network
        ("nature", False, False): 256,
        ("nature", False, True): 50,
    }
    assert NetworkConfig(encoder="drqv2") == NetworkConfig(spatial_softmax=False)


def test_observation_encoder_joins_keys():
    enc = ObservationEncoder(NetworkConfig(), SHAPES, KEYS)
    assert enc.features_dim == 64 + 10 + 3 + 3  # the SB3 prototype's 80-D features
    obs = random_obs(4, torch.Generator().manual_seed(0))
    features = enc(obs)
    assert features.shape == (4, 80)
    assert torch.equal(features[:, 64:74], obs[PROPRIOCEPTION])  # vectors pass through
    assert torch.equal(features[:, -3:], obs[DESIRED_GOAL])
    no_goal = ObservationEncoder(NetworkConfig(), SHAPES, [PIXELS, PROPRIOCEPTION])
    assert no_goal.features_dim == 74


def test_pixels_are_scaled_once():
    enc = ImageEncoder(NetworkConfig(encoder="drqv2"), 3, 32)
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


# ---------------------------------------------------------------- routing
def encoder_params(agent, which):
    return list(getattr(agent, f"{which}_encoder").parameters())


def optimizer_param_ids(opt):
    return {id(p) for group in opt.param_groups for p in group["params"]}


@pytest.mark.parametrize("routing", ["critic", "actor", "separate"])
def test_optimizer_membership(routing):
    agent = make_agent(routing)
    critic_ids = optimizer_param_ids(agent.critic_optimizer)
    actor_ids = optimizer_param_ids(agent.actor_optimizer)
    critic_enc = {id(p) for p in encoder_params(agent, "critic")}
    actor_enc = {id(p) for p in encoder_params(agent, "actor")}
    assert len(critic_enc) == 9  # 4 convs x 2 + log temperature (the running trunk has none)
    if routing == "critic":
        assert critic_enc <= critic_ids and not (critic_enc & actor_ids)
    elif routing == "actor":
        assert actor_enc <= actor_ids and not (actor_enc & critic_ids)
    else:
        assert critic_enc <= critic_ids and actor_enc <= actor_ids
        assert not (critic_enc & actor_enc) and not (critic_enc & actor_ids)
    target_ids = {id(p) for p in agent.target_encoder.parameters()}
    target_ids |= {id(p) for p in agent.target_critic.parameters()}
    assert not target_ids & (critic_ids | actor_ids)


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _changed(before, params):
    return any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))


@pytest.mark.parametrize(
    "routing, expected",
    [
        # which encoder changes at the critic step and at the actor step
        (
            "critic",
            {"critic": {"critic": True, "actor": True}, "actor": {"critic": False, "actor": False}},
        ),
        (
            "actor",
            {"critic": {"critic": False, "actor": False}, "actor": {"critic": True, "actor": True}},
        ),
        (
            "separate",
            {"critic": {"critic": True, "actor": False}, "actor": {"critic": False, "actor": True}},
        ),
    ],
)
def test_which_step_moves_which_encoder(routing, expected):
    agent = make_agent(routing)
    observed = {}
    for step_name in ("critic", "actor"):
        optimizer = getattr(agent, f"{step_name}_optimizer")
        original = optimizer.step

        def step(*args, _original=original, _name=step_name, **kwargs):
            before = {w: _snapshot(encoder_params(agent, w)) for w in ("critic", "actor")}
            result = _original(*args, **kwargs)
            observed[_name] = {
                w: _changed(before[w], encoder_params(agent, w)) for w in ("critic", "actor")
            }
            return result

        optimizer.step = step
    agent.update(random_batch())
    assert observed == expected


@pytest.mark.parametrize("routing", ["critic", "actor", "separate"])
def test_target_moves_only_by_polyak(routing):
    agent = make_agent(routing, tau=0.05)
    target = list(agent.target_encoder.parameters()) + list(agent.target_critic.parameters())
    online = list(agent.critic_encoder.parameters()) + list(agent.critic.parameters())
    for _ in range(2):
        before = _snapshot(target)
        agent.update(random_batch(seed=1))
        for b, t, o in zip(before, target, online, strict=True):
            assert torch.allclose(t, b + 0.05 * (o.detach() - b), atol=1e-7)
    # After two updates the target differs from the online weights (it lags).
    assert _changed(_snapshot(online), target)


# ---------------------------------------------------------------- the update
@pytest.mark.parametrize("routing", ["critic", "actor", "separate"])
@pytest.mark.parametrize("ent_coef", ["0.05", "auto"])
def test_update_is_finite_and_reports_sb3_scalars(routing, ent_coef):
    agent = make_agent(routing, ent_coef=ent_coef)
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


def test_encoder_diagnostics_names():
    agent = make_agent()
    diag = agent.encoder_diagnostics(random_obs(8, torch.Generator().manual_seed(0)))
    assert diag["encoder/spatial_softmax_temperature"].item() == pytest.approx(1.0)
    assert {f"encoder/{k}_std_across_batch" for k in KEYS} <= set(diag)
    assert {"probe/achieved_goal_r2", "probe/achieved_goal_median_error_cm"} <= set(diag)
    assert "encoder/keypoints_std_across_batch" in diag


@pytest.mark.parametrize(
    "next_obs_encoder, expected",
    [
        # encoder calls in one update: (online critic encoder, target encoder)
        ("target", (1, 1)),  # obs online; next obs by the target, for target Q and next action
        ("online", (2, 0)),  # DrQ-v2: the online encoder reads next obs too
        ("split", (2, 1)),  # SB3: target for the target Q, online for the next action
    ],
)
def test_next_obs_encoder_choice(next_obs_encoder, expected):
    agent = make_agent(next_obs_encoder=next_obs_encoder)
    calls = {"online": 0, "target": 0}
    for name, encoder in (
        ("online", agent.critic_encoder.image),
        ("target", agent.target_encoder.image),
    ):
        encoder.register_forward_pre_hook(
            lambda module, args, _name=name: calls.__setitem__(_name, calls[_name] + 1)
        )
    agent.update(random_batch())
    assert (calls["online"], calls["target"]) == expected


def test_encoder_learning_rate_applies_to_the_encoder_only():
    agent = make_agent(learning_rate=1e-3, encoder_lr=1e-4)
    groups = agent.critic_optimizer.param_groups
    encoder_ids = {id(p) for p in agent.critic_encoder.parameters()}
    for group in groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= encoder_ids if group["lr"] == 1e-4 else not ids & encoder_ids
    assert sorted(g["lr"] for g in groups) == [1e-4, 1e-3]
    assert [g["lr"] for g in agent.actor_optimizer.param_groups] == [1e-3]
