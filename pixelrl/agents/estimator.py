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

No RL loss reaches the encoder: what the heads read of the image is 3 numbers, and the image
need not be in SAC's update at all (where it was, encoding the batch's images took about 98% of
the update's time on a CPU; benchmarks/RESULTS.md).

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
from pixelrl.envs import ACHIEVED_GOAL, PIXELS, STATE_ESTIMATE
from pixelrl.nets.encoders import STATE_HEAD_HIDDEN, ImageEncoder
from pixelrl.nets.heads import mlp

ESTIMATE_CHUNK = 256  # frames per encoder pass when estimating many (acting, refreshing)


class StateEstimator(nn.Module):
    """image -> keypoints -> estimate of the achieved goal, with its own supervised loss and
    optimizer.

    Args:
        pixels_shape: (3k, H, W) of the stacked frames it reads (square).
        goal_dim: size of the achieved goal it estimates.
        learning_rate: its Adam's.
        device: where it lives.
    """

    def __init__(
        self,
        pixels_shape: tuple[int, int, int],
        goal_dim: int,
        learning_rate: float,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        self.image = ImageEncoder(*pixels_shape[:2])
        self.head = mlp(self.image.features_dim, STATE_HEAD_HIDDEN, goal_dim)
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
        loss.backward()
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

    @torch.no_grad()
    def estimate(self, pixels: torch.Tensor) -> torch.Tensor:
        """The estimate of the achieved goal (B, G) in metres for frames (B, 3k, H, W) uint8,
        in chunks of ESTIMATE_CHUNK frames."""
        normalized = torch.cat([self.estimator(chunk) for chunk in pixels.split(ESTIMATE_CHUNK)])
        return self.normalizer.denormalize(ACHIEVED_GOAL, normalized)

    @torch.no_grad()
    def act(
        self,
        obs: dict[str, torch.Tensor],
        deterministic: bool = False,
        estimate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Actions (N, A): the actor on the vectors and the estimate from the stacked frames,
        or `estimate` (N, G) in metres in its place (evaluation's --true-estimate)."""
        if estimate is None:
            estimate = self.estimate(obs[PIXELS])
        return self.sac.act({**obs, STATE_ESTIMATE: estimate}, deterministic)

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

    def load_weights(self, state: dict) -> None:
        """Both learners' networks alone (to act)."""
        self.sac.load_weights(state)
        self.estimator.load_state_dict(state["estimator"])
