"""The engine's CUDA paths for real: bf16 autocast, the fused SDPA kernels, torch.compile.

CI has no GPU, so these skip there (with that reason); `bench/cuda_check.sh` runs
them on a GPU machine together with the CUDA speed bench. The kill-and-resume test
runs on CUDA in tests/test_resume.py.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from edgeast.engine import EngineConfig, Trainer, seed_everything
from edgeast.models.objectives import build_objective
from edgeast.stages.pretrain import PretrainTrainee
from test_objectives import SMALL_HEADS, TINY, synthetic_features

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/cuda_check.sh)")


class Spectrograms(torch.utils.data.Dataset):
    """Fixed synthetic [T, F] features (test_objectives' texture + moving bands)."""

    def __init__(self, n: int = 1024):
        self.x = synthetic_features(n, torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def pretrain(run_dir: Path, name: str, on_build=None, **engine) -> tuple[Trainer, list[dict]]:
    """Pretrain the tiny encoder on CUDA with the engine; returns the trainer and metrics.csv's rows."""
    seed_everything(0)
    trainee = PretrainTrainee(nn.Identity(), build_objective(name, TINY, SMALL_HEADS.get(name)))
    if on_build is not None:
        on_build(trainee)
    cfg = EngineConfig(**{**dict(device="cuda", batch_size=16, lr=2e-3, warmup_steps=10, log_every=10), **engine})
    trainer = Trainer(cfg, trainee, Spectrograms(), run_dir)
    trainer.fit()
    with open(run_dir / "metrics.csv") as f:
        return trainer, [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]


@pytest.mark.parametrize("name", ["ssast", "maeast", "asit"])
def test_objective_learns_on_cuda_under_bf16_autocast(tmp_path, name):
    dtypes = []

    def record_dtypes(trainee):
        trainee.objective.encoder.blocks[0].attn.qkv.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))

    trainer, rows = pretrain(tmp_path, name, record_dtypes, precision="bf16", max_steps=200)
    assert set(dtypes) == {torch.bfloat16}  # the matmuls ran in bf16 ...
    assert all(p.dtype == torch.float32 and p.is_cuda for p in trainer.module.parameters())  # ... on fp32 weights
    first, last = rows[:2], rows[-2:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    if name != "asit":
        assert mean(last, "loss") < 0.8 * mean(first, "loss")
        assert mean(last, "acc") > 10 / 25  # masked-patch InfoNCE accuracy; chance is 1 in 24-25
    else:  # the global DINO term rises from its start as the centre forms (H100: 1.7 -> 4.2; fp32 the same)
        assert mean(last, "loss_local") < 0.5 * mean(first, "loss_local")  # H100: 3.55 -> 1.32
        assert mean(last, "recon_l1") < 0.8 * mean(first, "recon_l1")  # 0.53 -> 0.30
        assert mean(last, "acc") > mean(first, "acc") + 0.15  # 0.23 at step 10 -> 0.58


def test_bf16_loss_matches_fp32_on_cpu():
    """The same weights and batch: CUDA bf16 autocast within bf16 rounding of the CPU fp32 loss."""
    seed_everything(0)
    objective = build_objective("maeast", TINY)
    x = synthetic_features(16, torch.Generator().manual_seed(3))
    ref, _ = objective(x, generator=torch.Generator().manual_seed(4))
    objective.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got, _ = objective(x.cuda(), generator=torch.Generator().manual_seed(4))
    assert abs(got.item() - ref.item()) < 2e-2 * abs(ref.item())


def test_attention_runs_on_the_fused_flash_kernel():
    """Only the flash kernel allowed: SDPA raises if our attention's inputs rule it out."""
    seed_everything(0)
    encoder = build_objective("ssast", TINY).encoder.cuda()
    x = torch.randn(4, TINY.num_frames, TINY.num_mel_bins, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        fused = encoder(x)
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.MATH]):
        math_ = encoder(x)
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused.float(), math_.float(), rtol=5e-2, atol=5e-2)


def test_compiled_training_matches_eager(tmp_path):
    _, eager = pretrain(tmp_path / "eager", "maeast", max_steps=40, precision="fp32")
    _, compiled = pretrain(tmp_path / "compiled", "maeast", max_steps=40, precision="fp32", compile=True)
    assert len(eager) == len(compiled) == 4
    for a, b in zip(eager, compiled):  # TF32 matmuls and fused kernels: close, not bitwise
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-2)
    assert compiled[-1]["loss"] < compiled[0]["loss"]
