"""A real 2-process DDP job (torchrun, gloo on CPU) through the Trainer.

Run by torchrun, this file is the job: each rank trains twice and saves what
it ended with to OUT/rank<r>.pt. (a) clean data, batch 4 per rank: the ranks
must agree bit for bit and match one process with batch 8. (b) bad files,
some batches all bad on one rank only, accumulation, dropout and EMA: the
ranks must still agree (no hang, no drift) and report the same skip counts.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from edgeast.engine import EngineConfig, Trainer, seed_everything
from edgeast.engine.sampler import ResumableSampler
from conftest import FlakyFiles, Regressor, regression_data

REPO = Path(__file__).resolve().parents[1]
CLEAN = dict(epochs=2, lr=1e-2, weight_decay=0.0, schedule="constant", log_every=2, device="cpu")
BAD = set(range(0, 32, 2)) | {1, 3, 5, 7, 9, 11}
ROBUST = dict(epochs=2, batch_size=2, accum_steps=2, ema_decay=0.9, checkpoint_every=3, lr=1e-2, device="cpu")


def clean_run(run_dir: Path, batch_size: int) -> Trainer:
    seed_everything(0)
    trainer = Trainer(EngineConfig(batch_size=batch_size, **CLEAN), Regressor(), regression_data(), run_dir)
    trainer.fit()
    return trainer


def job(out: Path) -> None:
    rank = int(os.environ["RANK"])
    clean = clean_run(out / "clean", batch_size=4)
    seed_everything(0)
    robust = Trainer(EngineConfig(**ROBUST), Regressor(dropout=0.2), FlakyFiles(BAD), out / "robust")
    result = robust.fit()
    torch.save({"clean": clean.module.state_dict(), "robust": robust.module.state_dict(),
                "skipped_bad_files": result.skipped_bad_files, "steps": result.steps,
                "rng_ranks": len(torch.load(out / "robust" / "checkpoint" / "train_state.pt", weights_only=True)["rng"])},
               out / f"rank{rank}.pt")


def batches_all_bad_on_one_rank_only() -> int:
    count = 0
    for epoch in range(ROBUST["epochs"]):
        shards = [ResumableSampler(32, seed=0, rank=r, world_size=2).epoch_order(epoch) for r in range(2)]
        for i in range(0, 16, ROBUST["batch_size"]):
            all_bad = [set(s[i:i + ROBUST["batch_size"]]) <= BAD for s in shards]
            count += all_bad[0] != all_bad[1]
    return count


def test_two_process_gloo_ddp(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           __file__, str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    for part in ("clean", "robust"):
        for name, w in r0[part].items():
            assert torch.equal(w, r1[part][name]), f"{part}: {name} differs between the ranks"

    single = clean_run(tmp_path / "single", batch_size=8)  # the same global batch in one process
    assert not torch.equal(single.module.net[0].weight, Regressor().net[0].weight)
    for name, w in single.module.state_dict().items():
        torch.testing.assert_close(r0["clean"][name], w, rtol=1e-5, atol=1e-6)

    assert batches_all_bad_on_one_rank_only() > 0  # the case where ranks must agree to skip together
    assert r0["skipped_bad_files"] == r1["skipped_bad_files"] == len(BAD) * ROBUST["epochs"]
    assert r0["steps"] == r1["steps"] == 8 and r0["rng_ranks"] == 2
    assert (tmp_path / "robust" / "done.json").is_file() and (tmp_path / "clean" / "metrics.csv").is_file()


if __name__ == "__main__":
    job(Path(sys.argv[1]))
