"""TensorBoard scalars with SB3's names, and a one-line progress bar on the terminal."""

from __future__ import annotations

import sys
import time

import torch
from torch.utils.tensorboard import SummaryWriter


class Logger:
    """`log(metrics, step)` is the only place that turns tensors into Python numbers.

    Args:
        purge_step: on resume, the step of the checkpoint; TensorBoard discards events at or
            after it that the interrupted run had written, so no step appears twice.
    """

    def __init__(
        self, log_dir, total_steps: int, purge_step: int | None = None, progress: bool = True
    ):
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)
        self.total_steps = total_steps
        self.show_progress = progress
        self.tty = sys.stdout.isatty()
        self._last_bar = 0.0

    def log(self, metrics: dict, step: int) -> None:
        for name, value in metrics.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            self.writer.add_scalar(name, float(value), step)

    def progress(self, step: int, fps: float, success: float | None, force: bool = False):
        """Steps, fps, ETA and recent success; redrawn in place on a terminal."""
        if not self.show_progress:
            return
        now = time.monotonic()
        if not force and now - self._last_bar < (0.5 if self.tty else 30.0):
            return
        self._last_bar = now
        frac = min(1.0, step / self.total_steps)
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        eta = (self.total_steps - step) / fps if fps > 0 else float("inf")
        eta_text = _duration(eta) if eta != float("inf") else "?"
        succ = f"{success:5.1%}" if success is not None else "  n/a"
        line = (
            f"[{bar}] {step:,}/{self.total_steps:,} steps | {fps:6.1f} fps | "
            f"ETA {eta_text} | success {succ}"
        )
        if self.tty:
            print("\r" + line, end="", flush=True)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.tty and self.show_progress:
            print()
        self.writer.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours:d}:{minutes:02d}:{secs:02d}"
