"""The fps comparison: pixelrl against the SB3 prototype's SB3 pipeline at the same settings.

    pip install -e .[bench]
    python benchmarks/fps.py                  # short: a few minutes on a 2-core CPU
    python benchmarks/fps.py --long           # longer phases, batch 256, two rounds
    python benchmarks/fps.py --device cuda --n-envs 8 --batch-size 256 --long
    python benchmarks/fps.py --variants eager compile     # pixelrl with and without --compile
    python benchmarks/fps.py --recipe pixelrl --renders native   # train.py's defaults

`--recipe` picks the settings both sides run at:

    sb3       the SB3 prototype's (the default): 4 stacked frames, lr 1e-4, both goals as
              inputs, batch 64 (256 with --long), 1 update per vector step; pixelrl with the
              image in SAC's update (--encoder-grad critic), as SB3's policy has it
    pixelrl   train.py's defaults: single frames, lr 1e-3, 4 envs, batch 256, 4 SAC updates
              per vector step; pixelrl with the state estimator (the image leaves SAC's
              update), SB3 at the same frames, lr, batch and updates with its image in every
              update (its policy reads both goals: it cannot leave the puck to the image)

Each (implementation, render path) runs in its own subprocess, in alternating order
(pixelrl native, SB3 native, pixelrl 480-resize, SB3 480-resize, ...), through its real
training entry point: pixelrl's `Trainer.run` and SB3's `SAC.learn`, with the same n_envs,
batch, replay ratio, encoder (ManipulationCNN + SpatialSoftmax), HER k and render path. From
one run each:

    collection fps  env steps/s before learning starts: random actions, env stepping
                    (simulation + render + IPC), storing, frame stacking; no updates
    update-only     SAC updates/s sampling from the filled HER replay, no env
    end-to-end fps  env steps/s once learning runs (acting + stepping + storing + updates)
    peak memory     peak RSS of the learner process, and of the largest env worker; on CUDA
                    also the learner's peak GPU memory (torch.cuda.max_memory_allocated)

`--variants` runs pixelrl once per variant (eager, compile, amp, compile+amp: the train.py
flags --compile and --amp bf16) beside the one SB3 run of each render path and round. With
--compile, compiling happens at the first update, inside the steps skipped before the
end-to-end rate is measured.

pixelrl's side runs with OMP_WAIT_POLICY=PASSIVE, as train.py sets it; SB3's with its defaults.

Rates come from a timeline of (env step, time), so start-up (spawning workers, allocating
the replay) is not counted for either side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _rate(timeline: list[tuple[int, float]], start_step: int, end_step: int) -> float:
    """Env steps per second between the first points at or after start_step and end_step."""
    points = [p for p in timeline if start_step <= p[0] <= end_step]
    if len(points) < 2:
        return float("nan")
    (s0, t0), (s1, t1) = points[0], points[-1]
    return (s1 - s0) / (t1 - t0)


class WorkerMemory(threading.Thread):
    """Peak RSS (VmHWM) of the env worker processes, read from /proc while they run.

    (getrusage's children figure would count each worker's fork of the learner before exec.)
    """

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids, self.peak_kb, self.stop = pids, {}, threading.Event()

    def run(self):
        while not self.stop.is_set():
            for pid in self.pids():
                try:
                    with open(f"/proc/{pid}/status") as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                kb = int(line.split()[1])
                                self.peak_kb[pid] = max(kb, self.peak_kb.get(pid, 0))
                except OSError:
                    pass
            self.stop.wait(0.25)

    def finish(self) -> float:
        self.stop.set()
        self.join()
        return max(self.peak_kb.values(), default=0) / 1024


def run_pixelrl(a) -> dict:
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from timing import calls_per_second

    from pixelrl.build import run_directory
    from pixelrl.config import (
        EnvConfig,
        ReplayConfig,
        RunConfig,
        SACConfig,
        TrainConfig,
    )
    from pixelrl.trainer import MetricSums, Trainer

    runs = tempfile.mkdtemp(prefix="pixelrl_fps_")
    prototype = a.recipe == "sb3"
    cfg = TrainConfig(
        env=EnvConfig(
            env_id=a.env_id,
            n_envs=a.n_envs,
            native_render=a.render == "native",
            vector="async" if a.n_envs > 1 else "sync",
            **(dict(goal_mode="both", frame_stack=4) if prototype else {}),
        ),
        replay=ReplayConfig(buffer_size=a.buffer_size, her_n_sampled_goal=a.her_k),
        sac=SACConfig(
            batch_size=a.batch_size,
            gradient_steps=a.gradient_steps,
            learning_starts=a.learning_starts,
            **(dict(learning_rate=1e-4, encoder_grad="critic") if prototype else {}),
        ),
        run=RunConfig(
            total_steps=a.learning_starts + a.learn_steps,
            device=a.device,
            log_interval=5 * a.n_envs,  # the timeline of env steps over time
            encoder_diagnostics=False,  # a second per log on a CPU: not part of the timing
            checkpoint_freq=10**9,
            save_buffer=False,
            runs_dir=runs,
            progress=False,
            compile="compile" in a.variant,
            amp="bf16" if "amp" in a.variant else "none",
        ),
    )
    trainer = Trainer(cfg)

    def worker_pids():
        workers = trainer.venv.workers if trainer.venv is not None else []
        return [w.pid for w in workers if hasattr(w, "pid")]

    memory = WorkerMemory(worker_pids)
    memory.start()
    assert trainer.run() == 0
    worker_mb = memory.finish()
    events = EventAccumulator(str(run_directory(cfg)), size_guidance={"scalars": 0})
    events.Reload()
    timeline = [(e.step, e.wall_time) for e in events.Scalars("time/fps")]
    device = trainer.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # A training round as the loop runs it (with the estimator: its step and the refresh of
    # stored estimates too), counted as its SAC updates.
    rounds = calls_per_second(
        lambda: trainer.train_round(MetricSums(since=0)), a.update_seconds, sync, min_calls=3
    )
    return {
        "timeline": timeline,
        "updates_per_s": rounds * a.gradient_steps,
        "worker_mb": worker_mb,
    }


def gpu_memory_mb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def run_sb3(a) -> dict:
    import torch
    from sb3_pipeline import make_sb3_pipeline
    from stable_baselines3.common.callbacks import BaseCallback
    from timing import calls_per_second

    class Timeline(BaseCallback):
        def __init__(self):
            super().__init__()
            self.points = []

        def _on_step(self) -> bool:
            self.points.append((self.num_timesteps, time.time()))
            return True

    model = make_sb3_pipeline(
        a.env_id,
        n_envs=a.n_envs,
        frame_stack=4 if a.recipe == "sb3" else 1,
        learning_rate=1e-4 if a.recipe == "sb3" else 1e-3,
        native_render=a.render == "native",
        vec_env=a.vec_env,
        buffer_size=a.buffer_size,
        her_n_sampled_goal=a.her_k,
        batch_size=a.batch_size,
        learning_starts=a.learning_starts,
        gradient_steps=a.gradient_steps,
        device=a.device,
    )
    timeline = Timeline()
    memory = WorkerMemory(lambda: [p.pid for p in getattr(model.env, "processes", [])])
    memory.start()
    model.learn(a.learning_starts + a.learn_steps, callback=timeline)
    sync = torch.cuda.synchronize if "cuda" in str(model.device) else (lambda: None)
    # HER asks the workers for compute_reward, so they stay up until the updates are timed.
    updates = calls_per_second(
        lambda: model.train(gradient_steps=1, batch_size=a.batch_size),
        a.update_seconds,
        sync,
        min_calls=3,
    )
    worker_mb = memory.finish()
    model.env.close()
    return {"timeline": timeline.points, "updates_per_s": updates, "worker_mb": worker_mb}


def worker(a) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    if a.worker == "pixelrl":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train.py sets it
    sys.path.insert(0, str(HERE))
    result = run_pixelrl(a) if a.worker == "pixelrl" else run_sb3(a)
    timeline = result.pop("timeline")
    # Collection: the second half of the random phase; end to end: after the first updates.
    result["collection_fps"] = _rate(timeline, a.learning_starts // 2, a.learning_starts)
    warm = a.learning_starts + 5 * a.n_envs
    result["end_to_end_fps"] = _rate(timeline, warm, a.learning_starts + a.learn_steps)
    result["learner_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["gpu_mb"] = gpu_memory_mb()
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--long", action="store_true", help="longer phases, batch 256, two rounds")
    p.add_argument("--recipe", choices=["sb3", "pixelrl"], default="sb3")
    p.add_argument("--device", default="cpu")
    p.add_argument("--env-id", default="FetchPush-v4")
    p.add_argument("--n-envs", type=int, default=None, help="default 2 (4 with --recipe pixelrl)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="default 64 (256 with --long or pixelrl)"
    )
    p.add_argument(
        "--gradient-steps",
        type=int,
        default=None,
        help="SAC updates per vector step (default 1, the SB3 prototype's; 4 with pixelrl)",
    )
    p.add_argument("--her-k", type=int, default=8)
    p.add_argument("--buffer-size", type=int, default=20_000)
    p.add_argument(
        "--vec-env",
        choices=["subproc", "dummy"],
        default="subproc",
        help="SB3 vector env: subproc (stronger) or dummy (the SB3 prototype's default)",
    )
    p.add_argument("--learning-starts", type=int, default=None)
    p.add_argument("--learn-steps", type=int, default=None)
    p.add_argument("--update-seconds", type=float, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument(
        "--sb3-learn-steps",
        type=int,
        default=None,
        help="SB3's learning steps (default: --learn-steps); its rate is low and steady, so a "
        "short slice measures it",
    )
    p.add_argument("--sb3-update-seconds", type=float, default=None)
    p.add_argument("--renders", nargs="+", default=["native", "resize"])
    p.add_argument(
        "--variants",
        nargs="+",
        default=["eager"],
        choices=["eager", "compile", "amp", "compile+amp"],
        help="pixelrl runs: as written (eager), --compile, --amp bf16 (CUDA), or both",
    )
    p.add_argument("--variant", default="eager", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=["pixelrl", "sb3"], help=argparse.SUPPRESS)
    p.add_argument("--render", choices=["native", "resize"], help=argparse.SUPPRESS)
    a = p.parse_args()
    recipe = a.recipe == "pixelrl"
    a.n_envs = a.n_envs or (4 if recipe else 2)
    a.gradient_steps = a.gradient_steps or (4 if recipe else 1)
    a.batch_size = a.batch_size or (256 if a.long or recipe else 64)
    a.learning_starts = a.learning_starts or (2000 if a.long else 400)
    a.learn_steps = a.learn_steps or (800 if a.long else 100)
    a.update_seconds = a.update_seconds or (30.0 if a.long else 8.0)
    a.rounds = a.rounds or (2 if a.long else 1)
    if a.worker:
        worker(a)
        return

    forwarded = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(a).items()
        if k
        not in (
            *("long", "worker", "render", "renders", "rounds", "variants", "variant"),
            *("sb3_learn_steps", "sb3_update_seconds"),
        )
        and v is not None
    ]
    sb3_only = [
        f"--learn-steps={a.sb3_learn_steps or a.learn_steps}",
        f"--update-seconds={a.sb3_update_seconds or a.update_seconds}",
    ]
    print(
        f"# fps ({a.recipe} recipe): {a.env_id}, n_envs {a.n_envs}, batch {a.batch_size}, "
        f"{a.gradient_steps} "
        f"update(s) per vector step, HER k={a.her_k}, "
        f"SB3 {a.vec_env} vec env, device {a.device}; "
        f"{a.learning_starts} collection steps, {a.learn_steps} learning steps, "
        f"{a.rounds} round(s); {platform.machine()}, {os.cpu_count()} cores",
        flush=True,
    )
    results: dict[tuple[str, str], list[dict]] = {}
    runs = [("pixelrl", v) for v in a.variants] + [("sb3", "eager")]
    for _ in range(a.rounds):
        for render in a.renders:
            for impl, variant in runs:
                name = impl if impl == "sb3" else f"pixelrl ({variant})"
                start = time.perf_counter()
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        *forwarded,
                        f"--worker={impl}",
                        f"--render={render}",
                        f"--variant={variant}",
                        *(sb3_only if impl == "sb3" else []),
                    ],
                    capture_output=True,
                    text=True,
                )
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                    raise SystemExit(f"{name} {render} failed")
                result = json.loads(lines[-1][len("RESULT ") :])
                results.setdefault((name, render), []).append(result)
                print(
                    f"  {name:18s} {render:6s}: collection {result['collection_fps']:.1f} "
                    f"fps, updates {result['updates_per_s']:.3f}/s, end-to-end "
                    f"{result['end_to_end_fps']:.1f} fps ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )

    def median(name, render, key):
        return statistics.median(r[key] for r in results[(name, render)])

    label = {"native": "native 84", "resize": "480 + PIL resize"}
    keys = ("collection_fps", "updates_per_s", "end_to_end_fps")
    print(
        "\n| implementation | render path | collection fps | per worker | updates/s "
        "| end-to-end fps | peak learner MB | peak worker MB | peak GPU MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, render in results:
        shown = f"SB3 ({a.vec_env})" if name == "sb3" else name
        collection = median(name, render, "collection_fps")
        row = [f"{collection:.2f}", f"{collection / a.n_envs:.2f}"]
        row += [f"{median(name, render, k):.2f}" for k in keys[1:]]
        row += [f"{median(name, render, k):.0f}" for k in ("learner_mb", "worker_mb", "gpu_mb")]
        print(f"| {shown} | {label[render]} | " + " | ".join(row) + " |")
    print("\n| comparison (pixelrl / SB3) | collection | update | end-to-end |")
    print("|---|---|---|---|")
    for variant in a.variants:
        ours_name = f"pixelrl ({variant})"
        pairs = [(f"{ours_name}, equal render path: {label[r]}", r, r) for r in a.renders]
        if "native" in a.renders and "resize" in a.renders:
            pairs.append(
                (
                    f"{ours_name} native 84 vs SB3 480-resize (the SB3 prototype's default)",
                    "native",
                    "resize",
                )
            )
        for name, ours, theirs in pairs:
            ratios = [median(ours_name, ours, k) / median("sb3", theirs, k) for k in keys]
            print(f"| {name} | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")


if __name__ == "__main__":
    main()
