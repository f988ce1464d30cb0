"""TensorBoard scalars with SB3's names, and a one-line progress bar on the terminal."""

from __future__ import annotations

import collections
import sys
import time

import torch
from torch.utils.tensorboard import SummaryWriter

RECENT_WINDOW_S = 10.0  # the progress bar's fps is the rate over the last 10 seconds


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
        self.start()

    def start(self, step: int = 0) -> None:
        """Measure fps and elapsed time from now, at env step `step`."""
        self._start_time, self._start_step = time.monotonic(), step
        self._recent: collections.deque[tuple[float, int]] = collections.deque()

    def elapsed(self) -> float:
        return time.monotonic() - self._start_time

    def average_fps(self, step: int) -> float:
        """Env steps per second since `start` (SB3's time/fps)."""
        return (step - self._start_step) / max(self.elapsed(), 1e-9)

    def _recent_fps(self, step: int, now: float) -> float:
        self._recent.append((now, step))
        while len(self._recent) > 2 and now - self._recent[0][0] > RECENT_WINDOW_S:
            self._recent.popleft()
        then, then_step = self._recent[0]
        if now - then < 1.0:  # too short a window to say anything: the average so far
            return self.average_fps(step)
        return (step - then_step) / (now - then)

    def log(self, metrics: dict, step: int) -> None:
        for name, value in metrics.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            self.writer.add_scalar(name, float(value), step)

    def progress(self, step: int, success: float | None, force: bool = False) -> None:
        """Steps, recent fps, ETA and recent success; redrawn in place on a terminal."""
        if not self.show_progress:
            return
        now = time.monotonic()
        fps = self._recent_fps(step, now)
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

    def summary(self, step: int) -> str:
        steps = step - self._start_step
        return (
            f"{steps:,} env steps in {_duration(self.elapsed())} "
            f"({self.average_fps(step):.1f} env steps/s on average)"
        )

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
