"""The logger: TensorBoard scalars and the progress bar's rates."""

import pytest


def test_progress_shows_the_recent_rate_and_the_summary_the_average(tmp_path, monkeypatch):
    import pixelrl.logger as logger_module

    clock = {"now": 0.0}
    monkeypatch.setattr(logger_module.time, "monotonic", lambda: clock["now"])
    logger = logger_module.Logger(tmp_path, total_steps=10_000, progress=False)
    logger.start(0)
    step = 0
    for _ in range(10):  # the first second: 1,000 steps (random actions, no updates yet)
        clock["now"] += 0.1
        step += 100
        logger._recent_fps(step, clock["now"])
    for _ in range(30):  # then 10 steps/s for 30 s
        clock["now"] += 1.0
        step += 10
        recent = logger._recent_fps(step, clock["now"])
    assert recent == pytest.approx(10.0)  # the last 10 s only
    assert logger.average_fps(step) == pytest.approx(1300 / 31)
    assert "1,300 env steps in 0:00:31 (41.9 env steps/s on average)" in logger.summary(step)
    logger.close()
