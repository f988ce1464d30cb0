"""Whether a replay holds whole, real episodes: the check the reliability tests and the soak
run apply after faults (`python ops/soak.py`, tests/test_train_faults.py)."""

from __future__ import annotations

import numpy as np

from pixelrl.buffers.replay import EpisodeReplay
from pixelrl.envs import PROPRIO_GRIP_DISPLACEMENT, PROPRIO_GRIP_POS, PROPRIOCEPTION


def replay_problems(replay: EpisodeReplay, max_jump: float = 0.04) -> list[str]:
    """What is wrong with the stored episodes; an empty list when each is one whole real
    episode. Checked: lengths within 1..max_episode_steps (stored and staged) and, where
    proprioception is stored, that every step moved the gripper by about the displacement the
    env reports for it (Fetch's velocity x dt; within 2.2 cm for random actions): a
    transition spliced across two episodes jumps to the reset pose, 7 cm away at the median.
    Reads the whole ring."""
    found = []
    n, T = replay.num_episodes, replay.spec.max_episode_steps
    lengths = replay.host_lengths[:n]
    bad = np.flatnonzero((lengths < 1) | (lengths > T))
    if len(bad):
        found.append(f"episodes {bad.tolist()[:10]} have lengths {lengths[bad].tolist()[:10]}")
    if (replay.staged_steps > T).any():
        found.append(f"staged steps {replay.staged_steps.tolist()} exceed {T}")
    if PROPRIOCEPTION in replay.storage and n:
        proprio = replay.storage[PROPRIOCEPTION][:n].cpu().numpy()
        position = proprio[:, :, PROPRIO_GRIP_POS]
        moved = position[:, 1:] - position[:, :-1]
        error = np.abs(moved - proprio[:, 1:, PROPRIO_GRIP_DISPLACEMENT]).max(-1)
        real = np.arange(T)[None, :] < lengths[:, None]  # steps past an episode's end
        jumps = np.argwhere((error > max_jump) & real)
        if len(jumps):
            where = [f"episode {e} step {t}" for e, t in jumps[:5]]
            found.append(f"{len(jumps)} transitions jump more than {max_jump} m: {where}")
    return found
