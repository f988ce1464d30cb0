"""Frame stacks for acting, kept on the learner's device (the workers return single frames)."""

from __future__ import annotations

import numpy as np
import torch

from pixelrl.transfer import to_device


class FrameStack:
    """Stacks of the last k frames per env for acting, kept on the learner's device.

    A new episode starts with k copies of its first frame (as the replay's gather does);
    the newest frame is last: `stacked()[:, -3:]` is the current frame.
    """

    def __init__(self, num_envs: int, k: int, frame_shape: tuple[int, ...], device):
        self.k = k
        self.frames = torch.zeros((num_envs, k, *frame_shape), dtype=torch.uint8, device=device)

    def reset(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Fill every slot with `frames` (N, 3, H, W) where `mask` (N,) is true (all if None)."""
        fill = frames.unsqueeze(1).expand_as(self.frames)
        if mask is None:
            self.frames.copy_(fill)
        else:  # where, not boolean indexing: indexing by a mask makes CUDA wait (nonzero)
            self.frames.copy_(torch.where(mask.view(-1, 1, 1, 1, 1), fill, self.frames))

    def push(self, frames: torch.Tensor, new_episode: np.ndarray | None = None) -> None:
        """Append the newest frames (N, 3, H, W); envs flagged in `new_episode` (N,) bool, on
        the host, restart their stack."""
        self.frames = torch.cat([self.frames[:, 1:], frames.unsqueeze(1)], dim=1)
        if new_episode is not None and new_episode.any():  # decided on the host: no sync
            self.reset(frames, to_device(new_episode, self.frames.device))

    def stacked(self) -> torch.Tensor:
        """(N, 3*k, H, W) uint8, oldest frame first."""
        n, k, c, h, w = self.frames.shape
        return self.frames.reshape(n, k * c, h, w)


def policy_observation(obs: dict, stack: FrameStack | None, device) -> dict[str, torch.Tensor]:
    """What the policy acts on: the env's vectors on `device`, pixels replaced by the stacks."""
    out = {k: to_device(v, device) for k, v in obs.items() if k != "pixels"}
    if stack is not None:
        out["pixels"] = stack.stacked()
    return out
