"""Does the encoder know where things are: the keypoint normalization, and the diagnostics that
judge an encoder (pixelrl.nets.encoders, pixelrl.diagnostics)."""

import pytest
import torch
from test_sac import KEYS, SHAPES, make_agent, random_batch, random_obs

from pixelrl.diagnostics import encoder_report, linear_probe, r_squared, spread_across_batch
from pixelrl.envs import PIXELS
from pixelrl.nets.encoders import ImageEncoder, KeypointNorm


# ---------------------------------------------------------------- the keypoint normalization
def test_an_isolated_keypoint_moves_its_feature_with_running_norm_not_with_layernorm():
    """LayerNorm across one image's 64 coordinates saturates a keypoint far from the others;
    per-dimension statistics across the data keep its movement visible."""
    gen = torch.Generator().manual_seed(0)
    data = 0.01 * torch.randn(256, 64, generator=gen)  # 63 keypoints clustered near the centre
    data[:, 0] = 0.6 + 0.05 * torch.randn(256, generator=gen)  # one keypoint far away
    moved = data[:1].clone()
    moved[0, 0] += 0.02  # about 0.8 px of the 84-px image
    layernorm = torch.nn.Sequential(torch.nn.LayerNorm(64), torch.nn.Tanh())  # the SB3 trunk
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


def test_the_update_alone_moves_the_keypoint_statistics():
    agent = make_agent()
    norm = agent.image.keypoint_norm
    agent.act(random_obs(4, torch.Generator().manual_seed(0)))
    assert norm.batches_seen.item() == 0  # acting does not move them
    batch = random_batch(seed=1)
    with torch.no_grad():  # the keypoints of obs before the update moves the encoder
        keypoints = agent.image.keypoints(batch.obs[PIXELS])
    agent.update(batch)
    assert norm.batches_seen.item() == 1  # obs only, not next obs
    torch.testing.assert_close(norm.mean, keypoints.mean(0))


def test_the_image_encoder_starts_at_temperature_one_and_learns_it():
    encoder = ImageEncoder(12, 84)
    assert encoder.spatial_softmax.temperature.item() == pytest.approx(1.0)
    assert encoder.spatial_softmax.log_temperature.requires_grad


# ---------------------------------------------------------------- the diagnostics
def test_identical_images_have_no_spread_across_the_batch():
    encoder = ImageEncoder(*SHAPES[PIXELS][:2])
    one = torch.randint(0, 256, (1, *SHAPES[PIXELS]), dtype=torch.uint8)
    with torch.no_grad():
        same = encoder.keypoints(one.expand(32, -1, -1, -1).contiguous())
        different = encoder.keypoints(
            torch.randint(0, 256, (32, *SHAPES[PIXELS]), dtype=torch.uint8)
        )
    assert spread_across_batch(same).max() < 1e-6
    assert same.std() > 1e-4  # what `features.std()` reports: spread within each sample
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


def test_the_report_of_an_end_to_end_agent_probes_its_image_features():
    agent = make_agent()
    obs = random_obs(64, torch.Generator().manual_seed(4))
    report = encoder_report(agent, obs)
    assert -10 < report["probe/achieved_goal_r2"] < 1
    assert {f"encoder/{k}_std_across_batch" for k in KEYS} <= set(report)
    assert report["encoder/keypoints_std_across_batch"] > 0
    assert report["encoder/spatial_softmax_temperature"].item() == pytest.approx(1.0)
    assert "probe/state_estimate_median_error_cm" not in report  # no estimator, no estimate
