"""Moving data between the host and the learner's device without stalling the device.

On CUDA, a copy from ordinary (pageable) host memory makes the host wait until the device has
finished everything queued before it; a loop with several such copies per step serializes the
GPU. A copy from pinned (page-locked) host memory with non_blocking=True is queued like a kernel
and the host moves on. `to_device` is the one way host arrays reach the device in the training
loop: on CUDA it stages them in pinned memory (PyTorch's caching host allocator, which keeps a
block alive until its copy has run); on a CPU it wraps the array without copying.

The one deliberate synchronization per vector step is `to_host` of the actions the workers
need.
"""

from __future__ import annotations

import numpy as np
import torch


def to_device(array, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host array (numpy or CPU tensor) on `device`, without a device sync on CUDA."""
    device = torch.device(device)
    tensor = (
        torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array
    )
    if dtype is not None and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    # Only a host tensor is staged in pinned memory; one already on a device moves (or stays:
    # a tensor on cuda:0 is already on "cuda", though the two devices do not compare equal).
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """A device tensor as a numpy array: waits for the device (one sync)."""
    return tensor.cpu().numpy()


def upload_step(to_act_on: dict, next_obs: dict, done: np.ndarray, device: torch.device):
    """The step's observations on the device, copied once.

    `to_act_on` and `next_obs` (what the replay stores) differ only where an episode ended, so
    `to_act_on` goes to the device once and `next_obs` is that copy with the final
    observations of the ended episodes put in. The frame stack and the replay both read these.

    Returns:
        (to_act_on, next_obs): dicts of (N, ...) device tensors; the same tensors when nothing
        ended.
    """
    act_device = {key: to_device(value, device) for key, value in to_act_on.items()}
    ended = np.flatnonzero(done)
    if len(ended) == 0:
        return act_device, act_device
    rows = to_device(ended, device)
    next_device = {}
    for key, value in act_device.items():
        next_device[key] = value.clone()
        next_device[key][rows] = to_device(next_obs[key][ended], device)
    return act_device, next_device
