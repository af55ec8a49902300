"""The training engine on tiny modules: reproducibility, accumulation, clipping, schedules, EMA,
non-finite steps, checkpoints, logs, bad files, sampler."""
from __future__ import annotations

import csv
import math
import os

import pytest
import torch
from torch import nn

from edgeast.config import ConfigError
from edgeast.engine import EngineConfig, NonFiniteLossError, Trainer, seed_everything, worker_rng
from edgeast.engine.sampler import ResumableSampler, class_balanced_weights
from edgeast.engine.schedule import lr_factor
from edgeast.engine.state import (CheckpointError, find_checkpoint, load_train_state, load_weights, read_done,
                                  save_checkpoint)
from conftest import FlakyFiles, Regressor, regression_data


def train(tmp_path, name="run", data=None, module=None, evaluate=None, resume=False, **cfg):
    seed_everything(cfg.get("seed", 0))
    module = module if module is not None else Regressor(dropout=cfg.pop("dropout", 0.0))
    defaults = dict(epochs=2, batch_size=8, lr=1e-2, log_every=2)
    trainer = Trainer(EngineConfig(**{**defaults, **cfg}), module, data or regression_data(), tmp_path / name,
                      evaluate=evaluate)
    return trainer, trainer.fit(resume=resume)


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_same_seed_same_weights_bitwise(tmp_path):
    a, _ = train(tmp_path, "a", dropout=0.2)
    b, _ = train(tmp_path, "b", dropout=0.2)
    c, _ = train(tmp_path, "c", dropout=0.2, seed=1)
    wa, wb, wc = weights(a.module), weights(b.module), weights(c.module)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["net.0.weight"], wc["net.0.weight"])


def test_accumulation_matches_a_larger_batch(tmp_path):
    big, _ = train(tmp_path, "big", batch_size=8, weight_decay=0.0, schedule="constant")
    acc, result = train(tmp_path, "acc", batch_size=4, accum_steps=2, weight_decay=0.0, schedule="constant")
    assert result.steps == 16  # 64 samples / (4 x 2) per step x 2 epochs
    wb, wa = weights(big.module), weights(acc.module)
    assert not torch.equal(wb["net.0.weight"], Regressor().state_dict()["net.0.weight"])
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_gradient_clipping_bounds_the_norm(tmp_path):
    seed_everything(0)
    trainer = Trainer(EngineConfig(epochs=1, batch_size=8, clip_grad=0.25, log_every=1, lr=1e-3),
                      Regressor(), regression_data(), tmp_path / "clip")
    norms = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in trainer.params]).item())
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.fit()
    with open(trainer.run_dir / "metrics.csv") as f:
        unclipped = [float(r["grad_norm"]) for r in csv.DictReader(f) if r["grad_norm"]]
    assert len(norms) == 8 and len(unclipped) == 8
    assert min(unclipped) > 1.0  # the raw gradients are large ...
    assert max(norms) == pytest.approx(0.25, rel=1e-4)  # ... and what the optimizer saw was clipped to 0.25


def test_warmup_cosine_and_step_schedules():
    cfg = EngineConfig(schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(cfg, 0, 110, 10) == pytest.approx(0.1)
    assert lr_factor(cfg, 4, 110, 10) == pytest.approx(0.5)
    assert lr_factor(cfg, 9, 110, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 10, 110, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 60, 110, 10) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(cfg, 110, 110, 10) == pytest.approx(0.1)
    step = EngineConfig(schedule="step", lr_decay_start=2, lr_decay_rate=0.5)
    assert [lr_factor(step, s, 100, 10) for s in (0, 19, 20, 29, 30, 45)] == \
        pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.125])
    assert lr_factor(EngineConfig(schedule="constant", warmup_steps=4), 1, 100, 10) == pytest.approx(0.5)


class ScaledGroups(Regressor):
    """Layer-wise LR: the first layer learns at half the rate."""

    def param_groups(self, weight_decay: float) -> list[dict]:
        return [{"params": list(self.net[0].parameters()), "lr_scale": 0.5, "weight_decay": weight_decay},
                {"params": list(self.net[3].parameters()), "weight_decay": 0.0}]


def test_trainer_applies_schedule_and_lr_scale(tmp_path):
    trainer, _ = train(tmp_path, module=ScaledGroups(), epochs=1, schedule="step", lr_decay_start=0,
                       lr_decay_rate=0.5, lr=0.1)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([0.025, 0.05])
    with open(trainer.run_dir / "metrics.csv") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f) if r["lr"]]
    assert len(lrs) == 4 and lrs == pytest.approx([0.05] * 4)


class Recorder(Regressor):
    """Keeps the raw weights after every optimizer step (the hook the engine calls)."""

    def __init__(self):
        super().__init__()
        self.history = [self.net[0].weight.detach().clone()]
        self.epochs_seen = []

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        assert step == len(self.history) and total_steps == 16
        self.history.append(self.net[0].weight.detach().clone())

    def set_epoch(self, epoch: int) -> None:
        self.epochs_seen.append(epoch)


def test_ema_is_the_final_model_and_checkpointed(tmp_path):
    trainer, _ = train(tmp_path, module=Recorder(), ema_decay=0.8)
    module = trainer.module
    assert len(module.history) == 17 and module.epochs_seen == [0, 1]
    ema = module.history[0]
    for w in module.history[1:]:
        ema = ema + 0.2 * (w - ema)
    torch.testing.assert_close(module.net[0].weight, ema, rtol=1e-5, atol=1e-6)
    raw = Regressor()
    load_weights(raw, trainer.run_dir / "checkpoint")
    assert torch.equal(raw.net[0].weight, module.history[-1])
    load_weights(raw, trainer.run_dir / "checkpoint", ema=True)
    assert torch.equal(raw.net[0].weight, module.net[0].weight)


class GoesNaN(Regressor):
    """Loss is NaN on the training forwards listed in `bad` (1-based)."""

    def __init__(self, bad):
        super().__init__()
        self.bad, self.calls = bad, 0

    def forward(self, batch):
        loss, metrics = super().forward(batch)
        self.calls += 1
        return (loss * math.nan if self.bad(self.calls) else loss), metrics


def test_nonfinite_steps_are_skipped(tmp_path):
    module = GoesNaN(lambda call: call in (3, 4))
    snapshots = {}
    module.after_optimizer_step = lambda step, total: snapshots.__setitem__(step, weights(module))
    trainer, result = train(tmp_path, module=module, epochs=1)
    assert result.skipped_nonfinite == 2 and result.steps == 8
    assert sorted(snapshots) == [1, 2, 5, 6, 7, 8]  # no optimizer step at steps 3 and 4
    assert all(torch.isfinite(v).all() for v in weights(trainer.module).values())
    with open(trainer.run_dir / "metrics.csv") as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f) if r["lr"]}
    assert rows[4]["loss"] == "" and float(rows[4]["skipped_nonfinite"]) == 2  # steps 3-4 both skipped
    assert all(math.isfinite(float(rows[s]["loss"])) for s in (2, 6, 8))


def test_too_many_nonfinite_steps_stop_with_checkpoint_intact(tmp_path):
    module = GoesNaN(lambda call: call > 4)
    snapshots = {}
    module.after_optimizer_step = lambda step, total: snapshots.__setitem__(step, weights(module))
    message = r"3 optimizer steps in a row.*step 7.*last good checkpoint \(step 6\)"
    with pytest.raises(NonFiniteLossError, match=message):
        train(tmp_path, module=module, checkpoint_every=2, max_nonfinite=3)
    checkpoint = find_checkpoint(tmp_path / "run")
    assert load_train_state(checkpoint)["step"] == 6 and read_done(tmp_path / "run") is None
    restored = Regressor()
    load_weights(restored, checkpoint)  # steps 5-6 were skipped: the weights after step 4
    assert max(snapshots) == 4
    assert all(torch.equal(v, snapshots[4][k]) for k, v in restored.state_dict().items())


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.out = nn.Linear(3, 5, bias=False)
        self.out.weight = self.embed.weight


def test_checkpoint_is_atomic_and_falls_back(tmp_path, monkeypatch):
    module = Tied()
    save_checkpoint(tmp_path, module, {"step": 1, "nested": {"t": torch.arange(3)}})
    import edgeast.engine.state as state

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(state.torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, module, {"step": 2})
    monkeypatch.undo()
    assert load_train_state(find_checkpoint(tmp_path))["step"] == 1  # the half-written one never replaced it
    os.replace(tmp_path / "checkpoint", tmp_path / "checkpoint.old")  # a crash between the two renames
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint.old"
    assert torch.equal(load_train_state(find_checkpoint(tmp_path))["nested"]["t"], torch.arange(3))
    save_checkpoint(tmp_path, module, {"step": 3})
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint" and not (tmp_path / "checkpoint.old").exists()
    loaded = Tied()
    load_weights(loaded, tmp_path / "checkpoint")
    assert torch.equal(loaded.embed.weight, module.embed.weight) and loaded.out.weight is loaded.embed.weight
    with pytest.raises(CheckpointError, match="does not fit this module"):
        load_weights(Regressor(), tmp_path / "checkpoint")


def test_logs_curves_and_done_marker(tmp_path):
    evals = iter(range(10))
    trainer, result = train(tmp_path, evaluate=lambda m: {"acc": 0.5 + next(evals) / 10, "training": m.training})
    run = trainer.run_dir
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) >= {"step", "epoch", "lr", "loss", "grad_norm", "clips_per_s", "mae", "eval_acc"}
    train_rows = [r for r in rows if r["loss"]]
    assert [int(r["step"]) for r in train_rows] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert all(float(r["clips_per_s"]) > 0 for r in train_rows)
    assert [(int(r["step"]), float(r["eval_acc"])) for r in rows if r["eval_acc"]] == [(8, 0.5), (16, 0.6)]
    assert result.metrics == {"acc": 0.6, "training": 0.0}  # evaluated in eval mode
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    done = read_done(run)
    assert done["steps"] == 16 and done["epochs"] == 2.0 and done["history"] == str(run / "metrics.csv")
    assert trainer.module.training  # back in train mode after evaluation
    # A finished run resumes to its final weights without training again.
    again, again_result = train(tmp_path, evaluate=lambda m: pytest.fail("must not evaluate"), resume=True)
    assert again_result == result
    assert all(torch.equal(a, b) for a, b in zip(weights(again.module).values(), weights(trainer.module).values()))
    # Given more epochs, a finished run trains on from its checkpoint.
    _, longer = train(tmp_path, epochs=3, evaluate=lambda m: {"acc": 0.9}, resume=True)
    assert longer.steps == 24 and longer.metrics == {"acc": 0.9} and read_done(run)["steps"] == 24
    with open(run / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f) if r["loss"]][-5:] == [16, 18, 20, 22, 24]


def test_bad_files_are_skipped_and_counted(tmp_path):
    data = FlakyFiles(set(range(0, 32, 2)) | {1, 3, 5, 7})  # 20 of 32 bad: some batches of 2 are all bad
    trainer, result = train(tmp_path, data=data, batch_size=2, epochs=2)
    assert data.skipped == 40
    assert result.skipped_bad_files == 40
    assert result.steps == 32
    assert all(torch.isfinite(v).all() for v in weights(trainer.module).values())


def test_sampler_shards_resumes_and_balances():
    ranks = [ResumableSampler(10, seed=3, rank=r, world_size=3) for r in range(3)]
    shards = [s.epoch_order(0) for s in ranks]
    assert all(len(s) == 4 for s in shards) and set(sum(shards, [])) == set(range(10))
    assert ranks[0].epoch_order(0) == shards[0] and ranks[0].epoch_order(1) != shards[0]
    ranks[1].set_epoch(0, start=3)
    assert list(ranks[1]) == shards[1][3:] and len(ranks[1]) == 1
    targets = [0] * 90 + [1] * 10
    balanced = ResumableSampler(100, seed=0, weights=class_balanced_weights(targets))
    drawn = [targets[i] for e in range(5) for i in balanced.epoch_order(e)]
    assert 0.4 < sum(drawn) / len(drawn) < 0.6
    a, b = worker_rng(0, 2, 7), worker_rng(0, 2, 7)
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
    assert not torch.equal(torch.rand(3, generator=worker_rng(0, 3, 7)), torch.rand(3, generator=worker_rng(0, 2, 7)))


def test_config_rejects_bad_values_with_the_key():
    assert EngineConfig(betas=[0.9, 0.95]).betas == (0.9, 0.95)
    with pytest.raises(ConfigError, match=r"engine.optimizer='sgd'.*adamw, adam"):
        EngineConfig(optimizer="sgd")
    with pytest.raises(ConfigError, match=r"engine.accum_steps=0"):
        EngineConfig(accum_steps=0)
    with pytest.raises(ConfigError, match=r"engine.ema_decay=1.5"):
        EngineConfig(ema_decay=1.5)


def test_resume_refuses_a_changed_batch_size(tmp_path):
    train(tmp_path, epochs=1)
    (tmp_path / "run" / "done.json").unlink()
    with pytest.raises(CheckpointError, match="batch_size=8 in the checkpoint but 4 now"):
        train(tmp_path, epochs=1, batch_size=4, resume=True)
