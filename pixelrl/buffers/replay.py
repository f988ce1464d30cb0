"""Device-resident ring of whole episodes with frame-stack gather and HER at sample time.

Storage (allocated once on the learner's device, zero-filled so memory is really committed):

    frames        uint8   [E, T+1, 3, H, W]  ONE frame per step, the final observation included
    vectors[key]  float32 [E, T+1, D]        proprioception / observation, achieved_goal
    desired_goal  float32 [E, G]             one goal per episode (Fetch never changes it)
    actions       float32 [E, T, A]
    lengths       int64   [E]                steps actually taken (<= T)
    terminated    bool    [E]                the episode ended by termination, not truncation

and, for a run whose state estimator reads the image (`ReplaySpec.estimate_dim` > 0):

    state_estimate float32 [E, T+1, G]       its estimate of the achieved goal from each
                                             step's frames (metres), what SAC reads
    estimated_at   int64   [E]               env step at which they were written (-1: not yet)

An episode enters the ring only when it is complete: each of the N envs writes into its own
staging slot, committed when the env reports done. When the ring is full the oldest episode is
overwritten.

`sample` draws transitions uniformly, rebuilds frame stacks of k by index gather (clamped at
the episode's first step, as a reset repeats its first frame), relabels goals with HER and
recomputes rewards with the env's rule. Pixels are returned as uint8; the encoder converts
them to float once. A learner that reads no image samples without them (`pixels=False`); the
estimator samples frames and their achieved goal (`sample_frames`). Estimates are written by
`write_estimates`, to the episodes `stale_episodes` names: those not yet estimated, then the
stalest.

Memory per transition at 84x84 with proprioception: 21,168 B of frame x (T+1)/T plus ~70 B of
vectors and actions, versus SB3's 169,600 B (obs and next_obs both stored frame-stacked).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pixelrl.buffers.her import compute_reward, future_goal_steps, relabel_fraction
from pixelrl.config import ConfigError, ReplayConfig
from pixelrl.envs import (
    ACHIEVED_GOAL,
    DESIRED_GOAL,
    PIXELS,
    STATE_ESTIMATE,
)
from pixelrl.transfer import to_device

ESTIMATED_AT = "estimated_at"
NOT_ESTIMATED = -1
ESTIMATE_EPISODES_PER_PASS = 4  # episodes estimated per encoder call: 204 frames of 84x84

# Kept free on top of the buffer: the learner's networks, batches and the OS need room too.
MEMORY_HEADROOM_FRACTION = 0.9
MEMORY_RESERVE_BYTES = 1 << 30


@dataclass(frozen=True)
class ReplaySpec:
    """What the buffer stores, taken from the env (not from flags)."""

    obs_shapes: dict[str, tuple[int, ...]]  # per observation key, one step (pixels: (3, H, W))
    action_dim: int
    max_episode_steps: int
    n_envs: int
    frame_stack: int
    distance_threshold: float
    reward_type: str
    estimate_dim: int = 0  # > 0: keep the state estimator's estimate beside each frame


@dataclass
class Batch:
    """A sampled minibatch on the device.

    obs / next_obs: dict of (B, ...) tensors; "pixels" is uint8 (B, 3*k, H, W), vectors float32;
    desired_goal already relabeled. action (B, A); reward (B,); terminated (B,) float 0/1.
    """

    obs: dict[str, torch.Tensor]
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: dict[str, torch.Tensor]
    terminated: torch.Tensor


def available_memory(device: torch.device) -> int:
    """Free bytes where the buffer would live: free CUDA memory, or MemAvailable of the host."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(pages)


def episode_bytes(spec: ReplaySpec) -> int:
    """Bytes one stored episode takes (frames, vectors, one goal, actions, length, flag)."""
    steps = spec.max_episode_steps + 1
    total = 0
    for key, shape in spec.obs_shapes.items():
        if key == PIXELS:
            total += steps * math.prod(shape)
        elif key == DESIRED_GOAL:
            total += math.prod(shape) * 4
        else:
            total += steps * math.prod(shape) * 4
    total += spec.max_episode_steps * spec.action_dim * 4
    total += steps * spec.estimate_dim * 4 + (8 if spec.estimate_dim else 0)
    return total + 8 + 1


_COPY_CHUNK_BYTES = 256 << 20


def _chunks(tensor: torch.Tensor):
    rows = max(1, _COPY_CHUNK_BYTES // max(1, tensor[:1].numel() * tensor.element_size()))
    for start in range(0, len(tensor), rows):
        yield start, min(len(tensor), start + rows)


def _save_array(path: Path, tensor: torch.Tensor) -> None:
    """Write a tensor as .npy in chunks: no full host copy of a device tensor.

    Plain writes, not a memory map: a full disk then fails the write with ENOSPC (an
    OSError the checkpoint reports), where a store to a mapped page it cannot back kills the
    process with SIGBUS.
    """
    dtype = torch.empty(0, dtype=tensor.dtype).numpy().dtype
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": tuple(tensor.shape),
    }
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for start, stop in _chunks(tensor):
            f.write(np.ascontiguousarray(tensor[start:stop].cpu().numpy()).data)


def _load_array(path: Path, tensor: torch.Tensor) -> None:
    """Read a .npy written by _save_array into the leading rows of `tensor`, in chunks."""
    data = np.load(path, mmap_mode="r")
    if tuple(data.shape[1:]) != tuple(tensor.shape[1:]) or len(data) > len(tensor):
        raise ValueError(f"{path}: shape {data.shape} does not fit {tuple(tensor.shape)}")
    target = tensor[: len(data)]
    for start, stop in _chunks(target):
        target[start:stop] = torch.from_numpy(np.array(data[start:stop])).to(tensor.device)


class EpisodeReplay:
    """A ring of whole episodes on one device; see the module docstring."""

    def __init__(
        self,
        cfg: ReplayConfig,
        spec: ReplaySpec,
        device: torch.device | str,
        seed: int = 0,
        verbose: bool = True,
    ):
        self.cfg = cfg
        self.spec = spec
        self.device = torch.device(device)
        T = spec.max_episode_steps
        self.capacity = max(1, cfg.buffer_size // T)  # episodes
        self.bytes_per_episode = episode_bytes(spec)
        self.bytes_per_transition = self.bytes_per_episode / T
        # The plan, checked before anything is allocated: too large an allocation does not
        # fail at once but when its pages are first touched, possibly hours into a run.
        staging_bytes = spec.n_envs * self.bytes_per_episode
        total = self.capacity * self.bytes_per_episode + staging_bytes
        free = available_memory(self.device)
        budget = int(free * MEMORY_HEADROOM_FRACTION) - MEMORY_RESERVE_BYTES
        if verbose:
            print(
                f"replay: {self.capacity:,} episodes x {T} steps = "
                f"{self.capacity * T:,} transitions, {self.bytes_per_transition:,.0f} B per "
                f"transition, {total / 1e9:.2f} GB on {self.device} "
                f"({free / 1e9:.2f} GB available)"
            )
        if total > budget:
            fits = max(0, (budget - staging_bytes) // self.bytes_per_episode) * T
            raise MemoryError(
                f"--buffer-size {cfg.buffer_size:,} needs {total / 1e9:.2f} GB on "
                f"{self.device} but only {free / 1e9:.2f} GB is available; the largest "
                f"--buffer-size that fits is {fits:,}"
            )

        self.vector_keys = [k for k in spec.obs_shapes if k not in (PIXELS, DESIRED_GOAL)]
        if spec.estimate_dim:
            self.vector_keys.append(STATE_ESTIMATE)
        self.has_pixels = PIXELS in spec.obs_shapes
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.storage = self._allocate(self.capacity, with_estimates=spec.estimate_dim > 0)
        self.staging = self._allocate(spec.n_envs)
        self.staged_steps = np.zeros(spec.n_envs, dtype=np.int64)  # actions staged per env
        self.next_slot = 0  # ring position of the next committed episode
        self.num_episodes = 0  # episodes stored (<= capacity)
        self.episodes_committed = 0  # ever committed
        self.transitions_committed = 0  # ever committed (overwritten ones included)
        # Episode lengths are kept on the host too, so that sampling never reads the device.
        self.host_lengths = np.zeros(self.capacity, dtype=np.int64)
        self.host_estimated_at = np.full(self.capacity, NOT_ESTIMATED, dtype=np.int64)
        self.num_transitions = 0  # transitions stored (host)
        self._cumulative_lengths = torch.zeros(0, dtype=torch.int64, device=self.device)

    # ------------------------------------------------------------------ storage
    def _allocate(self, n: int, with_estimates: bool = False) -> dict[str, torch.Tensor]:
        """Zero-filled tensors for n episodes; zeros touch every page, so failure is now.
        `with_estimates`: also the state estimates and when they were written (storage only:
        they are written after an episode is committed)."""
        spec, steps, dev = self.spec, self.spec.max_episode_steps + 1, self.device
        out = {}
        for key, shape in spec.obs_shapes.items():
            if key == PIXELS:
                out[key] = torch.zeros((n, steps, *shape), dtype=torch.uint8, device=dev)
            elif key == DESIRED_GOAL:
                out[key] = torch.zeros((n, *shape), dtype=torch.float32, device=dev)
            else:
                out[key] = torch.zeros((n, steps, *shape), dtype=torch.float32, device=dev)
        out["actions"] = torch.zeros(
            (n, spec.max_episode_steps, spec.action_dim), dtype=torch.float32, device=dev
        )
        out["lengths"] = torch.zeros(n, dtype=torch.int64, device=dev)
        out["terminated"] = torch.zeros(n, dtype=torch.bool, device=dev)
        if with_estimates:
            shape = (n, steps, spec.estimate_dim)
            out[STATE_ESTIMATE] = torch.zeros(shape, dtype=torch.float32, device=dev)
            out[ESTIMATED_AT] = torch.full((n,), NOT_ESTIMATED, dtype=torch.int64, device=dev)
        return out

    # ------------------------------------------------------------------ adding
    def _write_step(self, envs: torch.Tensor, steps: torch.Tensor, obs: dict) -> None:
        for key in self.spec.obs_shapes:
            if key == DESIRED_GOAL:
                continue
            self.staging[key][envs, steps] = obs[key][envs]

    def _write_all(self, step: int, obs: dict) -> None:
        """All envs at the same step (Fetch's fixed-length episodes): one slice copy per key."""
        for key in self.spec.obs_shapes:
            if key != DESIRED_GOAL:
                self.staging[key][:, step].copy_(obs[key])

    def start_episodes(self, obs: dict[str, torch.Tensor], envs=None) -> None:
        """Stage the first observation of a new episode for `envs` (all if None).

        obs: dict of (N, ...) tensors/arrays for all N envs.
        """
        obs = {k: to_device(v, self.device) for k, v in obs.items()}
        envs = np.arange(self.spec.n_envs) if envs is None else np.asarray(envs)
        if len(envs) == 0:
            return
        idx = to_device(envs, self.device)
        self._write_step(idx, torch.zeros_like(idx), obs)
        self.staging[DESIRED_GOAL][idx] = obs[DESIRED_GOAL][idx].float()
        self.staged_steps[envs] = 0

    def add(
        self,
        action,
        next_obs: dict,
        terminated,
        truncated,
        to_act_on: dict | None = None,
        discard=None,
    ) -> int:
        """Stage one vector step for all N envs; commit the episodes that ended.

        Args:
            action: (N, A) actions taken.
            next_obs: dict of (N, ...): the true successor of each acted-on observation.
            terminated, truncated: (N,) bool.
            to_act_on: dict of (N, ...): what each env acts on next, which is the first
                observation of a new episode for envs that ended or are discarded (required
                when any did).
            discard: (N,) bool, envs whose step is not a real transition (their worker
                failed): their partial episode is dropped, never committed, and they start
                staging again from to_act_on.
        Returns:
            number of episodes committed.
        """
        terminated = np.asarray(terminated, dtype=bool)
        discard = np.zeros_like(terminated) if discard is None else np.asarray(discard, bool)
        done = (terminated | np.asarray(truncated, dtype=bool)) & ~discard
        T = self.spec.max_episode_steps
        if (self.staged_steps >= T).any():
            raise RuntimeError(
                f"an episode ran past max_episode_steps={T} without ending; the replay's "
                "episode length does not match the env"
            )
        action = to_device(action, self.device, torch.float32)
        next_obs = {k: to_device(v, self.device) for k, v in next_obs.items()}
        if (self.staged_steps == self.staged_steps[0]).all():
            step = int(self.staged_steps[0])
            self.staging["actions"][:, step].copy_(action)
            self._write_all(step + 1, next_obs)
        else:
            envs = torch.arange(self.spec.n_envs, device=self.device)
            steps = to_device(self.staged_steps, self.device)
            self.staging["actions"][envs, steps] = action
            self._write_step(envs, steps + 1, next_obs)
        self.staged_steps += 1
        ended = np.flatnonzero(done)
        if len(ended):
            self._commit(ended, terminated[ended])
        restarted = np.flatnonzero(done | discard)
        if len(restarted):
            if to_act_on is None:
                raise ValueError("to_act_on is required when an episode ends or is discarded")
            self.start_episodes(to_act_on, restarted)
        return len(ended)

    def _commit(self, envs: np.ndarray, terminated: np.ndarray) -> None:
        self.episodes_committed += len(envs)
        self.transitions_committed += int(self.staged_steps[envs].sum())
        if len(envs) > self.capacity:  # more episodes end at once than the ring holds
            envs, terminated = envs[-self.capacity :], terminated[-self.capacity :]
        n = len(envs)
        slots = (self.next_slot + np.arange(n)) % self.capacity
        src = to_device(envs, self.device)
        dst = to_device(slots, self.device)
        for key, tensor in self.staging.items():
            if key in ("lengths", "terminated"):
                continue
            self.storage[key][dst] = tensor[src]
        self.storage["lengths"][dst] = to_device(self.staged_steps[envs], self.device)
        self.storage["terminated"][dst] = to_device(terminated, self.device)
        self.host_lengths[slots] = self.staged_steps[envs]
        if ESTIMATED_AT in self.storage:  # a new episode's frames wait for their estimates
            self.storage[ESTIMATED_AT][dst] = NOT_ESTIMATED
            self.host_estimated_at[slots] = NOT_ESTIMATED
        self.next_slot = int((self.next_slot + n) % self.capacity)
        self.num_episodes = min(self.capacity, self.num_episodes + n)
        self.num_transitions = int(self.host_lengths[: self.num_episodes].sum())
        self._cumulative_lengths = torch.cumsum(self.storage["lengths"][: self.num_episodes], 0)

    # ------------------------------------------------------------------ sampling
    def sample_indices(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(episode, t) for `batch_size` transitions drawn uniformly over stored transitions
        (with the replay's own generator unless one is given)."""
        if self.num_episodes == 0:
            raise RuntimeError("cannot sample: no complete episode has been stored yet")
        cum = self._cumulative_lengths
        generator = self.generator if generator is None else generator
        u = torch.randint(
            self.num_transitions, (batch_size,), device=self.device, generator=generator
        )
        episode = torch.searchsorted(cum, u, right=True)
        t = u - (cum[episode] - self.storage["lengths"][episode])
        return episode, t

    def gather_frames(
        self, episode: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame stacks for obs (steps t-k+1..t) and next obs (t-k+2..t+1), uint8 (B, 3k, H, W).

        Both come from one gather of k+1 frames per sample; indices are clamped at the
        episode's first step, so an early stack repeats the first frame and never reads
        another episode.
        """
        k = self.spec.frame_stack
        window = self._frame_window(episode, t, k + 1)
        b, _, c, h, w = window.shape
        obs = window[:, :k].reshape(b, k * c, h, w)
        next_obs = window[:, 1:].reshape(b, k * c, h, w)
        return obs, next_obs

    def frames_at(self, episode: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The frame stacks of steps t (0 <= t <= length, the final observation included),
        uint8 (B, 3k, H, W), clamped at the episode's first step as `gather_frames`."""
        k = self.spec.frame_stack
        window = self._frame_window(episode, t, k)
        b, _, c, h, w = window.shape
        return window.reshape(b, k * c, h, w)

    def _frame_window(self, episode: torch.Tensor, t: torch.Tensor, count: int) -> torch.Tensor:
        """Frames of steps t-k+1 .. t-k+count (clamped at 0) of each episode: (B, count, 3, H,
        W)."""
        k = self.spec.frame_stack
        frames = self.storage[PIXELS]
        e, steps_per_episode, c, h, w = frames.shape
        offsets = torch.arange(-k + 1, count - k + 1, device=self.device)  # (count,)
        steps = (t[:, None] + offsets).clamp_(min=0)
        # index_select over flat (episode, step) rows copies whole frames; advanced indexing
        # of the 5-D tensor takes ~8x longer on a CPU.
        rows = (episode[:, None] * steps_per_episode + steps).reshape(-1)
        flat = frames.view(e * steps_per_episode, c * h * w)
        return flat.index_select(0, rows).view(len(t), count, c, h, w)

    def sample(self, batch_size: int, pixels: bool = True) -> Batch:
        """A batch of transitions, HER-relabeled; `pixels=False` leaves the frames out (for a
        learner that reads the stored estimates instead)."""
        episode, t = self.sample_indices(batch_size)
        s, cfg = self.storage, self.cfg
        obs: dict[str, torch.Tensor] = {}
        next_obs: dict[str, torch.Tensor] = {}
        if self.has_pixels and pixels:
            obs[PIXELS], next_obs[PIXELS] = self.gather_frames(episode, t)
        for key in self.vector_keys:
            obs[key] = s[key][episode, t]
            next_obs[key] = s[key][episode, t + 1]

        lengths = s["lengths"][episode]
        desired = s[DESIRED_GOAL][episode]
        if cfg.her_n_sampled_goal > 0:
            relabel = torch.rand(
                batch_size, device=self.device, generator=self.generator
            ) < relabel_fraction(cfg.her_n_sampled_goal)
            goal_step = future_goal_steps(t, lengths, self.generator)
            her_goal = s[ACHIEVED_GOAL][episode, goal_step]
            desired = torch.where(relabel[:, None], her_goal, desired)
        obs[DESIRED_GOAL] = desired
        next_obs[DESIRED_GOAL] = desired

        reward = compute_reward(
            next_obs[ACHIEVED_GOAL], desired, self.spec.distance_threshold, self.spec.reward_type
        )
        terminated = (s["terminated"][episode] & (t == lengths - 1)).float()
        return Batch(obs, s["actions"][episode, t], reward, next_obs, terminated)

    def sample_frames(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For the state estimator: frame stacks (B, 3k, H, W) uint8 of uniformly drawn stored
        steps and their achieved goal (B, G), as stored (no HER, no DrQ)."""
        episode, t = self.sample_indices(batch_size)
        return self.frames_at(episode, t), self.storage[ACHIEVED_GOAL][episode, t]

    def stale_episodes(self, count: int) -> np.ndarray:
        """Ring slots whose estimates are due: every episode not yet estimated, then the `count`
        estimated longest ago (ties in ring order)."""
        written = self.host_estimated_at[: self.num_episodes]
        order = np.argsort(written, kind="stable")  # NOT_ESTIMATED (-1) sorts first
        return order[: int((written == NOT_ESTIMATED).sum()) + count]

    @torch.no_grad()
    def write_estimates(self, slots: np.ndarray, estimate, env_step: int) -> None:
        """Store `estimate(frames)` (frames (B, 3k, H, W) uint8 -> (B, G) metres) for every
        step 0..T of the episodes in `slots` (steps past an episode's length are estimated too,
        and never sampled), noting `env_step` as when."""
        if len(slots) == 0:
            return
        steps = self.spec.max_episode_steps + 1
        t = torch.arange(steps, device=self.device)
        for start in range(0, len(slots), ESTIMATE_EPISODES_PER_PASS):
            chunk = to_device(slots[start : start + ESTIMATE_EPISODES_PER_PASS], self.device)
            episode = chunk.repeat_interleave(steps)
            values = estimate(self.frames_at(episode, t.repeat(len(chunk))))
            self.storage[STATE_ESTIMATE][chunk] = values.view(len(chunk), steps, -1)
            self.storage[ESTIMATED_AT][chunk] = env_step
        self.host_estimated_at[slots] = env_step

    def estimate_age(self, env_step: int) -> float | None:
        """Mean env steps since the stored episodes' estimates were written (None if none
        was yet)."""
        written = self.host_estimated_at[: self.num_episodes]
        written = written[written != NOT_ESTIMATED]
        return float(env_step - written.mean()) if len(written) else None

    def sample_observations(
        self, batch_size: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Stored observations as they were (no HER, no DrQ) for diagnostics: dict of
        (B, ...) with pixels stacked uint8 (B, 3k, H, W). Draws from `generator`, so that
        diagnostics leave the training batches as they would have been."""
        return self.observations_at(*self.sample_indices(batch_size, generator))

    def observations_at(self, episode: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stored observations at steps `t` of episodes `episode` (ring slots), (B,) each,
        as `sample_observations` returns them."""
        obs = {key: self.storage[key][episode, t] for key in self.vector_keys}
        obs[DESIRED_GOAL] = self.storage[DESIRED_GOAL][episode]
        if self.has_pixels:
            obs[PIXELS] = self.gather_frames(episode, t)[0]
        return obs

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | os.PathLike) -> None:
        """Write the stored episodes and the staging area as .npy files plus meta.json.

        Only the filled part of the ring is written; each field is one flat array, so nothing
        large goes through pickle.
        """
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        n = self.num_episodes
        for prefix, tensors, count in (
            ("storage", self.storage, n),
            ("staging", self.staging, self.spec.n_envs),
        ):
            for key, tensor in tensors.items():
                _save_array(path / f"{prefix}.{key}.npy", tensor[:count])
        meta = {
            "capacity": self.capacity,
            "num_episodes": n,
            "next_slot": self.next_slot,
            "episodes_committed": self.episodes_committed,
            "transitions_committed": self.transitions_committed,
            "staged_steps": self.staged_steps.tolist(),
            "obs_shapes": {k: list(v) for k, v in self.spec.obs_shapes.items()},
            "max_episode_steps": self.spec.max_episode_steps,
        }
        (path / "meta.json").write_text(json.dumps(meta))
        torch.save(self.generator.get_state(), path / "generator.pt")

    def load(self, directory: str | os.PathLike) -> None:
        """Restore what `save` wrote into this (already allocated) buffer, exactly."""
        path = Path(directory)
        meta = json.loads((path / "meta.json").read_text())
        expected = {k: list(v) for k, v in self.spec.obs_shapes.items()}
        if meta["obs_shapes"] != expected or meta["max_episode_steps"] != (
            self.spec.max_episode_steps
        ):
            raise ValueError(
                f"saved replay in {path} holds {meta['obs_shapes']} x "
                f"{meta['max_episode_steps']} steps; this run expects {expected}"
            )
        if meta["capacity"] != self.capacity:
            raise ConfigError(
                f"--buffer-size: the saved replay holds {meta['capacity']} episodes, this run "
                f"{self.capacity}; resume with the same --buffer-size"
            )
        for prefix, tensors in (("storage", self.storage), ("staging", self.staging)):
            for key, tensor in tensors.items():
                _load_array(path / f"{prefix}.{key}.npy", tensor)
        self.num_episodes = meta["num_episodes"]
        self.next_slot = meta["next_slot"]
        self.episodes_committed = meta["episodes_committed"]
        self.staged_steps = np.asarray(meta["staged_steps"], dtype=np.int64)
        self.host_lengths = self.storage["lengths"].cpu().numpy().copy()
        if ESTIMATED_AT in self.storage:
            self.host_estimated_at = self.storage[ESTIMATED_AT].cpu().numpy().copy()
        self.num_transitions = int(self.host_lengths[: self.num_episodes].sum())
        # Saved before the count existed: the stored ones are the least that were committed.
        self.transitions_committed = meta.get("transitions_committed", self.num_transitions)
        self._cumulative_lengths = torch.cumsum(self.storage["lengths"][: self.num_episodes], 0)
        saved_state = torch.load(path / "generator.pt")
        if saved_state.numel() == self.generator.get_state().numel():
            self.generator.set_state(saved_state)
        else:
            # Saved on another kind of device (a CPU generator's state is 5,056 bytes, a CUDA
            # one's 16) and neither converts to the other; a run moved between a CPU and a GPU
            # is not bit-exact anyway (other kernels), so sampling goes on from a seed that the
            # saved state fixes.
            seed = int.from_bytes(hashlib.sha256(saved_state.numpy().tobytes()).digest()[:8])
            self.generator.manual_seed(seed)
            print(
                f"replay: {path} was saved on another kind of device than {self.device}; "
                f"sampling continues from a seed derived from its saved state"
            )
