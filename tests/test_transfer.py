"""Host <-> device traffic: one copy of each step, one sync per vector step."""

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import tiny

import pixelrl.trainer
from pixelrl.trainer import Trainer
from pixelrl.transfer import to_device, upload_step


def test_to_device_on_the_cpu_shares_memory_and_casts_when_asked():
    array = np.arange(6, dtype=np.float64).reshape(2, 3)
    tensor = to_device(array, torch.device("cpu"))
    assert tensor.data_ptr() == torch.from_numpy(array).data_ptr()  # no copy on the CPU
    cast = to_device(array, torch.device("cpu"), torch.float32)
    assert cast.dtype == torch.float32 and torch.equal(cast, torch.from_numpy(array).float())
    flags = to_device(np.array([True, False]), "cpu")
    assert flags.dtype == torch.bool


class _TensorOnCuda0:
    """Stands in for a tensor already on cuda:0, on a machine without a GPU: pinning it fails
    as torch's does ("only dense CPU tensors can be pinned"); moving it records the target."""

    device = torch.device("cuda", 0)
    moved_to = None

    def pin_memory(self):
        raise RuntimeError("cannot pin 'torch.cuda.ByteTensor': only dense CPU tensors")

    def to(self, device, non_blocking=False):
        self.moved_to = device
        return self


def test_to_device_leaves_a_tensor_already_on_the_gpu_unpinned():
    # The replay hands back tensors it already moved; "cuda" and cuda:0 do not compare equal,
    # and pinning a device tensor is an error (a GPU run's first step failed on it).
    on_gpu = _TensorOnCuda0()
    assert to_device(on_gpu, torch.device("cuda")) is on_gpu
    assert on_gpu.moved_to == torch.device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_device_on_cuda_accepts_host_and_device_tensors():
    on_gpu = to_device(np.arange(4, dtype=np.uint8), torch.device("cuda"))
    assert on_gpu.is_cuda and on_gpu.tolist() == [0, 1, 2, 3]
    assert to_device(on_gpu, torch.device("cuda")).data_ptr() == on_gpu.data_ptr()


def test_upload_step_copies_obs_once_and_puts_final_observations_in():
    obs = {"pixels": np.arange(3 * 4, dtype=np.uint8).reshape(3, 4), "goal": np.zeros((3, 2))}
    final = {"pixels": obs["pixels"] + 100, "goal": np.ones((3, 2))}
    done = np.array([False, True, False])
    on_device, next_obs = upload_step(obs, final, done, torch.device("cpu"))
    assert torch.equal(on_device["pixels"], torch.from_numpy(obs["pixels"]))
    assert torch.equal(next_obs["pixels"][1], torch.from_numpy(final["pixels"][1]))
    assert torch.equal(next_obs["pixels"][[0, 2]], torch.from_numpy(obs["pixels"][[0, 2]]))
    assert torch.equal(next_obs["goal"][1], torch.ones(2))
    same, also_same = upload_step(obs, final, np.zeros(3, dtype=bool), torch.device("cpu"))
    assert also_same is same  # nothing ended: the replay and the stack read the one copy


PIXELRL_DIR = str(Path(pixelrl.trainer.__file__).parent)
# Every way Python code reads a tensor's value on the host: on CUDA each waits for the device.
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@pytest.mark.parametrize("overlap", [True, False])
def test_one_device_sync_per_vector_step_in_steady_state(tmp_path, monkeypatch, overlap):
    cfg = tiny(tmp_path, total_steps=200, checkpoint_freq=10_000, log_interval=10_000)
    cfg = replace(cfg, run=replace(cfg.run, overlap=overlap))
    trainer = Trainer(cfg)
    counts = {"reads": 0, "uploads": 0, "actions_to_host": 0, "steps": 0}
    window = {"open": False, "inside_to_host": False}

    def counting(name, original):
        def wrapper(self, *args, **kwargs):
            if window["open"] and not window["inside_to_host"]:
                # pixelrl's own reads count. Inside torch, Adam reads its step counters, which
                # live on the host unless capturable (so no device sync; with --compile on
                # CUDA they are capturable and stay on the device).
                caller = sys._getframe(1).f_code.co_filename
                if caller.startswith(PIXELRL_DIR):
                    counts["reads"] += 1
                    counts[f"{name} in {Path(caller).name}"] = 1 + counts.get(name, 0)
            return original(self, *args, **kwargs)

        return wrapper

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))

    def counting_upload(original):
        def wrapper(data, *args, **kwargs):
            if window["open"] and not isinstance(data, torch.Tensor):
                counts["uploads"] += 1  # host data reaching a tensor without to_device
                caller = Path(sys._getframe(1).f_code.co_filename).name
                counts[f"upload in {caller}"] = 1 + counts.get(f"upload in {caller}", 0)
            return original(data, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(torch, "as_tensor", counting_upload(torch.as_tensor))
    monkeypatch.setattr(torch, "tensor", counting_upload(torch.tensor))

    real_to_host = pixelrl.trainer.to_host

    def to_host(tensor):
        counts["actions_to_host"] += window["open"]
        window["inside_to_host"] = True
        try:
            return real_to_host(tensor)
        finally:
            window["inside_to_host"] = False

    monkeypatch.setattr(pixelrl.trainer, "to_host", to_host)
    # Open the window for the vector steps from env step 120 to 200: learning has started
    # (updates from 100 on), no log and no checkpoint falls inside, and the last step ends
    # both episodes (commit to the ring, new episodes staged, frame stacks restarted).
    real_record = trainer.state.record

    def record(step):
        real_record(step)
        window["open"] = 120 <= trainer.state.env_step < 200
        counts["steps"] += window["open"]

    monkeypatch.setattr(trainer.state, "record", record)
    assert trainer.run() == 0
    assert trainer.state.n_updates > 40 and counts["steps"] == 40
    assert trainer.replay.episodes_committed == 4
    assert counts["actions_to_host"] == counts["steps"]  # the one sync: actions for workers
    assert counts["reads"] == 0, counts
    assert counts["uploads"] == 0, counts
