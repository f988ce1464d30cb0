"""Does the encoder learn where things are: the keypoint trunk, the state head and its auxiliary
loss, and the diagnostics that judge them (pixelrl.nets.encoders, pixelrl.agents.sac,
pixelrl.diagnostics)."""

import dataclasses
import itertools

import pytest
import torch
from test_sac import KEYS, SHAPES, make_agent, random_batch, random_obs

from pixelrl.agents.sac import SAC
from pixelrl.build import build_agent, describe_env
from pixelrl.config import (
    ConfigError,
    EnvConfig,
    NetworkConfig,
    SACConfig,
    TrainConfig,
    privileged_critic_applies,
    validate,
)
from pixelrl.diagnostics import linear_probe, r_squared, spread_across_batch
from pixelrl.envs import ACHIEVED_GOAL, DESIRED_GOAL, PIXELS, PROPRIOCEPTION
from pixelrl.nets.encoders import (
    STATE_ESTIMATE,
    ImageEncoder,
    KeypointNorm,
    ObservationEncoder,
    SpatialSoftmax,
    _norm_trunk,
)

AUX = dict(net=NetworkConfig(keypoint_trunk="running"), aux_coef=1.0)


# ---------------------------------------------------------------- the keypoint trunk
def test_an_isolated_keypoint_moves_its_feature_with_running_norm_not_with_layernorm():
    """LayerNorm across one image's 64 coordinates saturates a keypoint far from the others;
    per-dimension statistics across the data keep its movement visible."""
    gen = torch.Generator().manual_seed(0)
    data = 0.01 * torch.randn(256, 64, generator=gen)  # 63 keypoints clustered near the centre
    data[:, 0] = 0.6 + 0.05 * torch.randn(256, generator=gen)  # one keypoint far away
    moved = data[:1].clone()
    moved[0, 0] += 0.02  # about 0.8 px of the 84-px image
    layernorm = _norm_trunk(64)
    running = KeypointNorm(64)
    running.update(data)
    with torch.no_grad():
        assert (layernorm(moved) - layernorm(data[:1]))[0, 0].abs() < 1e-3  # saturated
        assert (running(moved) - running(data[:1]))[0, 0].abs() > 0.3  # 0.02 / 0.05 std


def test_keypoint_norm_statistics_first_batch_then_moving_average():
    norm = KeypointNorm(3, momentum=0.1)
    first = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 4.0]])
    norm.update(first)
    torch.testing.assert_close(norm.mean, first.mean(0))
    torch.testing.assert_close(norm.var, first.var(0, unbiased=False))
    second = first + 1.0
    norm.update(second)
    torch.testing.assert_close(norm.mean, first.mean(0) + 0.1)
    # EW variance: (1 - r) (var + r delta^2) + r batch_var, with delta = 1 and r = 0.1.
    expected = 0.9 * (first.var(0, unbiased=False) + 0.1 * 1.0**2) + 0.1 * second.var(
        0, unbiased=False
    )
    torch.testing.assert_close(norm.var, expected)


def test_a_still_keypoint_is_not_blown_up_when_it_moves():
    norm = KeypointNorm(4, relative_floor=0.1)
    data = torch.randn(128, 4)
    data[:, 3] = 0.2  # sat still: its own std is 0
    norm.update(data)
    std = norm.std()
    assert std[3] == pytest.approx(0.1 * norm.var.sqrt().mean().item())
    jumped = data[:1].clone()
    jumped[0, 3] += 0.05
    out = norm(jumped)
    assert out.abs().max() <= 5.0  # bounded
    assert out[0, 3].item() == pytest.approx(5 * torch.tanh(0.05 / std[3] / 5).item(), rel=1e-5)


def test_keypoint_norm_passes_gradient_to_keypoints_not_to_statistics():
    norm = KeypointNorm(4)
    norm.update(torch.randn(32, 4))
    keypoints = torch.randn(8, 4, requires_grad=True)
    norm(keypoints).sum().backward()
    assert keypoints.grad.abs().min() > 0
    assert not any(b.requires_grad for b in norm.buffers())


@pytest.mark.parametrize("trunk", ["running", "layernorm", "linear", "none"])
def test_keypoint_trunks(trunk):
    enc = ImageEncoder(NetworkConfig(keypoint_trunk=trunk), 12, 84)
    pixels = torch.randint(0, 256, (5, 12, 84, 84), dtype=torch.uint8)
    keypoints = enc.pre_trunk(pixels)
    assert keypoints.shape == (5, 64) and keypoints.abs().max() <= 1.0
    out = enc(pixels, update_stats=True)
    assert out.shape == (5, 50 if trunk == "linear" else 64)
    if trunk == "none":
        assert torch.equal(out, keypoints)
    if trunk == "running":
        torch.testing.assert_close(enc.trunk.mean, keypoints.mean(0))


def test_the_update_alone_moves_the_statistics_and_the_target_encoder_reads_them():
    agent = make_agent(**AUX)
    trunk = agent.critic_encoder.image.trunk
    assert agent.target_encoder.image.trunk is trunk  # one set of statistics
    agent.act(random_obs(4, torch.Generator().manual_seed(0)))
    assert trunk.batches_seen.item() == 0  # acting does not move them
    batch = random_batch(seed=1)
    with torch.no_grad():  # the keypoints of obs before the update moves the encoder
        keypoints = agent.critic_encoder.image.pre_trunk(batch.obs[PIXELS])
    agent.update(batch)
    assert trunk.batches_seen.item() == 1  # obs only, not next obs
    torch.testing.assert_close(trunk.mean, keypoints.mean(0))
    state = agent.state()["networks"]
    assert torch.equal(
        state["target_encoder.image.net.2.mean"], state["critic_encoder.image.net.2.mean"]
    )


def test_initial_temperature_is_a_flag():
    enc = ImageEncoder(NetworkConfig(spatial_softmax_temperature=0.1), 12, 84)
    assert enc.spatial_softmax.temperature.item() == pytest.approx(0.1)


def test_temperature_saved_before_it_was_learned_as_a_log_still_loads():
    ss = SpatialSoftmax(21, 21)
    ss.load_state_dict({"temperature": torch.tensor([2.0]), "pos_x": ss.pos_x, "pos_y": ss.pos_y})
    assert ss.temperature.item() == pytest.approx(2.0)
    assert ss.log_temperature.requires_grad


# ---------------------------------------------------------------- the state head
@pytest.mark.parametrize("routing", ["critic", "actor", "separate"])
def test_aux_loss_trains_the_encoder_through_its_owners_optimizer(routing):
    agent = make_agent(routing, **AUX)
    owners = {
        "critic": [("critic", agent.critic_encoder)],
        "actor": [("actor", agent.actor_encoder)],
        "separate": [("critic", agent.critic_encoder), ("actor", agent.actor_encoder)],
    }[routing]
    for name, encoder in owners:
        held = {
            id(p) for g in getattr(agent, f"{name}_optimizer").param_groups for p in g["params"]
        }
        assert {id(p) for p in encoder.state_head.parameters()} <= held
    # The auxiliary loss alone gives the convolutions a gradient through the head.
    batch = random_batch()
    obs = agent.normalizer(batch.obs)
    for _, encoder in owners:
        parts = encoder.parts(obs)
        agent._aux_loss(encoder, parts, obs[ACHIEVED_GOAL]).backward()
        conv = encoder.image.net[0].convs[0].weight
        assert conv.grad is not None and conv.grad.abs().sum() > 0
    metrics = agent.update(batch)
    assert metrics["aux_loss"] > 0 and not metrics["aux_loss"].requires_grad


def test_aux_off_means_no_head_no_loss_and_the_previous_networks():
    agent = make_agent()
    assert agent.critic_encoder.state_head is None
    assert "aux_loss" not in agent.update(random_batch())
    assert not any("state_head" in k for k in agent.state()["networks"])


def test_aux_coef_scales_the_encoder_gradient_of_the_critic_step():
    """The critic step's encoder gradient is the TD gradient plus coef x the aux gradient."""

    def conv_grad(coef):
        agent = make_agent(net=NetworkConfig(keypoint_trunk="running"), aux_coef=coef)
        grads = {}
        original = agent.critic_optimizer.step

        def capture(*args, **kwargs):
            grads["conv"] = agent.critic_encoder.image.net[0].convs[0].weight.grad.clone()
            return original(*args, **kwargs)

        agent.critic_optimizer.step = capture
        torch.manual_seed(0)
        agent.update(random_batch())
        return grads["conv"]

    td, with_1, with_2 = conv_grad(1e-12), conv_grad(1.0), conv_grad(2.0)
    aux = with_1 - td
    assert aux.abs().sum() > 0
    # Linear in the coefficient, to float32 rounding of sums of ~1e-4-sized terms.
    torch.testing.assert_close(with_2 - td, 2 * aux, rtol=0, atol=1e-3 * aux.abs().max().item())


def test_state_estimate_joins_the_features_detached():
    agent = make_agent(
        net=NetworkConfig(keypoint_trunk="running", state_estimate="append"), aux_coef=1.0
    )
    encoder = agent.critic_encoder
    assert encoder.features_dim == 64 + 10 + 3 + 3 + 3
    obs = agent.normalizer(random_obs(6, torch.Generator().manual_seed(2)))
    parts = encoder.parts(obs)
    assert list(parts)[-1] == STATE_ESTIMATE
    torch.testing.assert_close(parts[STATE_ESTIMATE], encoder.state_head(parts[PIXELS]))
    # The critic's gradient does not reach the head: only the auxiliary loss trains it.
    q1, q2 = agent.critic(encoder.join(parts), torch.zeros(6, 4))
    (q1 + q2).sum().backward()
    assert all(p.grad is None for p in encoder.state_head.parameters())
    assert agent.act(random_obs(3, torch.Generator().manual_seed(3))).shape == (3, 4)


def test_estimate_only_replaces_the_image_features_and_only_the_aux_loss_trains_the_encoder():
    agent = make_agent(
        net=NetworkConfig(keypoint_trunk="running", state_estimate="only"), aux_coef=1.0
    )
    encoder = agent.critic_encoder
    assert encoder.inputs == [PROPRIOCEPTION, ACHIEVED_GOAL, DESIRED_GOAL, STATE_ESTIMATE]
    assert encoder.features_dim == 10 + 3 + 3 + 3  # no keypoints
    obs = agent.normalizer(random_obs(6, torch.Generator().manual_seed(2)))
    parts = encoder.parts(obs)
    assert PIXELS in parts  # the aux loss and the diagnostics read them
    q1, q2 = agent.critic(encoder.join(parts), torch.zeros(6, 4))
    (q1 + q2).sum().backward()
    assert all(p.grad is None for p in encoder.image.parameters())
    metrics = agent.update(random_batch())  # the aux loss trains it
    assert metrics["aux_loss"] > 0
    assert encoder.image.net[0].convs[0].weight.grad.abs().sum() > 0


GOAL_FROM_PIXELS = [PIXELS, PROPRIOCEPTION, DESIRED_GOAL]  # --goal-mode desired


def _agent(privileged=True, state_estimate="only", keys=GOAL_FROM_PIXELS, **sac):
    """The recipe with the achieved goal left to the image, the image in SAC's update
    (`--encoder-grad critic` unless given); the normalization statistics are those of the first
    batch (frozen after it), so that a changed batch changes only what reads it."""
    torch.manual_seed(0)
    net = NetworkConfig(state_estimate=state_estimate, obs_norm_freeze_after=1)
    sac = SACConfig(aux_coef=1.0, privileged_critic=privileged, **{"encoder_grad": "critic", **sac})
    return SAC(SHAPES, keys, [-1.0] * 4, [1.0] * 4, net, sac)


def _with_achieved_goal(batch, obs_goal=None, next_goal=None):
    """The batch with the achieved goal of obs and/or next obs replaced; nothing else."""
    obs, next_obs = dict(batch.obs), dict(batch.next_obs)
    if obs_goal is not None:
        obs[ACHIEVED_GOAL] = obs_goal
    if next_goal is not None:
        next_obs[ACHIEVED_GOAL] = next_goal
    return dataclasses.replace(batch, obs=obs, next_obs=next_obs)


@pytest.mark.parametrize("state_estimate", ["only", "append"])
@pytest.mark.parametrize("privileged", [False, True])
def test_privileged_critic_reads_the_true_achieved_goal_and_the_actor_the_estimate(
    state_estimate, privileged
):
    """Q of obs depends on obs' achieved goal, and the target on next obs', exactly when the
    critic is privileged. obs' achieved goal is also the auxiliary loss's target, so Q is
    compared on the first update, before any step moved the heads; the target is read through
    the critic loss, where next obs' achieved goal is read by nothing else."""
    batch = random_batch(16, seed=3)
    moved = torch.rand(16, 3, generator=torch.Generator().manual_seed(9)) + 0.5

    def update(changed_batch):
        agent = _agent(privileged, state_estimate)
        agent.normalizer.update(batch.obs)  # the statistics of the unchanged batch, frozen
        torch.manual_seed(0)
        return agent.update(changed_batch)

    base = update(batch)
    q_moved = update(_with_achieved_goal(batch, obs_goal=moved))
    target_moved = update(_with_achieved_goal(batch, next_goal=moved))
    q_differs = not torch.equal(base["q_mean"], q_moved["q_mean"])
    target_differs = not torch.equal(base["critic_loss"], target_moved["critic_loss"])
    assert (q_differs, target_differs) == (privileged, privileged)


@pytest.mark.parametrize("routing", ["critic", "actor", "separate"])
@pytest.mark.parametrize("next_obs_encoder", ["online", "target", "split"])
def test_every_critic_call_reads_the_true_goal_and_every_actor_call_the_estimate(
    routing, next_obs_encoder
):
    """The estimate's slot (the last 3 inputs) of each call of each head in one update and one
    act: Q in the critic step and in the actor step read obs' true achieved goal, the target Q
    next obs'; the next action, the actor step and acting read the state head's estimate."""
    agent = _agent(encoder_grad=routing, next_obs_encoder=next_obs_encoder)
    seen = {"critic": [], "target_critic": [], "actor": []}
    for name, calls in seen.items():
        getattr(agent, name).register_forward_pre_hook(
            lambda module, args, _calls=calls: _calls.append(args[0][:, -3:].detach().clone())
        )
    batch = random_batch(16, seed=3)
    agent.normalizer.update(batch.obs)  # frozen after it: the update scales as here
    goal = agent.normalizer(batch.obs)[ACHIEVED_GOAL]
    next_goal = agent.normalizer(batch.next_obs)[ACHIEVED_GOAL]
    agent.update(batch)
    assert len(seen["critic"]) == 2 and len(seen["target_critic"]) == 1
    for read in seen["critic"]:
        torch.testing.assert_close(read, goal, rtol=0, atol=0)
    torch.testing.assert_close(seen["target_critic"][0], next_goal, rtol=0, atol=0)
    assert len(seen["actor"]) == 2  # the next action, the actor step
    for read in seen["actor"]:
        assert not torch.isclose(read, goal).any() and not torch.isclose(read, next_goal).any()
    # Acting reads no achieved goal: the actor reads the estimate, from the image alone.
    obs = random_obs(5, torch.Generator().manual_seed(4))
    del obs[ACHIEVED_GOAL]
    assert agent.act(obs, deterministic=True).shape == (5, 4)
    encoder = agent.actor_encoder
    estimate = encoder.state_head(encoder.parts(agent.normalizer(obs))[PIXELS])
    torch.testing.assert_close(seen["actor"][-1], estimate)


def test_privileged_critic_puts_the_normalized_goal_where_the_estimate_was():
    agent = _agent()
    batch = random_batch(6, seed=5)
    obs = agent.normalizer(batch.obs)
    parts = agent.critic_encoder.parts(obs)
    view = agent._critic_view(parts, obs)
    assert list(view) == list(parts)  # the same parts in the same order: the same join
    torch.testing.assert_close(view[STATE_ESTIMATE], obs[ACHIEVED_GOAL])
    assert not torch.equal(parts[STATE_ESTIMATE], obs[ACHIEVED_GOAL])
    assert agent.critic_encoder.join(view).shape[-1] == agent.critic_encoder.features_dim


def test_privileged_critic_is_on_where_the_actor_reads_the_estimate_in_the_goals_place():
    """On by default; with no estimate (--state-estimate off) or the achieved goal an input
    of both networks (--goal-mode both) the critic reads what the actor reads, its encoder's
    parts, and no flag combination is refused for it."""
    coupled = SACConfig(encoder_grad="critic")
    default = SAC(SHAPES, GOAL_FROM_PIXELS, [-1.0] * 4, [1.0] * 4, NetworkConfig(), coupled)
    assert default.privileged_critic
    assert not _agent(privileged=False).privileged_critic
    batch = random_batch(6, seed=5)
    no_image = [PROPRIOCEPTION, DESIRED_GOAL]
    for agent in (_agent(state_estimate="off"), _agent(keys=KEYS), _agent(keys=no_image)):
        assert not agent.privileged_critic
        obs = agent.normalizer(batch.obs)
        parts = agent.critic_encoder.parts(obs)
        assert agent._critic_view(parts, obs) is parts
    for env, network in (
        (EnvConfig(goal_mode="both"), NetworkConfig()),
        (EnvConfig(no_pixels=True), NetworkConfig()),
        (EnvConfig(goal_mode="desired"), NetworkConfig(state_estimate="off")),
        (EnvConfig(goal_mode="desired"), NetworkConfig()),  # where it applies
    ):
        validate(TrainConfig(env=env, network=network, sac=coupled))


@pytest.mark.parametrize("obs_mode", ["pixels", "no-pixels", "full-state"])
def test_resume_and_the_tag_read_the_privileged_critic_as_the_built_agent_resolves_it(obs_mode):
    """Resume and the run tag read the flag through privileged_critic_applies; the agent
    resolves it from its encoder's inputs and keys. For every combination that validates,
    with the flag on, the two agree (off, the agent never applies it)."""
    env = EnvConfig(
        env_id="FetchReach-v4",
        n_envs=1,
        image_size=48,
        no_pixels=obs_mode == "no-pixels",
        full_state=obs_mode == "full-state",
    )
    spec, obs_space, action_space = describe_env(env)
    applied = set()
    for goal_mode, state_estimate, aux_coef, privileged, routing in itertools.product(
        ("none", "desired", "both"),
        ("off", "append", "only"),
        (0.0, 1.0),
        (True, False),
        ("estimator", "critic"),
    ):
        cfg = TrainConfig(
            env=dataclasses.replace(env, goal_mode=goal_mode),
            network=NetworkConfig(state_estimate=state_estimate),
            sac=SACConfig(aux_coef=aux_coef, privileged_critic=privileged, encoder_grad=routing),
        )
        try:
            validate(cfg)
        except ConfigError:
            continue
        agent = build_agent(cfg, spec, obs_space, action_space, torch.device("cpu"))
        expected = privileged and privileged_critic_applies(cfg)
        assert agent.privileged_critic == expected, (goal_mode, state_estimate, aux_coef)
        if expected:
            applied.add((goal_mode, state_estimate))
    # It applies only with pixels, and there exactly with an estimate and no achieved goal.
    if obs_mode == "pixels":
        assert applied == {(g, e) for g in ("none", "desired") for e in ("append", "only")}
    else:
        assert not applied


def test_early_runs_boolean_state_estimate_reads_as_append():
    assert NetworkConfig(state_estimate=True).state_estimate == "append"
    assert NetworkConfig(state_estimate=False).state_estimate == "off"


def test_aux_target_is_the_normalized_achieved_goal_even_when_the_networks_do_not_see_it():
    torch.manual_seed(0)
    from pixelrl.agents.sac import SAC

    keys = [PIXELS, DESIRED_GOAL]
    sac = SACConfig(aux_coef=1.0, encoder_grad="critic")
    agent = SAC(SHAPES, keys, [-1.0] * 4, [1.0] * 4, NetworkConfig(), sac)
    assert agent.critic_encoder.keys == keys  # the achieved goal is no input
    assert agent.normalizer.groups["goal"] == [DESIRED_GOAL, ACHIEVED_GOAL]
    agent.update(random_batch())


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(sac=SACConfig(aux_coef=0.0)), "with --aux-coef 0 pass --state-estimate off"),
        (
            dict(network=NetworkConfig(state_estimate="instead"), sac=SACConfig(aux_coef=1.0)),
            "--state-estimate 'instead'",
        ),
        (dict(network=NetworkConfig(normalize_obs=False)), "--no-normalize-obs"),
        (dict(sac=SACConfig(aux_coef=-1.0)), "--aux-coef"),
        (dict(network=NetworkConfig(spatial_softmax_temperature=0.0)), "--spatial-softmax-temp"),
        (dict(network=NetworkConfig(keypoint_trunk="batchnorm")), "--keypoint-trunk"),
    ],
)
def test_bad_encoder_flags_name_the_flag(change, message):
    with pytest.raises(ConfigError, match=message):
        validate(TrainConfig(**change))


SB3_PROTOTYPE_COMMAND = (
    "python train.py --goal-mode both --frame-stack 4 --learning-rate 1e-4 --gradient-steps 1 "
    "--buffer-size 500000 --encoder-grad critic --keypoint-trunk layernorm --aux-coef 0 "
    "--state-estimate off --next-obs-encoder target --no-normalize-obs"
)


def test_the_recipe_is_the_default_and_the_sb3_prototypes_settings_one_command():
    """The README's command for the SB3 prototype's settings gives its hyperparameters and
    architecture: 4 stacked frames, both goals as inputs, lr 1e-4, one update per vector step,
    the image in the critic's update, LayerNorm over the keypoints, no auxiliary loss."""
    import shlex
    from pathlib import Path

    import tyro

    from pixelrl.build import TAG_REFERENCE, config_tag

    recipe = TrainConfig()
    assert (recipe.network.keypoint_trunk, recipe.network.state_estimate) == ("running", "only")
    assert (recipe.sac.aux_coef, recipe.sac.encoder_grad) == (1.0, "estimator")
    validate(recipe)
    validate(TrainConfig(env=EnvConfig(full_state=True)))  # no image: the recipe's parts idle
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert SB3_PROTOTYPE_COMMAND in readme.replace("\\ ", "")
    prototype = tyro.cli(
        TrainConfig,
        args=shlex.split(SB3_PROTOTYPE_COMMAND)[2:],
        config=(tyro.conf.OmitArgPrefixes,),
    )
    validate(prototype)
    assert (prototype.env.goal_mode, prototype.env.frame_stack) == ("both", 4)
    assert (prototype.sac.learning_rate, prototype.sac.gradient_steps) == (1e-4, 1)
    assert prototype.replay.buffer_size == 500_000 and prototype.sac.batch_size == 256
    assert dataclasses.replace(prototype, network=TAG_REFERENCE.network) == dataclasses.replace(
        TAG_REFERENCE,
        sac=dataclasses.replace(TAG_REFERENCE.sac, aux_coef=0.0, next_obs_encoder="target"),
    )
    assert config_tag(prototype) == "manip_kp-layernorm_estimate-off_noNorm_aux0_next-target"
    torch.manual_seed(0)
    from pixelrl.agents.sac import SAC

    agent = SAC(SHAPES, KEYS, [-1.0] * 4, [1.0] * 4, prototype.network, prototype.sac)
    assert agent.critic_encoder.state_head is None
    assert agent.critic_encoder.features_dim == 64 + 10 + 3 + 3  # the prototype's 80 features


def test_a_run_saved_before_the_recipe_reads_back_as_it_ran():
    from pixelrl.config import from_dict, to_dict

    saved = to_dict(TrainConfig())
    for section, key in (("network", "keypoint_trunk"), ("network", "state_estimate")):
        del saved[section][key]
    del saved["sac"]["aux_coef"]
    del saved["sac"]["privileged_critic"]
    old = from_dict(TrainConfig, saved)
    assert (old.network.keypoint_trunk, old.network.state_estimate) == ("layernorm", "off")
    assert old.sac.aux_coef == 0.0
    assert not old.sac.privileged_critic  # the critic read the estimate before the flag


# ---------------------------------------------------------------- the diagnostics
def test_identical_images_have_no_spread_across_the_batch():
    # The LayerNorm trunk: where `features.std()` read the old `encoder/pixels_std`.
    encoder = ObservationEncoder(NetworkConfig(keypoint_trunk="layernorm"), SHAPES, KEYS)
    one = torch.randint(0, 256, (1, *SHAPES[PIXELS]), dtype=torch.uint8)
    with torch.no_grad():
        same = encoder.image(one.expand(32, -1, -1, -1).contiguous())
        different = encoder.image(torch.randint(0, 256, (32, *SHAPES[PIXELS]), dtype=torch.uint8))
    assert spread_across_batch(same).max() < 1e-5
    assert same.std() > 0.1  # what `features.std()` reported: spread within each sample
    assert spread_across_batch(different).mean() > 10 * spread_across_batch(same).mean()


def test_linear_probe_reads_a_linear_code_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    goal = torch.rand(512, 3, generator=gen) * 0.3
    mixing = torch.randn(3, 64, generator=gen)
    features = goal @ mixing + 0.001 * torch.randn(512, 64, generator=gen)
    r2, error = linear_probe(features, goal)
    assert r2 > 0.99 and error < 0.005
    r2, error = linear_probe(torch.randn(512, 64, generator=gen), goal)
    assert r2 < 0.2 and error > 0.1
    constant = torch.zeros(512, 64)  # features that carry nothing give the mean's error
    r2, _ = linear_probe(constant, goal)
    assert abs(r2) < 0.05
    # The same code at a scale too small for the heads to read counts for little.
    r2, _ = linear_probe(1e-4 * (goal @ mixing), goal)
    assert r2 < 0.1


def test_r_squared_is_one_for_exact_zero_for_the_mean_and_pools_dimensions():
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(256, 3, generator=gen) * torch.tensor([0.1, 0.1, 0.01])
    assert r_squared(target, target) == 1
    assert abs(r_squared(target.mean(0).expand_as(target), target)) < 1e-6
    # An error in the dimension that barely varies weighs by the pooled spread, not its own.
    off = target.clone()
    off[:, 2] = 0
    assert r_squared(off, target) > 0.98


def test_agent_diagnostics_probe_the_image_features():
    agent = make_agent(**AUX)
    obs = random_obs(64, torch.Generator().manual_seed(4))
    diag = agent.encoder_diagnostics(obs)
    assert -10 < diag["probe/achieved_goal_r2"] < 1
    assert diag["probe/state_estimate_median_error_cm"] > 0
    assert diag["probe/state_estimate_r2"] < 1  # an untrained head
    assert diag["encoder/keypoints_std_across_batch"] > 0
