"""Episode replay: storage, frame-stack gather, HER, rewards, save/load, memory plan, stored
estimates."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from pixelrl.analysis.replay_check import replay_problems
from pixelrl.buffers.her import compute_reward, relabel_fraction
from pixelrl.buffers.replay import NOT_ESTIMATED, EpisodeReplay, ReplaySpec
from pixelrl.config import EnvConfig, ReplayConfig
from pixelrl.envs import ACHIEVED_GOAL, DESIRED_GOAL, PIXELS, PROPRIOCEPTION, STATE_ESTIMATE
from pixelrl.envs import reward_params as env_reward_params
from pixelrl.vector_env import FetchVectorEnv

SIDE = 8


def make_spec(T=10, n_envs=1, k=4, pixels=True, estimate_dim=0) -> ReplaySpec:
    shapes = {}
    if pixels:
        shapes[PIXELS] = (3, SIDE, SIDE)
    shapes.update({PROPRIOCEPTION: (2,), ACHIEVED_GOAL: (3,), DESIRED_GOAL: (3,)})
    return ReplaySpec(
        shapes,
        action_dim=4,
        max_episode_steps=T,
        n_envs=n_envs,
        frame_stack=k,
        distance_threshold=0.05,
        reward_type="sparse",
        estimate_dim=estimate_dim,
    )


def step_obs(episode: int, step: int, n_envs: int = 1) -> dict:
    """Observation whose every entry encodes (episode, step), batched for n_envs."""
    frame = torch.full((3, SIDE, SIDE), 0, dtype=torch.uint8)
    frame[0] = episode % 256
    frame[1] = step
    frame[2] = (episode * 7 + step) % 256
    obs = {
        PIXELS: frame,
        PROPRIOCEPTION: torch.tensor([episode, step], dtype=torch.float32),
        ACHIEVED_GOAL: torch.tensor([episode, step, 0.5], dtype=torch.float32),
        DESIRED_GOAL: torch.tensor([-1.0 - episode, 0.0, 0.0]),
    }
    return {k: v.unsqueeze(0).repeat(n_envs, *([1] * v.dim())) for k, v in obs.items()}


def fill(replay: EpisodeReplay, episodes: list[int], lengths: list[int]) -> None:
    """Add whole episodes through the public API with a single env."""
    replay.start_episodes(step_obs(episodes[0], 0))
    for i, (ep, length) in enumerate(zip(episodes, lengths, strict=True)):
        for t in range(length):
            done = t == length - 1
            nxt = episodes[i + 1] if i + 1 < len(episodes) else ep + 1
            replay.add(
                torch.full((1, 4), float(t) / 100),
                step_obs(ep, t + 1),
                terminated=[False],
                truncated=[done],
                to_act_on=step_obs(nxt, 0) if done else None,
            )


def replay_for(spec, buffer_size, **cfg):
    return EpisodeReplay(ReplayConfig(buffer_size=buffer_size, **cfg), spec, "cpu", verbose=False)


@pytest.mark.parametrize("env_id", ["FetchPush-v4", "FetchPushDense-v4", "FetchReach-v4"])
def test_reward_matches_env_compute_reward(env_id):
    threshold, reward_type = env_reward_params(env_id)
    assert reward_type == ("dense" if "Dense" in env_id else "sparse")
    env = gym.make(env_id, disable_env_checker=True)
    rng = np.random.default_rng(0)
    desired = rng.uniform([1.0, 0.4, 0.4], [1.6, 1.1, 0.6], (5000, 3))
    # Distances spread around the threshold so both outcomes occur often.
    direction = rng.normal(size=(5000, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    achieved = desired + direction * rng.uniform(0, 3 * threshold, (5000, 1))
    expected = env.unwrapped.compute_reward(achieved, desired, None)
    ours = compute_reward(torch.tensor(achieved), torch.tensor(desired), threshold, reward_type)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6, atol=1e-7)
    if reward_type == "sparse":
        assert 0.2 < (expected == 0).mean() < 0.8


def test_ring_overwrites_oldest_episode_first():
    replay = replay_for(make_spec(T=10), buffer_size=30)  # 3 episodes
    assert replay.capacity == 3
    fill(replay, [0, 1, 2, 3, 4], [10] * 5)
    assert replay.num_episodes == 3 and replay.episodes_committed == 5
    assert replay.transitions_committed == 50 and replay.num_transitions == 30
    # Slots 0, 1 were overwritten by episodes 3, 4; slot 2 still holds episode 2.
    stored = replay.storage[PROPRIOCEPTION][:, 0, 0].tolist()
    assert stored == [3.0, 4.0, 2.0]
    assert replay.next_slot == 2


def test_partial_episodes_are_never_sampled():
    replay = replay_for(make_spec(T=10), buffer_size=100)
    with pytest.raises(RuntimeError, match="no complete episode"):
        replay.sample(4)
    fill(replay, [7], [10])
    # A second episode is staged but not finished.
    for t in range(6):
        replay.add(torch.zeros(1, 4), step_obs(8, t + 1), [False], [False])
    batch = replay.sample(2000)
    assert set(batch.obs[PROPRIOCEPTION][:, 0].tolist()) == {7.0}
    assert replay.num_transitions == 10


def test_frame_stack_gather_equals_naive_reconstruction():
    k, T = 4, 10
    replay = replay_for(make_spec(T=T, k=k), buffer_size=40)  # 4 episodes
    lengths = [10, 3, 10, 7, 10, 2]  # shorter episodes too; the ring wraps
    fill(replay, list(range(6)), lengths)
    frames = replay.storage[PIXELS]
    episode_ids = replay.storage[PROPRIOCEPTION][:, 0, 0].long()
    stored_lengths = replay.storage["lengths"]
    # Every valid (slot, t), including the first k steps and the slots written after wrapping.
    pairs = [(e, t) for e in range(replay.capacity) for t in range(int(stored_lengths[e]))]
    episode = torch.tensor([p[0] for p in pairs])
    t = torch.tensor([p[1] for p in pairs])
    obs, next_obs = replay.gather_frames(episode, t)
    for i, (e, step) in enumerate(pairs):
        naive = torch.cat([frames[e, max(0, step - k + 1 + j)] for j in range(k)])
        naive_next = torch.cat([frames[e, max(0, step + 1 - k + 1 + j)] for j in range(k)])
        assert torch.equal(obs[i], naive) and torch.equal(next_obs[i], naive_next)
        # Never reads another episode: every frame in the stack carries this episode's id.
        ids = obs[i].view(k, 3, SIDE, SIDE)[:, 0, 0, 0]
        assert (ids == episode_ids[e] % 256).all()
        # Newest frame last; early stacks repeat the episode's first frame.
        assert int(obs[i][-3:][1, 0, 0]) == step
        assert int(obs[i][:3][1, 0, 0]) == max(0, step - k + 1)


def test_sampled_transitions_are_consistent_and_uniform():
    replay = replay_for(make_spec(T=10), buffer_size=100, her_n_sampled_goal=0)
    fill(replay, [0, 1, 2], [10, 4, 10])
    batch = replay.sample(24000)
    ep, t = batch.obs[PROPRIOCEPTION][:, 0], batch.obs[PROPRIOCEPTION][:, 1]
    assert torch.equal(batch.next_obs[PROPRIOCEPTION][:, 0], ep)
    assert torch.equal(batch.next_obs[PROPRIOCEPTION][:, 1], t + 1)
    assert torch.equal(batch.action[:, 0], t / 100)
    lengths = torch.tensor([10.0, 4.0, 10.0])[ep.long()]
    assert (t < lengths).all()
    # Uniform over the 24 stored transitions: episode 1 holds 4 of them.
    assert abs((ep == 1).float().mean().item() - 4 / 24) < 0.01
    assert torch.equal(batch.obs[DESIRED_GOAL][:, 0], -1.0 - ep)
    assert torch.equal(batch.terminated, torch.zeros_like(batch.terminated))


@pytest.mark.parametrize("k", [1, 4, 8])
def test_her_relabel_fraction_and_future_goals(k):
    replay = replay_for(make_spec(T=10), buffer_size=100, her_n_sampled_goal=k)
    fill(replay, [0, 1, 2], [10, 6, 10])
    n = 40000
    batch = replay.sample(n)
    ep, t = batch.obs[PROPRIOCEPTION][:, 0], batch.obs[PROPRIOCEPTION][:, 1]
    desired = batch.obs[DESIRED_GOAL]
    relabeled = desired[:, 0] >= 0  # original goals are negative in these episodes
    p = relabel_fraction(k)
    assert abs(relabeled.float().mean().item() - p) < 5 * np.sqrt(p * (1 - p) / n)
    goal_episode, goal_step = desired[relabeled, 0], desired[relabeled, 1]
    assert torch.equal(goal_episode, ep[relabeled])  # the same episode
    assert (goal_step > t[relabeled]).all()  # a later step
    lengths = torch.tensor([10.0, 6.0, 10.0])[ep.long()]
    assert (goal_step <= lengths[relabeled]).all()
    # Every future step is reachable: from t = 0 of a 10-step episode, t' covers 1..10.
    first = relabeled & (t == 0) & (lengths == 10)
    assert set(desired[first, 1].tolist()) == set(map(float, range(1, 11)))
    # The others keep the episode's own goal.
    assert torch.equal(desired[~relabeled, 0], -1.0 - ep[~relabeled])
    assert torch.equal(batch.next_obs[DESIRED_GOAL], desired)
    # Rewards follow the relabeled goal: achieved_goal[t+1] == goal exactly when t' == t + 1.
    hit = relabeled.clone()
    hit[relabeled] = goal_step == t[relabeled] + 1
    assert torch.equal(batch.reward == 0, hit)


def test_save_load_round_trip_is_exact(tmp_path):
    spec = make_spec(T=10, n_envs=1)
    replay = replay_for(spec, buffer_size=30)
    fill(replay, [0, 1, 2, 3], [10, 4, 10, 7])
    for t in range(3):  # a partial episode in staging
        replay.add(torch.ones(1, 4), step_obs(9, t + 1), [False], [False])
    replay.sample(8)  # advance the generator
    replay.save(tmp_path / "replay")
    restored = replay_for(spec, buffer_size=30)
    restored.load(tmp_path / "replay")
    for name in ("storage", "staging"):
        for key, tensor in getattr(replay, name).items():
            assert torch.equal(tensor, getattr(restored, name)[key]), (name, key)
    counts = ("next_slot", "num_episodes", "episodes_committed", "transitions_committed")
    assert [getattr(restored, c) for c in counts] == [getattr(replay, c) for c in counts]
    np.testing.assert_array_equal(restored.staged_steps, replay.staged_steps)
    a, b = replay.sample(64), restored.sample(64)  # the same RNG stream continues
    for key in a.obs:
        assert torch.equal(a.obs[key], b.obs[key])
    assert torch.equal(a.reward, b.reward)
    with pytest.raises(ValueError, match="--buffer-size"):
        replay_for(spec, buffer_size=50).load(tmp_path / "replay")


def test_replay_saved_on_another_kind_of_device_loads_and_samples_deterministically(
    tmp_path, capsys
):
    # A CUDA generator's state is 16 bytes and a CPU one's 5,056: a run checkpointed on a GPU
    # and resumed on a CPU (or back) used to stop with "RNG state is wrong size".
    spec = make_spec(T=10, n_envs=1)
    replay = replay_for(spec, buffer_size=30)
    fill(replay, [0, 1, 2], [10, 4, 10])
    replay.save(tmp_path / "replay")
    cuda_like_state = torch.arange(16, dtype=torch.uint8)
    torch.save(cuda_like_state, tmp_path / "replay" / "generator.pt")
    first, second = replay_for(spec, buffer_size=30), replay_for(spec, buffer_size=30)
    first.load(tmp_path / "replay")
    assert "another kind of device" in capsys.readouterr().out
    second.load(tmp_path / "replay")
    for key, tensor in replay.storage.items():
        assert torch.equal(tensor, first.storage[key]), key
    a, b = first.sample(64), second.sample(64)
    assert torch.equal(a.obs[ACHIEVED_GOAL], b.obs[ACHIEVED_GOAL])
    assert torch.equal(a.reward, b.reward)
    torch.save(cuda_like_state.flip(0), tmp_path / "replay" / "generator.pt")
    other = replay_for(spec, buffer_size=30)
    other.load(tmp_path / "replay")
    assert not torch.equal(other.sample(64).obs[ACHIEVED_GOAL], a.obs[ACHIEVED_GOAL])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_replay_moves_between_cpu_and_cuda(tmp_path):
    spec = make_spec(T=10, n_envs=1)
    for saved_on, loaded_on in (("cpu", "cuda"), ("cuda", "cpu")):
        replay = EpisodeReplay(ReplayConfig(buffer_size=30), spec, saved_on, verbose=False)
        fill(replay, [0, 1, 2], [10, 4, 10])
        replay.save(tmp_path / saved_on)
        moved = EpisodeReplay(ReplayConfig(buffer_size=30), spec, loaded_on, verbose=False)
        moved.load(tmp_path / saved_on)
        for key, tensor in replay.storage.items():
            assert torch.equal(tensor.cpu(), moved.storage[key].cpu()), key
        moved.sample(64)


def test_absurd_buffer_size_is_refused_before_allocating():
    spec = ReplaySpec(
        {PIXELS: (3, 84, 84), PROPRIOCEPTION: (10,), ACHIEVED_GOAL: (3,), DESIRED_GOAL: (3,)},
        4,
        50,
        4,
        4,
        0.05,
        "sparse",
    )
    with pytest.raises(
        MemoryError,
        match=r"--buffer-size 1,000,000,000 needs .* the largest "
        r"--buffer-size that fits is [\d,]+",
    ):
        replay_for(spec, buffer_size=1_000_000_000)


def test_bytes_per_transition_at_84():
    spec = ReplaySpec(
        {PIXELS: (3, 84, 84), PROPRIOCEPTION: (10,), ACHIEVED_GOAL: (3,), DESIRED_GOAL: (3,)},
        4,
        50,
        4,
        4,
        0.05,
        "sparse",
    )
    replay = replay_for(spec, buffer_size=500)
    # One frame per step (51 per 50-step episode) plus vectors and actions.
    assert 21168 * 51 / 50 < replay.bytes_per_transition < 21168 * 51 / 50 + 100
    stored = sum(t.numel() * t.element_size() for t in replay.storage.values())
    assert stored == replay.capacity * replay.bytes_per_episode


def test_real_env_transitions_and_rewards():
    """Fed by the real vector env, stored rewards (recomputed) equal the env's rewards."""
    cfg = EnvConfig(env_id="FetchReach-v4", no_pixels=True, n_envs=2, vector="sync")
    T = 50
    with FetchVectorEnv(cfg, seed=3) as venv:
        shapes = {k: s.shape for k, s in venv.single_observation_space.items()}
        threshold, reward_type = env_reward_params(cfg.env_id)
        spec = ReplaySpec(shapes, 4, T, 2, 1, threshold, reward_type)
        replay = replay_for(spec, buffer_size=10 * T, her_n_sampled_goal=0)
        obs = venv.reset()
        replay.start_episodes(obs)
        rewards = []
        for t in range(2 * T):
            delta = obs[DESIRED_GOAL] - obs[ACHIEVED_GOAL]
            noise = np.random.default_rng(t).normal(0, 0.3, (2, 3))
            action = np.concatenate([np.clip(delta * 10 + noise, -1, 1), np.zeros((2, 1))], 1)
            step = venv.step(action.astype(np.float32))
            rewards.append(step.reward)
            replay.add(action, step.next_obs, step.terminated, step.truncated, step.to_act_on)
            obs = step.to_act_on
    assert replay.num_episodes == 4
    env_rewards = np.stack(rewards)  # (2T, 2 envs)
    s = replay.storage
    recomputed = compute_reward(
        s[ACHIEVED_GOAL][:, 1:], s[DESIRED_GOAL][:, None], threshold, reward_type
    )
    # Episodes commit in env order at each boundary: slots 0,1 = first episodes of env 0,1.
    for slot in range(4):
        env, episode = slot % 2, slot // 2
        expected = env_rewards[episode * T : (episode + 1) * T, env]
        np.testing.assert_array_equal(recomputed[slot].numpy(), expected)
    assert (env_rewards == 0).any() and (env_rewards == -1).any()
    # The replay's own consistency check passes real episodes and finds a spliced one.
    assert replay_problems(replay) == []
    proprio = replay.storage[PROPRIOCEPTION]
    proprio[1, 30:] = proprio[2, : T + 1 - 30]  # episode 1 continues as another from its start
    (problem,) = replay_problems(replay)
    assert "episode 1 step 29" in problem


def test_envs_at_different_steps_stage_and_commit_correctly():
    """Env 0 ends a 3-step episode while env 1 runs on: the general (unsynchronized) path."""
    replay = replay_for(make_spec(T=10, n_envs=2), buffer_size=100)

    def both(ep0, t0, ep1, t1):
        a, b = step_obs(ep0, t0), step_obs(ep1, t1)
        return {k: torch.cat([a[k], b[k]]) for k in a}

    replay.start_episodes(both(0, 0, 1, 0))
    for t in range(3):
        replay.add(
            torch.zeros(2, 4),
            both(0, t + 1, 1, t + 1),
            [False, False],
            [t == 2, False],
            both(2, 0, 1, 0) if t == 2 else None,
        )
    assert replay.num_episodes == 1 and list(replay.staged_steps) == [0, 3]
    for t in range(10):  # now env 0 is at step t of episode 2, env 1 at step t + 3
        last1, last0 = t + 3 == 9, t == 9
        replay.add(
            torch.zeros(2, 4),
            both(2, t + 1, 1, t + 4),
            [False, False],
            [last0, last1],
            both(3, 0, 4, 0) if (last0 or last1) else None,
        )
        if last1:
            break
    s = replay.storage
    assert s["lengths"][:2].tolist() == [3, 10]
    # Slot 0: env 0's episode 0 (3 steps); slot 1: env 1's episode 1 (10 steps).
    assert s[PROPRIOCEPTION][0, :4].tolist() == [[0, 0], [0, 1], [0, 2], [0, 3]]
    assert s[PROPRIOCEPTION][1, :11, 1].tolist() == [float(i) for i in range(11)]
    assert (s[PROPRIOCEPTION][1, :11, 0] == 1).all()
    assert (s[PIXELS][1, :11, 1, 0, 0] == torch.arange(11, dtype=torch.uint8)).all()


# ---------------------------------------------------------------- stored state estimates
def frame_code(frames: torch.Tensor) -> torch.Tensor:
    """A stand-in estimator: (B, 3k, H, W) -> (B, 3) that reads every frame of the stack, so a
    wrong frame (another step, another episode) gives another value."""
    k = frames.shape[1] // 3
    per_frame = frames.view(len(frames), k, 3, SIDE, SIDE)[:, :, :, 0, 0].float()
    weights = torch.arange(1, k + 1, dtype=torch.float32)[None, :, None]
    return (per_frame * weights).sum(1)


def test_frames_at_reads_each_steps_stack_the_final_step_included():
    k, T = 3, 10
    replay = replay_for(make_spec(T=T, k=k), buffer_size=40)
    fill(replay, [0, 1, 2], [10, 4, 10])
    episode = torch.tensor([e for e in range(3) for _ in range(T + 1)])
    t = torch.arange(T + 1).repeat(3)
    stacks = replay.frames_at(episode, t)
    frames = replay.storage[PIXELS]
    for i in range(len(t)):
        e, step = int(episode[i]), int(t[i])
        naive = torch.cat([frames[e, max(0, step - k + 1 + j)] for j in range(k)])
        assert torch.equal(stacks[i], naive)
    # Where both apply it is the obs stack of gather_frames; at the final step, its next obs.
    obs, next_obs = replay.gather_frames(torch.tensor([0, 0]), torch.tensor([5, 9]))
    both = replay.frames_at(torch.tensor([0, 0, 0]), torch.tensor([5, 9, 10]))
    assert torch.equal(both[:2], obs) and torch.equal(both[2], next_obs[1])


def test_estimates_are_written_for_new_episodes_first_then_the_stalest():
    replay = replay_for(make_spec(T=10, k=2, estimate_dim=3), buffer_size=40)  # 4 episodes
    assert STATE_ESTIMATE not in replay.staging  # written after commit, never staged
    fill(replay, [0, 1, 2], [10] * 3)
    assert list(replay.stale_episodes(0)) == [0, 1, 2]  # none estimated yet: all due
    replay.write_estimates(replay.stale_episodes(0), frame_code, env_step=100)
    assert list(replay.stale_episodes(0)) == []
    replay.write_estimates(np.array([0]), frame_code, env_step=200)
    assert list(replay.stale_episodes(1)) == [1]  # written at 100, before slot 0's 200
    assert list(replay.stale_episodes(2)) == [1, 2]
    assert replay.estimate_age(300) == 300 - (200 + 100 + 100) / 3
    # Every step of an estimated episode holds the estimate of its own frame stack.
    steps = torch.arange(11)
    for slot in range(3):
        expected = frame_code(replay.frames_at(torch.full((11,), slot), steps))
        assert torch.equal(replay.storage[STATE_ESTIMATE][slot], expected)
    # A committed episode waits for its estimates, and is due before any stale one; the ring
    # wraps onto slot 0, whose old estimates no longer count.
    fill(replay, [3, 4], [10, 10])
    assert replay.host_estimated_at[:4].tolist() == [NOT_ESTIMATED, 100, 100, NOT_ESTIMATED]
    assert list(replay.stale_episodes(1)) == [0, 3, 1]


def test_sampling_without_pixels_reads_the_stored_estimates_of_obs_and_next_obs():
    replay = replay_for(make_spec(T=10, k=2, estimate_dim=3), buffer_size=40)
    fill(replay, [0, 1], [10, 10])
    replay.write_estimates(replay.stale_episodes(0), frame_code, env_step=0)
    batch = replay.sample(64, pixels=False)
    assert PIXELS not in batch.obs and PIXELS not in batch.next_obs
    episode = batch.obs[PROPRIOCEPTION][:, 0].long()  # step_obs codes (episode, step) here
    t = batch.obs[PROPRIOCEPTION][:, 1].long()
    torch.testing.assert_close(batch.obs[STATE_ESTIMATE], frame_code(replay.frames_at(episode, t)))
    torch.testing.assert_close(
        batch.next_obs[STATE_ESTIMATE], frame_code(replay.frames_at(episode, t + 1))
    )
    frames, achieved_goal = replay.sample_frames(32)
    assert frames.shape == (32, 6, SIDE, SIDE) and frames.dtype == torch.uint8
    # The estimator's target is the achieved goal of the same step as its newest frame.
    torch.testing.assert_close(achieved_goal[:, 1], frames[:, -2, 0, 0].float())


def test_estimates_survive_save_and_load(tmp_path):
    spec = make_spec(T=10, k=2, estimate_dim=3)
    replay = replay_for(spec, buffer_size=40)
    fill(replay, [0, 1, 2], [10] * 3)
    replay.write_estimates(np.array([1]), frame_code, env_step=7)
    replay.save(tmp_path / "r")
    loaded = replay_for(spec, buffer_size=40)
    loaded.load(tmp_path / "r")
    assert torch.equal(loaded.storage[STATE_ESTIMATE], replay.storage[STATE_ESTIMATE])
    assert loaded.host_estimated_at.tolist() == replay.host_estimated_at.tolist()
    assert list(loaded.stale_episodes(0)) == [0, 2]
