"""A training process killed with SIGKILL and resumed ends with exactly the weights of an uninterrupted run.

The module draws from torch (dropout), numpy and python RNGs; the dataset
augments with `worker_rng(seed, epoch, index)` in a DataLoader worker; steps
accumulate two micro-batches; an EMA is kept. Run as a script, this file is
the training process the test kills: `python tests/test_resume.py RUN_DIR DELAY DEVICE`.
On CUDA (where there is one) the same holds bit for bit: the CUDA RNG is restored too.
"""
from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from edgeast.engine import EngineConfig, Trainer, find_checkpoint, read_done, seed_everything, worker_rng
from edgeast.engine.state import load_train_state

REPO = Path(__file__).resolve().parents[1]
CONFIG = dict(epochs=3, batch_size=4, accum_steps=2, checkpoint_every=3, lr=1e-2, log_every=2, num_workers=1,
              ema_decay=0.9, seed=5)  # 48 clips: 12 batches = 6 steps per epoch, 18 steps
TOTAL_STEPS = 18


class NoisyRegressor(nn.Module):
    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.delay = delay
        self.net = nn.Sequential(nn.Linear(4, 32), nn.GELU(), nn.Dropout(0.3), nn.Linear(32, 1))

    def forward(self, batch):
        time.sleep(self.delay)
        x, y = batch
        noise = torch.from_numpy(np.random.randn(*x.shape).astype(np.float32)).to(x.device)
        x = x + 0.01 * noise + 0.01 * random.random()
        err = self.net(x).squeeze(-1) - y
        return (err ** 2).mean(), {}


class AugmentedClips(Dataset):
    """Random per-item jitter that depends only on (seed, epoch, index)."""

    def __init__(self, n: int = 48, seed: int = 5):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x.sum(dim=1)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        jitter = 0.1 * torch.randn(4, generator=worker_rng(self.seed, self.epoch, i))
        return self.x[i] + jitter, self.y[i]


def run(run_dir: Path, resume: bool = False, delay: float = 0.0, device: str = "cpu") -> Trainer:
    seed_everything(CONFIG["seed"])
    trainer = Trainer(EngineConfig(**CONFIG, device=device), NoisyRegressor(delay), AugmentedClips(), run_dir)
    trainer.fit(resume=resume)
    return trainer


def checkpoint_step(run_dir: Path) -> int:
    checkpoint = find_checkpoint(run_dir)
    return -1 if checkpoint is None else load_train_state(checkpoint)["step"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/cuda_check.sh)"))])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, device):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, __file__, str(killed_dir), "0.1", device], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while checkpoint_step(killed_dir) < 9:
            assert proc.poll() is None, f"training process died: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint past step 9 within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert read_done(killed_dir) is None and 9 <= checkpoint_step(killed_dir) < TOTAL_STEPS

    resumed = run(killed_dir, resume=True, device=device)
    straight = run(tmp_path / "straight", device=device)
    for (name, a), b in zip(resumed.module.state_dict().items(), straight.module.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"
    moments = [[s["exp_avg_sq"] for s in t.optimizer.state_dict()["state"].values()] for t in (resumed, straight)]
    assert all(torch.equal(a, b) for a, b in zip(*moments))
    with open(killed_dir / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(2, TOTAL_STEPS + 1, 2))
    assert read_done(killed_dir)["steps"] == TOTAL_STEPS


if __name__ == "__main__":
    run(Path(sys.argv[1]), delay=float(sys.argv[2]), device=sys.argv[3])
