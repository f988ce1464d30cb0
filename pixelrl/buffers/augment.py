"""DrQ random shift (Kostrikov et al. 2020, arXiv:2004.13649; Yarats et al. 2021, arXiv:2107.09645).

DrQ pads an image by `pad` pixels with replicate padding and crops a random window of the
original size. Cropping the padded image at offset (oy, ox) equals reading the original at
clamp(y + oy - pad): a shift of the content by (dy, dx) = (pad - oy, pad - ox) with edge pixels
repeated. `shift_images` does exactly that with one gather, so images stay uint8 and nothing
padded is materialized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift_images(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Move each image's content down by dy and right by dx pixels, replicating the edges.

    Args:
        images: (B, C, H, W), any dtype.
        dy, dx: (B,) int64 shifts (negative moves up / left).
    Returns:
        (B, C, H, W) same dtype: out[b, :, y, x] = images[b, :, clamp(y - dy), clamp(x - dx)].
    """
    b, _, h, w = images.shape
    rows = (torch.arange(h, device=images.device) - dy[:, None]).clamp_(0, h - 1)  # (B, H)
    cols = (torch.arange(w, device=images.device) - dx[:, None]).clamp_(0, w - 1)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    # Advanced indices around a slice put the indexed dims first: (B, H, W, C).
    shifted = images[batch, :, rows[:, :, None], cols[:, None, :]]
    return shifted.permute(0, 3, 1, 2)


def shift_images_by_slicing(
    images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int
) -> torch.Tensor:
    """Same result as `shift_images` for |dy|, |dx| <= pad, by one slice copy per image.

    On a CPU this is ~4x faster than the element-wise gather (each copy is a run of
    contiguous rows); on CUDA the gather is one kernel and this loop would be B launches.
    """
    _, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    out = torch.empty_like(images)
    top = (pad - dy).tolist()
    left = (pad - dx).tolist()
    for i, (y0, x0) in enumerate(zip(top, left, strict=True)):
        out[i] = padded[i, :, y0 : y0 + h, x0 : x0 + w]
    return out


def random_shift(
    images: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """DrQ augmentation: an independent uniform shift in [-pad, pad]^2 per image."""
    b = images.shape[0]
    shifts = torch.randint(-pad, pad + 1, (2, b), device=images.device, generator=generator)
    if images.device.type == "cpu":
        return shift_images_by_slicing(images, shifts[0], shifts[1], pad)
    return shift_images(images, shifts[0], shifts[1])
