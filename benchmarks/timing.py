"""Calls per second of a function, shared by the benchmark scripts."""

from __future__ import annotations

import time


def calls_per_second(
    fn, seconds: float, sync=lambda: None, min_calls: int = 0, warmup: int = 1
) -> float:
    """`warmup` untimed calls, then as many calls as fit in `seconds` (at least `min_calls`).

    `sync` waits for queued device work (torch.cuda.synchronize on CUDA) at both ends.
    """
    for _ in range(warmup):
        fn()
    sync()
    count, start = 0, time.perf_counter()
    while count < min_calls or time.perf_counter() - start < seconds:
        fn()
        count += 1
    sync()
    return count / (time.perf_counter() - start)
