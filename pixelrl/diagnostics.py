"""Does the image encoder know where things are? The measurements that answer it, and the
report a run logs at each --log-interval (`encoder_report`).

- `spread_across_batch`: per feature, the std across the samples of a batch. A feature that
  reads the same for every image carries nothing, however much the features of one image
  differ from each other (which is what `features.std()` over a whole (B, F) batch mixes in:
  32 identical images gave 0.146 there, 32 random ones 0.163).
- `linear_probe`: how well a linear map reads a position (the achieved goal: the gripper in
  Reach, the object in Push) out of the features, fitted on one half of a batch and scored
  on the other, as R^2 and the median error in the position's units.
"""

from __future__ import annotations

import torch

from pixelrl.envs import ACHIEVED_GOAL, PIXELS, STATE_ESTIMATE

DIAGNOSTIC_SAMPLES = 512  # stored observations per report (the probe: 256 + 256)


def spread_across_batch(features: torch.Tensor) -> torch.Tensor:
    """(B, F) -> (F,): each feature's std across the B samples (ddof 0)."""
    return features.float().std(0, unbiased=False)


def linear_probe(
    features: torch.Tensor, targets: torch.Tensor, ridge: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out ridge regression from features (B, F) to targets (B, D), in float64.

    The first half of the rows fits, the second half scores: w = (X^T X + ridge * n I)^-1 X^T y
    on centred features and targets (an unpenalized intercept). The features are NOT rescaled:
    the probe reads them at the scale the heads see them beside unit-scale inputs, so a feature
    whose spread across samples is well below sqrt(ridge) (~0.03) barely counts, however much
    it would say once amplified (standardized, the features of an untrained encoder already
    place the gripper to ~5 cm: the whole arm moves in the image).

    Returns (R^2, median error) on the held-out half: `r_squared` pooled over the D target
    dimensions (1: exact, <= 0: no better than the mean), and the median over rows of the
    Euclidean error |y - y_hat|.
    """
    x, y = features.detach().double().flatten(1), targets.detach().double()
    half = len(x) // 2
    if half < 2:
        raise ValueError(f"a probe needs at least 4 samples, got {len(x)}")
    x_fit, y_fit, x_test, y_test = x[:half], y[:half], x[half:], y[half:]
    x_mean, y_mean = x_fit.mean(0), y_fit.mean(0)
    x_fit, x_test = x_fit - x_mean, x_test - x_mean
    gram = x_fit.T @ x_fit + ridge * half * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    weights = torch.linalg.solve(gram, x_fit.T @ (y_fit - y_mean))
    prediction = x_test @ weights + y_mean
    error = (y_test - prediction).norm(dim=-1).median()
    return r_squared(prediction, y_test), error


def r_squared(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - sum |y - y_hat|^2 / sum |y - mean(y)|^2 over (B, D) rows, pooled over the D
    dimensions: 1 when exact, 0 for the targets' own mean, negative when worse."""
    residual = ((target - prediction) ** 2).sum()
    total = ((target - target.mean(0)) ** 2).sum().clamp_min(1e-12)
    return 1.0 - residual / total


def where_things_are(
    image_features: torch.Tensor,
    achieved_goal: torch.Tensor,
    estimate: torch.Tensor | None = None,
    keypoints: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The logged answer for one batch of stored observations (B rows each):

    - `encoder/keypoints_std_across_batch`: the SpatialSoftmax coordinates' spread (if given);
    - `probe/achieved_goal_r2`, `probe/achieved_goal_median_error_cm`: the `linear_probe` of
      the achieved goal (metres) from the image features (B, F);
    - `probe/state_estimate_median_error_cm`, `probe/state_estimate_r2`: the state head's
      estimate (B, D) in metres, what the heads read, against the achieved goal.
    """
    out = {}
    if keypoints is not None:
        out["encoder/keypoints_std_across_batch"] = spread_across_batch(keypoints).mean()
    achieved_goal = achieved_goal.double()
    r2, error = linear_probe(image_features, achieved_goal)
    out["probe/achieved_goal_r2"], out["probe/achieved_goal_median_error_cm"] = r2, 100 * error
    if estimate is not None:
        estimate = estimate.double()
        out["probe/state_estimate_median_error_cm"] = median_distance_cm(estimate, achieved_goal)
        out["probe/state_estimate_r2"] = r_squared(estimate, achieved_goal)
    return out


def median_distance_cm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Median over rows of the Euclidean distance between positions (B, D) in metres, in cm."""
    return 100 * (a.double() - b.double()).norm(dim=-1).median()


@torch.no_grad()
def encoder_report(agent, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a run logs of its encoder, on stored observations `obs` (raw: the achieved goal
    and, with the state estimator, the stored estimate included), for a `SAC` or an
    `EstimatorAgent`:

    - `obs_norm/<group>_std`: the mean std of each normalization group;
    - `encoder/<input>_std_across_batch`: the spread of each of SAC's inputs;
    - with an image: `encoder/keypoints_std_across_batch`, the SpatialSoftmax temperature and
      `where_things_are` (the linear probe; the estimate, where there is one);
    - with stored estimates: `estimate/stored_error_cm` (what SAC trains on, against the
      truth) and `estimate/staleness_cm` (against the current estimator's estimate).
    """
    estimator = getattr(agent, "estimator", None)
    sac = agent.sac if estimator is not None else agent
    out = dict(sac.normalizer.describe())
    fresh = agent.estimate(obs[PIXELS]) if estimator is not None else None
    vectors = {k: v for k, v in obs.items() if k != PIXELS or sac.image is not None}
    if fresh is not None:
        vectors.setdefault(STATE_ESTIMATE, fresh)
    inputs = sac.inputs(sac.normalizer(vectors))
    for key in dict.fromkeys(sac.actor_keys + sac.critic_keys):
        out[f"encoder/{key}_std_across_batch"] = spread_across_batch(inputs[key]).mean()
    image = estimator.image if estimator is not None else sac.image
    if image is None:
        return out
    keypoints = image.keypoints(obs[PIXELS])
    out["encoder/spatial_softmax_temperature"] = image.spatial_softmax.temperature[0]
    features = image.keypoint_norm(keypoints)
    out["encoder/pixels_std_across_batch"] = spread_across_batch(features).mean()
    out.update(where_things_are(features, obs[ACHIEVED_GOAL], fresh, keypoints))
    if fresh is not None and STATE_ESTIMATE in obs:
        stored = obs[STATE_ESTIMATE]
        out["estimate/stored_error_cm"] = median_distance_cm(stored, obs[ACHIEVED_GOAL])
        out["estimate/staleness_cm"] = median_distance_cm(stored, fresh)
    return out
