"""Training state on disk: atomic checkpoints, RNG capture, the `done.json` marker.

Layout of a run folder:

    run_dir/checkpoint/module.safetensors   module.state_dict() (raw weights, what training resumes from)
    run_dir/checkpoint/ema.safetensors      EMA weights (only with ema_decay > 0)
    run_dir/checkpoint/train_state.pt       optimizer, step, data position, RNG states of every rank, counters
    run_dir/done.json                       written last when a run finished (its FitResult)

A checkpoint is written into `.checkpoint.tmp/` and swapped in by renames, so a
crash at any moment leaves either the old or the new checkpoint complete:
between the two renames only `checkpoint.old/` exists, and `find_checkpoint`
falls back to it. `train_state.pt` holds only tensors and plain containers and
is read back with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

CHECKPOINT = "checkpoint"
MODULE_FILE = "module.safetensors"
EMA_FILE = "ema.safetensors"
TRAIN_STATE_FILE = "train_state.pt"
DONE_FILE = "done.json"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be resumed from."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices); call before building a module for reproducible init."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng(device: torch.device) -> dict:
    """This process's RNG states as tensors and plain values (safe for weights_only loading)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_checkpoint(run_dir: str | Path, module: nn.Module, train_state: dict,
                    ema_module: nn.Module | None = None) -> Path:
    """Write run_dir/checkpoint/ atomically (temp folder, fsync, renames); returns its path."""
    run_dir = Path(run_dir)
    final, old, tmp = run_dir / CHECKPOINT, run_dir / f"{CHECKPOINT}.old", run_dir / f".{CHECKPOINT}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(module, str(tmp / MODULE_FILE))
    if ema_module is not None:
        save_model(ema_module, str(tmp / EMA_FILE))
    torch.save(train_state, tmp / TRAIN_STATE_FILE)
    for f in tmp.iterdir():
        _fsync_file(f)
    _fsync_dir(tmp)
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(run_dir)
    if old.exists():
        shutil.rmtree(old)
    return final


def find_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint folder of a run (checkpoint/, else checkpoint.old/), or None."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
        path = Path(run_dir) / name
        if (path / TRAIN_STATE_FILE).is_file() and (path / MODULE_FILE).is_file():
            return path
    return None


def load_train_state(checkpoint: Path) -> dict:
    try:
        return torch.load(checkpoint / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which and what to do
        raise CheckpointError(f"{checkpoint / TRAIN_STATE_FILE}: cannot be read ({e.__class__.__name__}); "
                              "delete the checkpoint folder to start over") from None


def load_weights(module: nn.Module, checkpoint: str | Path, *, ema: bool = False) -> None:
    """Load module.safetensors (or ema.safetensors when `ema` and present) into `module`, strictly."""
    checkpoint = Path(checkpoint)
    path = checkpoint / EMA_FILE if ema and (checkpoint / EMA_FILE).is_file() else checkpoint / MODULE_FILE
    device = next(iter(module.state_dict().values()), torch.empty(0)).device
    try:
        load_model(module, path, strict=True, device=str(device))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: does not fit this module ({str(e).splitlines()[0]}); "
                              "it was written for a different model, start the run over") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small text file via a temp file + rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    _fsync_file(tmp)
    os.replace(tmp, path)


def write_done(run_dir: str | Path, info: dict) -> None:
    atomic_write_text(Path(run_dir) / DONE_FILE, json.dumps(info, indent=2) + "\n")


def read_done(run_dir: str | Path) -> dict | None:
    """The finished run's FitResult fields, or None if the run has not finished."""
    path = Path(run_dir) / DONE_FILE
    return json.loads(path.read_text()) if path.is_file() else None
