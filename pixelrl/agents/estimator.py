"""Two learners sharing one replay: a state estimator that reads the image, and SAC on vectors.

With `--encoder-grad estimator` (the default with pixels) the image is the estimator's alone:

    StateEstimator  image (B, 3k, H, W) uint8 -> ImageEncoder (ManipulationCNN -> SpatialSoftmax
                    -> keypoints normalized across the data) -> MLP -> estimate of the achieved
                    goal (the gripper in Reach, the object in Push), in normalized goal units.
                    Its loss: the MSE against the true achieved goal, which the replay stores
                    for HER (privileged at training time only; Pinto et al. 2018,
                    arXiv:1710.06542). Its own Adam, batch and steps per round.
    SAC             (pixelrl/agents/sac.py) on vectors: the actor reads proprioception, the
                    desired goal and the estimate; the critic the true achieved goal in the
                    estimate's place (the privileged critic). No image reaches its update, so
                    an update costs what the no-pixels control's does.

No RL loss reaches the encoder. That was already so with `--state-estimate only` under the
other routings, whose every SAC update still encoded its batch's images (for the auxiliary
loss and the estimate the actor reads): about 98% of that update's time on a CPU
(benchmarks/RESULTS.md).

The estimates SAC trains on are stored: the replay keeps one beside each frame, in metres,
written by the current estimator when an episode enters the replay and rewritten, the stalest
first, `--estimate-refresh-episodes` episodes per training round, so that they follow the
estimator as it improves (`estimate/*` in the logs say how far they lag). Acting estimates the
newest frames and hands the estimate to the actor, as the stored ones are handed to it in
training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixelrl.agents.sac import SAC
from pixelrl.buffers.replay import Batch
from pixelrl.config import NetworkConfig
from pixelrl.diagnostics import median_distance_cm, spread_across_batch, where_things_are
from pixelrl.envs import ACHIEVED_GOAL, PIXELS, STATE_ESTIMATE
from pixelrl.nets.encoders import STATE_HEAD_HIDDEN, ImageEncoder
from pixelrl.nets.heads import mlp

ESTIMATE_CHUNK = 256  # frames per encoder pass when estimating many (acting, refreshing)


class StateEstimator(nn.Module):
    """image -> keypoints -> estimate of the achieved goal, with its own supervised loss and
    optimizer.

    Args:
        cfg: the image encoder's settings (--encoder, --keypoint-trunk, ...).
        pixels_shape: (3k, H, W) of the stacked frames it reads.
        goal_dim: size of the achieved goal it estimates.
        learning_rate: its Adam's.
        loss_coef: weight of its loss (--aux-coef).
        device: where it lives.
    """

    def __init__(
        self,
        cfg: NetworkConfig,
        pixels_shape: tuple[int, int, int],
        goal_dim: int,
        learning_rate: float,
        loss_coef: float = 1.0,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        channels, height, width = pixels_shape
        if height != width:
            raise ValueError(f"square images expected, got {height}x{width}")
        self.image = ImageEncoder(cfg, channels, height)
        with torch.no_grad():
            features_dim = self.image(torch.zeros((1, *pixels_shape), dtype=torch.uint8)).shape[-1]
        self.head = mlp(features_dim, STATE_HEAD_HIDDEN, goal_dim)
        self.loss_coef = loss_coef
        self.to(device)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=learning_rate)

    def forward(self, pixels: torch.Tensor, update_stats: bool = False) -> torch.Tensor:
        """pixels (B, 3k, H, W) uint8 -> the estimate (B, G) in normalized goal units.
        `update_stats`: the keypoints' running statistics first take in this batch."""
        return self.head(self.image(pixels, update_stats))

    def update(self, pixels: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """One gradient step on frames (B, 3k, H, W) uint8 and their normalized achieved goal
        (B, G): minimize the MSE of the estimate."""
        loss = F.mse_loss(self(pixels, update_stats=True).float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        (self.loss_coef * loss).backward()
        self.optimizer.step()
        return {"aux_loss": loss.detach()}


class EstimatorAgent(nn.Module):
    """The state estimator and SAC as one agent: acts, trains either learner, saves both.

    `sac` reads vectors only: its keys hold `STATE_ESTIMATE` where the image was, and the
    replay's batches carry the stored estimates under that key (in metres, normalized by
    SAC's goal statistics like the goals beside them).
    """

    def __init__(self, estimator: StateEstimator, sac: SAC):
        super().__init__()
        self.estimator = estimator
        self.sac = sac

    @property
    def normalizer(self):
        return self.sac.normalizer

    @property
    def device(self) -> torch.device:
        return self.sac.device

    @property
    def privileged_critic(self) -> bool:
        return self.sac.privileged_critic

    has_state_estimate = True  # `estimate_achieved_goal` answers, as SAC's with a state head

    @torch.no_grad()
    def estimate(self, pixels: torch.Tensor) -> torch.Tensor:
        """The estimate of the achieved goal (B, G) in metres for frames (B, 3k, H, W) uint8,
        in chunks of ESTIMATE_CHUNK frames."""
        normalized = torch.cat([self.estimator(chunk) for chunk in pixels.split(ESTIMATE_CHUNK)])
        return self.normalizer.denormalize(ACHIEVED_GOAL, normalized)

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor], deterministic: bool = False) -> torch.Tensor:
        """Actions (N, A): the actor on the vectors and the estimate from the stacked frames."""
        return self.sac.act({**obs, STATE_ESTIMATE: self.estimate(obs[PIXELS])}, deterministic)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One SAC update on a batch of vectors with stored estimates (no pixels needed)."""
        return self.sac.update(batch)

    def update_estimator(
        self, pixels: torch.Tensor, achieved_goal: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One estimator step on frames (B, 3k, H, W) uint8 and their achieved goal (B, G) in
        metres, normalized with SAC's goal statistics: the units SAC reads the estimate in."""
        target = self.normalizer({ACHIEVED_GOAL: achieved_goal})[ACHIEVED_GOAL]
        return self.estimator.update(pixels, target)

    @torch.no_grad()
    def estimate_achieved_goal(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The estimate (B, G) in metres from raw obs, for analyses."""
        return self.estimate(obs[PIXELS])

    @torch.no_grad()
    def encoder_diagnostics(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Where things are, for stored observations (raw, with the achieved goal and the stored
        estimate, if written yet): SAC's input spreads, `pixelrl.diagnostics.where_things_are`
        for the current estimator, and how far the stored estimates SAC trains on are from the
        truth and from the current estimator's (`estimate/stored_error_cm`,
        `estimate/staleness_cm`: medians, cm)."""
        fresh = self.estimate(obs[PIXELS])
        vectors = {STATE_ESTIMATE: fresh} | {k: v for k, v in obs.items() if k != PIXELS}
        out = self.sac.encoder_diagnostics(vectors)
        image = self.estimator.image
        keypoints = image.pre_trunk(obs[PIXELS])
        features = image.trunk(keypoints)
        out["encoder/pixels_std_across_batch"] = spread_across_batch(features).mean()
        if image.spatial_softmax is not None:
            out["encoder/spatial_softmax_temperature"] = image.spatial_softmax.temperature[0]
        else:
            keypoints = None
        out.update(where_things_are(features, obs[ACHIEVED_GOAL], fresh, keypoints))
        if STATE_ESTIMATE in obs:
            stored = obs[STATE_ESTIMATE]
            out["estimate/stored_error_cm"] = median_distance_cm(stored, obs[ACHIEVED_GOAL])
            out["estimate/staleness_cm"] = median_distance_cm(stored, fresh)
        return out

    def state(self) -> dict:
        """Both learners' networks and optimizers as state dicts (for checkpoints): SAC's as
        `SAC.state` gives them, and the estimator's beside."""
        return self.sac.state() | {
            "estimator": self.estimator.state_dict(),
            "estimator_optimizer": self.estimator.optimizer.state_dict(),
        }

    def load_state(self, state: dict) -> None:
        self.sac.load_state(state)
        self.estimator.load_state_dict(state["estimator"])
        self.estimator.optimizer.load_state_dict(state["estimator_optimizer"])
