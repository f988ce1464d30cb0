"""Atomic checkpoints and finding the latest complete one.

A checkpoint is a directory runs/<tag>/seed<N>/checkpoints/step_<env step>/ holding
state.pt (state dicts and counters, loadable with weights_only=True), meta.json (config, step,
git commit, wall time, success rate, sizes of every file) and, by default, replay/ (the buffer).
It is written under a temporary name, every file fsynced, then renamed: a crash leaves either
the previous checkpoint or the new one, never half of one. A checkpoint whose files do not
match the sizes in its meta.json, or whose state does not load, is skipped for the previous.
Only the newest checkpoint keeps its replay/ (it can be tens of GB).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

PREFIX = "step_"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def checkpoint_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir, step: int, state: dict, meta: dict, replay=None) -> Path:
    """Write state (+ replay) for `step` atomically; return the checkpoint directory."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:012d}"
    tmp = root / f".tmp{PREFIX}{step:012d}.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        # Serialized in memory, then written: torch.save's own file writer reports a full
        # disk as an opaque RuntimeError, a plain write as OSError(ENOSPC).
        serialized = io.BytesIO()
        torch.save(state, serialized)
        (tmp / "state.pt").write_bytes(serialized.getbuffer())
        if replay is not None:
            replay.save(tmp / "replay")
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync_file(path)
            files[str(path.relative_to(tmp))] = path.stat().st_size
        meta = {**meta, "step": step, "replay_saved": replay is not None, "files": files}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        _fsync_file(tmp / "meta.json")
        for sub in [tmp / "replay"] if replay is not None else []:
            _fsync_dir(sub)
        _fsync_dir(tmp)
    except BaseException:
        # Disk full, no permission, interrupted: the previous checkpoints are untouched; the
        # half-written one goes, so that it takes no space and is never mistaken for one.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # the same step saved again (a final checkpoint after a periodic one)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    if replay is not None:
        for older in list_checkpoints(run_dir)[1:]:
            if (older / "replay").exists():
                _drop_replay(older)
    return final


def _drop_replay(path: Path) -> None:
    """Remove an older checkpoint's replay/: first its meta.json stops listing it (atomic
    rewrite), then the files go, so a crash in between leaves a consistent checkpoint."""
    meta = json.loads((path / "meta.json").read_text())
    meta["replay_saved"] = False
    meta["files"] = {k: v for k, v in meta["files"].items() if not k.startswith("replay/")}
    tmp = path / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    _fsync_file(tmp)
    os.replace(tmp, path / "meta.json")
    _fsync_dir(path)
    shutil.rmtree(path / "replay")


def list_checkpoints(run_dir) -> list[Path]:
    """Complete-looking checkpoint directories, newest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]), reverse=True)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state, meta) of one checkpoint; raises ValueError if it is incomplete or corrupt."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable meta.json ({err})") from err
    for name, size in meta.get("files", {}).items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            raise ValueError(f"{path}: {name} is missing or truncated")
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt zip raises several error types
        raise ValueError(f"{path}: state.pt does not load ({type(err).__name__}: {err})") from err
    return state, meta


def latest_checkpoint(run_dir) -> tuple[Path, dict, dict] | None:
    """The newest checkpoint that loads, skipping (and reporting) broken ones."""
    for path in list_checkpoints(run_dir):
        try:
            state, meta = load_checkpoint(path)
        except ValueError as err:
            print(f"skipping checkpoint: {err}")
            continue
        return path, state, meta
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or a run directory (its latest complete checkpoint)."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"--checkpoint {path}: no complete checkpoint there")
    return found[0]


def to_tensor_tree(value):
    """numpy arrays -> tensors, recursively, so that state.pt loads with weights_only=True."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, dict):
        return {k: to_tensor_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_tensor_tree(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def from_tensor_tree(value):
    """The inverse of `to_tensor_tree`: tensors -> numpy arrays, recursively."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: from_tensor_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_tensor_tree(v) for v in value]
    return value
