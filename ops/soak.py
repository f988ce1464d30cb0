"""Chaos soak: a training run whose env workers are killed and frozen while it trains.

    python ops/soak.py --minutes 20                 # the recorded soak (RELIABILITY.md)
    python ops/soak.py --seconds 40 --kill-every 4  # the short one the test suite runs

train.py runs in its own process group (as a scheduler starts it) with 2 async envs. Every
`--kill-every` seconds a random worker gets SIGKILL; every `--freeze-every` seconds one gets
SIGSTOP and, after `--freeze-for` seconds (shorter than --worker-timeout), SIGCONT; once, a
worker is frozen for longer than --worker-timeout (a hang the learner must replace). The soak
waits for the learner to report each failure before the next one, then sends SIGTERM to the
whole process group, and resumes the run for `--resume-steps` more env steps. It prints a table
(and, with --json, the same as JSON) of what was done and what came out: failures caused,
restarts counted in the checkpoint and in TensorBoard, env steps, transitions stored, steps
dropped with partial episodes, the replay's consistency problems, and the exit codes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAILURE_LINE = re.compile(r"warning: env \d+'s worker failed at env step")


def children(pid: int) -> list[int]:
    """Live child processes of `pid` (the learner's env workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


class Learner:
    """train.py in its own process group; counts the worker failures it reports."""

    def __init__(self, args: list[str]):
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.failures_reported = 0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            if FAILURE_LINE.search(line):
                self.failures_reported += 1

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if predicate():
                return True
            time.sleep(0.1)
        return predicate()

    def workers(self) -> list[int]:
        return children(self.process.pid)

    def finish(self, timeout: float = 300) -> int:
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code


def train_args(a, runs_dir: str, total_steps: int, resume: bool) -> list[str]:
    args = [
        "--env-id", "FetchReach-v4", "--n-envs", "2", "--vector", "async",
        "--buffer-size", "20000", "--batch-size", "32", "--learning-starts", "200",
        "--total-steps", str(total_steps), "--checkpoint-freq", str(a.checkpoint_freq),
        "--log-interval", "100", "--runs-dir", runs_dir, "--no-progress",
        "--worker-timeout", str(a.worker_timeout),
        "--max-worker-restarts-per-hour", "100000",
    ]  # fmt: skip
    if a.pixels:
        args += ["--image-size", "48"]
    else:
        args += ["--no-pixels"]
    return args + (["--resume"] if resume else [])


def soak(a) -> dict:
    from pixelrl.analysis.replay_check import replay_problems
    from pixelrl.build import load_saved_replay
    from pixelrl.checkpoint import latest_checkpoint

    runs_dir = a.runs_dir or tempfile.mkdtemp(prefix="pixelrl-soak-")
    rng = random.Random(a.seed)
    learner = Learner(train_args(a, runs_dir, 10**9, resume=False))
    caused = {"kills": 0, "short freezes": 0, "long freezes": 0}
    try:
        if not learner.wait_for(lambda: len(learner.workers()) == 2, 300):
            raise RuntimeError("train.py did not start its workers:\n" + "".join(learner.lines))
        time.sleep(5.0)  # into training
        end = time.monotonic() + a.seconds
        next_kill = time.monotonic() + a.kill_every
        next_freeze = time.monotonic() + a.freeze_every
        long_freeze_done = False
        while time.monotonic() < end:
            if time.monotonic() >= next_freeze:
                victim = rng.choice(learner.workers())
                if not long_freeze_done:  # once: a hang the learner must replace
                    expected = learner.failures_reported + 1
                    os.kill(victim, signal.SIGSTOP)
                    learner.wait_for(lambda e=expected: learner.failures_reported >= e, 60)
                    caused["long freezes"] += 1
                    long_freeze_done = True
                else:  # shorter than --worker-timeout: nothing may fail
                    os.kill(victim, signal.SIGSTOP)
                    time.sleep(a.freeze_for)
                    os.kill(victim, signal.SIGCONT)
                    caused["short freezes"] += 1
                next_freeze = time.monotonic() + a.freeze_every
            if time.monotonic() >= next_kill:
                expected = learner.failures_reported + 1
                os.kill(rng.choice(learner.workers()), signal.SIGKILL)
                caused["kills"] += 1
                if not learner.wait_for(lambda e=expected: learner.failures_reported >= e, 60):
                    raise RuntimeError("a killed worker was not reported within 60 s")
                learner.wait_for(lambda: len(learner.workers()) == 2, 60)
                next_kill = time.monotonic() + a.kill_every
            time.sleep(0.1)
        time.sleep(1.0)  # a few steps after the last failure
        os.killpg(learner.process.pid, signal.SIGTERM)  # the learner and its workers alike
        first_exit = learner.finish()
    finally:
        if learner.process.poll() is None:
            os.killpg(learner.process.pid, signal.SIGKILL)
    (run_dir,) = Path(runs_dir).glob("*/seed0")  # the one run of this soak
    found = latest_checkpoint(run_dir)
    if found is None:
        raise RuntimeError("no checkpoint after SIGTERM:\n" + "".join(learner.lines[-30:]))
    path, state, meta = found
    stopped_at = meta["step"]
    restarts = sum(state["worker_restarts"])

    resumed = Learner(train_args(a, runs_dir, stopped_at + a.resume_steps, resume=True))
    resume_exit = resumed.finish()
    tensorboard_restarts = _last_scalar(run_dir, "time/worker_restarts")  # both pieces
    final_path, final_state, final_meta = latest_checkpoint(run_dir)
    replay = load_saved_replay(final_path)
    committed = replay.transitions_committed  # the ring may have overwritten some since
    staged = int(replay.staged_steps.sum())
    env_steps = final_state["counters"]["env_step"]
    return {
        "seconds": a.seconds,
        "pixels": a.pixels,
        **caused,
        "failures reported": learner.failures_reported,
        "restarts in checkpoint": restarts,
        "restarts in TensorBoard": tensorboard_restarts,
        "exit code after SIGTERM": first_exit,
        "env step at SIGTERM": stopped_at,
        "exit code of --resume": resume_exit,
        "env steps": env_steps,
        "target env steps": stopped_at + a.resume_steps,
        "episodes committed": replay.episodes_committed,
        "transitions committed": committed,
        "steps staged": staged,
        "steps dropped with partial episodes": env_steps - committed - staged,
        "replay problems": replay_problems(replay),
        "run dir": str(run_dir),
    }


def _last_scalar(run_dir: Path, tag: str) -> float | None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return None
    return events.Scalars(tag)[-1].value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="how long to inflict failures")
    length.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--kill-every", type=float, default=20.0)
    parser.add_argument("--freeze-every", type=float, default=45.0)
    parser.add_argument("--freeze-for", type=float, default=2.0)
    parser.add_argument("--worker-timeout", type=float, default=8.0)
    parser.add_argument("--checkpoint-freq", type=int, default=2000)
    parser.add_argument("--resume-steps", type=int, default=200)
    parser.add_argument("--pixels", action="store_true", help="84x84 -> 48x48 pixels too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", default=None)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    a = parser.parse_args()
    if a.minutes is not None:
        a.seconds = 60 * a.minutes
    if a.freeze_for >= a.worker_timeout:
        parser.error("--freeze-for must be shorter than --worker-timeout")
    os.environ.setdefault("MUJOCO_GL", "egl")
    result = soak(a)
    if a.json:
        print(json.dumps(result))
        return
    print("| what | value |\n|---|---|")
    for key, value in result.items():
        print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
