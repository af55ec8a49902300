"""The one training loop behind pretraining, fine-tuning and distillation.

The module being trained owns its loss: `module(batch) -> (loss, metrics)`.
The engine owns everything around it: device and precision, DDP, the
resumable sampler, gradient accumulation and clipping, the optimizer and LR
schedule, an optional EMA of the weights, non-finite-loss skipping,
checkpoints and logs. Optional module hooks:

- `param_groups(weight_decay) -> list[dict]`: optimizer groups; a group's
  `lr_scale` multiplies its lr (layer-wise LR decay);
- `after_optimizer_step(step, total_steps)`: after each optimizer step
  (`step` counts steps done, 1..total_steps), e.g. an EMA teacher;
- `set_epoch(epoch)`: at the start of each epoch (also called on the dataset).

Randomness must be resumable: in the module's forward, use torch's global
RNG (saved in checkpoints); inside a dataset, draw from
`edgeast.engine.sampler.worker_rng(seed, epoch, index)`; keep collate_fn
deterministic.
"""
from __future__ import annotations

import copy
import math
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import clip_grads_with_norm_, get_total_norm
from torch.utils.data import DataLoader, Dataset

from edgeast.data.common import collate_skip_none
from edgeast.engine.config import EngineConfig
from edgeast.engine.distributed import (all_gather_objects, all_ranks_agree, all_reduce_sum, barrier,
                                        broadcast_object, setup_distributed)
from edgeast.engine.logging import CURVES_FILE, EVAL_PREFIX, METRICS_FILE, MetricsLog, ProgressDisplay, plot_curves
from edgeast.engine.sampler import ResumableSampler, class_balanced_weights, seed_from
from edgeast.engine.schedule import lr_factor
from edgeast.engine.state import (DONE_FILE, CheckpointError, capture_rng, find_checkpoint, load_train_state,
                                  load_weights, read_done, restore_rng, save_checkpoint, seed_everything, write_done)

STATE_VERSION = 1


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


@dataclass
class FitResult:
    steps: int                      # optimizer steps done (skipped ones included)
    epochs: float                   # steps / steps per epoch
    metrics: dict[str, float]       # the last evaluate() result ({} without evaluate)
    train_loss: float               # mean training loss of the last logged window
    skipped_nonfinite: int          # optimizer steps skipped for a non-finite loss or gradient
    skipped_bad_files: int          # samples the collate dropped (bad files), all ranks, every epoch
    wall_time_s: float              # training time over all sessions of the run
    history: Path                   # metrics.csv


def default_param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms, tokens or position embeddings."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim < 2 or "token" in name or "pos_embed" in name
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def to_device(batch: object, device: torch.device) -> object:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_length(batch: object) -> int | None:
    """Samples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.ndim else None
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        n = batch_length(item)
        if n is not None:
            return n
    return None


class EMA:
    """An exponential moving average of a module's weights (buffers are copied)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        torch._foreach_lerp_(list(self.module.parameters()), list(module.parameters()), 1.0 - self.decay)
        for mine, theirs in zip(self.module.buffers(), module.buffers()):
            mine.copy_(theirs)


@dataclass
class _Window:
    """What happened since the last log row."""

    loss_sum: float = 0.0
    steps: int = 0
    clips: float = 0.0
    start: float = field(default_factory=time.perf_counter)
    metrics: dict[str, Tensor] = field(default_factory=dict)
    metric_count: int = 0
    grad_norm: float = math.nan


class Trainer:
    """Train `module` on `train_set` into `run_dir`; see the module docstring for the contract."""

    def __init__(self, cfg: EngineConfig, module: nn.Module, train_set: Dataset, run_dir: str | Path, *,
                 collate_fn: Callable | None = None,
                 evaluate: Callable[[nn.Module], dict[str, float]] | None = None, name: str = "train") -> None:
        self.cfg, self.train_set, self.run_dir = cfg, train_set, Path(run_dir)
        self.evaluate_fn, self.name = evaluate, name
        self.ctx = setup_distributed(cfg.device)
        self.device = self.ctx.device
        self.module = module.to(self.device)
        bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = self._build_optimizer()
        self.ema = EMA(self.module, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.ddp = None
        self.model: nn.Module = self.module
        if self.ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.module, device_ids=ids,
                                               find_unused_parameters=cfg.find_unused_parameters)
            self.model = self.ddp
        if cfg.compile:
            self.model = torch.compile(self.model)

        weights = None
        if cfg.balanced_sampling:
            if not hasattr(train_set, "targets"):
                raise ValueError(f"balanced_sampling: {type(train_set).__name__} has no .targets (class per item); "
                                 "set engine.balanced_sampling=false")
            weights = class_balanced_weights(train_set.targets)
        self.sampler = ResumableSampler(len(train_set), seed=cfg.seed, rank=self.ctx.rank,
                                        world_size=self.ctx.world_size, weights=weights)
        self.loader_generator = torch.Generator()
        workers = cfg.num_workers
        # A dataset with set_epoch needs fresh workers each epoch to see the new epoch.
        self.loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=workers,
                                 collate_fn=collate_fn or collate_skip_none,
                                 pin_memory=self.device.type == "cuda", generator=self.loader_generator,
                                 persistent_workers=workers > 0 and not hasattr(train_set, "set_epoch"))
        self.batches_per_epoch = -(-self.sampler.per_rank // cfg.batch_size)
        self.steps_per_epoch = -(-self.batches_per_epoch // cfg.accum_steps)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        hook = getattr(self.module, "param_groups", None)
        groups = hook(cfg.weight_decay) if hook is not None else default_param_groups(self.module, cfg.weight_decay)
        groups = [{**g, "params": list(g["params"])} for g in groups]
        groups = [g for g in groups if g["params"]]
        for g in groups:
            g.setdefault("lr_scale", 1.0)
            g["lr"] = cfg.lr * g["lr_scale"]
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        # Fused: one kernel for all parameters (CPU: 0.3 ms a step for the quickstart student, 1.7 unfused).
        return cls(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                   fused=self.device.type in ("cuda", "cpu"))

    # ---- state ----------------------------------------------------------------------------------

    def _meta(self) -> dict:
        """Settings a resumed run must share with the checkpoint for the data position to mean the same."""
        c = self.cfg
        return {"world_size": self.ctx.world_size, "batch_size": c.batch_size, "accum_steps": c.accum_steps,
                "seed": c.seed, "num_samples": self.sampler.num_samples, "balanced_sampling": c.balanced_sampling}

    def _save(self) -> None:
        rng = all_gather_objects(capture_rng(self.device), self.ctx)
        if self.ctx.is_main:
            state = {"version": STATE_VERSION, "meta": self._meta(), "step": self.step, "epoch": self.epoch,
                     "batch_in_epoch": self.batch_in_epoch, "optimizer": self.optimizer.state_dict(), "rng": rng,
                     "skipped_nonfinite": self.skipped_nonfinite, "skipped_bad_files": self.skipped_bad_files,
                     "nonfinite_run": self.nonfinite_run, "wall_time_s": self._wall_time(),
                     "last_eval": self.last_eval, "train_loss": self.train_loss}
            save_checkpoint(self.run_dir, self.module, state, self.ema.module if self.ema else None)
        barrier(self.ctx)
        self.saved_step = self.step

    def _restore(self, checkpoint: Path) -> None:
        state = load_train_state(checkpoint)
        differ = {k: (v, state["meta"].get(k)) for k, v in self._meta().items() if state["meta"].get(k) != v}
        if differ:
            what = ", ".join(f"{k}={old} in the checkpoint but {new} now" for k, (new, old) in differ.items())
            raise CheckpointError(f"{checkpoint}: cannot resume: {what}; restore those settings or start over")
        load_weights(self.module, checkpoint)
        if self.ema is not None:
            load_weights(self.ema.module, checkpoint, ema=True)
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"][self.ctx.rank], self.device)
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.skipped_nonfinite, self.skipped_bad_files = state["skipped_nonfinite"], state["skipped_bad_files"]
        self.nonfinite_run, self.wall_before = state["nonfinite_run"], state["wall_time_s"]
        self.last_eval, self.train_loss = state["last_eval"], state["train_loss"]
        self.saved_step = self.step

    def _clear_run_dir(self) -> None:
        """A fresh run: remove what an earlier run left, so nothing resumes from or reports it."""
        for name in ("checkpoint", "checkpoint.old", ".checkpoint.tmp", "tensorboard"):
            shutil.rmtree(self.run_dir / name, ignore_errors=True)
        for name in (DONE_FILE, METRICS_FILE, CURVES_FILE):
            (self.run_dir / name).unlink(missing_ok=True)

    def _wall_time(self) -> float:
        return self.wall_before + time.perf_counter() - self.session_start

    # ---- the loop -------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> FitResult:
        """Train to the end (resuming from run_dir/checkpoint when `resume` and one exists)."""
        self.session_start = time.perf_counter()
        self.step = self.epoch = self.batch_in_epoch = 0
        self.skipped_nonfinite = self.skipped_bad_files = self.nonfinite_run = 0
        self.wall_before, self.last_eval, self.train_loss = 0.0, {}, math.nan
        self.saved_step = -1
        checkpoint = find_checkpoint(self.run_dir) if resume else None
        done = read_done(self.run_dir) if checkpoint is not None else None
        if done is not None and done["steps"] == self.total_steps:  # finished: nothing to train
            load_weights(self.module, checkpoint, ema=True)
            return FitResult(**{**done, "history": Path(done["history"])})
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if checkpoint is None:
                self._clear_run_dir()
            (self.run_dir / DONE_FILE).unlink(missing_ok=True)  # a finished run given more steps goes on
        barrier(self.ctx)
        if checkpoint is not None:
            self._restore(checkpoint)
        else:
            seed_everything(self.cfg.seed + self.ctx.rank)

        log = MetricsLog(self.run_dir, self.ctx.is_main, self.step if checkpoint is not None else None)
        self.progress = ProgressDisplay(self.name, self.total_steps, self.step, self.cfg.log_every * 10,
                                        self.ctx.is_main)
        if checkpoint is not None:
            self.progress.line(f"resumed from {checkpoint} at step {self.step}")
        self.window, self.progress_info = _Window(), ""
        self.model.train()
        try:
            while self.step < self.total_steps:
                self._run_epoch(log)
            if self.batch_in_epoch:  # stopped mid-epoch by max_steps
                if self.window.steps:
                    self._log_window(log)
                self._evaluate(log)
            if self.saved_step != self.step:
                self._save()
        finally:
            self.progress.close()
            log.close()

        result = FitResult(steps=self.step, epochs=round(self.step / self.steps_per_epoch, 4),
                           metrics=self.last_eval, train_loss=self.train_loss,
                           skipped_nonfinite=self.skipped_nonfinite, skipped_bad_files=self.skipped_bad_files,
                           wall_time_s=round(self._wall_time(), 3), history=self.run_dir / METRICS_FILE)
        if self.ema is not None:
            self.module.load_state_dict(self.ema.module.state_dict())
        if self.ctx.is_main:
            plot_curves(log.rows, self.run_dir / CURVES_FILE, self.name)
            write_done(self.run_dir, {**asdict(result), "history": str(result.history)})
        barrier(self.ctx)
        return result

    def _run_epoch(self, log: MetricsLog) -> None:
        cfg, ctx = self.cfg, self.ctx
        for owner in (self.module, self.train_set):
            if hasattr(owner, "set_epoch"):
                owner.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch * cfg.batch_size)
        self.loader_generator.manual_seed(seed_from(cfg.seed, self.epoch, ctx.rank))
        group: dict = {}
        for batch in self.loader:
            micro = self.batch_in_epoch
            expected = min(cfg.batch_size, self.sampler.per_rank - micro * cfg.batch_size)
            got = 0 if batch is None else (batch_length(batch) or expected)
            group["bad"] = group.get("bad", 0) + expected - got
            first = micro - micro % cfg.accum_steps
            group_size = min(cfg.accum_steps, self.batches_per_epoch - first)
            last = micro == first + group_size - 1
            # Every rank runs or skips a micro-batch together: its forward may hold collectives.
            ran = all_ranks_agree(batch is not None, ctx)
            if ran:
                self._forward_backward(to_device(batch, self.device), group, group_size, sync=last)
                group["clips"] = group.get("clips", 0) + got
            self.batch_in_epoch += 1
            if not last:
                continue
            self._optimizer_step(group, ran)
            group = {}
            self.step += 1
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                self._log_window(log)
            self.progress.update(self.step, self.progress_info)
            if self.step >= self.total_steps:
                break
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 \
                    and self.batch_in_epoch < self.batches_per_epoch:
                self._save()
        if self.batch_in_epoch == self.batches_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
            if self.window.steps:
                self._log_window(log)
            self._evaluate(log)
            shown = "".join(f" {k} {v:.4g}" for k, v in self.last_eval.items())
            self.progress.line(f"epoch {self.epoch} done at step {self.step}: loss {self.train_loss:.4f}{shown}")
            self._save()

    def _forward_backward(self, batch: object, group: dict, group_size: int, sync: bool) -> None:
        no_sync = self.ddp.no_sync() if self.ddp is not None and not sync else nullcontext()
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                  enabled=self.autocast_dtype is not None)
        with no_sync:
            with autocast:
                loss, metrics = self.model(batch)
            (loss.float() / group_size).backward()
        group["loss"] = group.get("loss", 0.0) + loss.detach().float()
        group["count"] = group.get("count", 0) + 1
        sums = group.setdefault("metrics", {})
        for k, v in metrics.items():
            v = v.detach().float() if isinstance(v, Tensor) else torch.tensor(float(v), device=self.device)
            sums[k] = sums.get(k, 0.0) + v

    def _optimizer_step(self, group: dict, ran_last: bool) -> None:
        """Step on the accumulated gradients, or skip the step (non-finite, or nothing to learn from)."""
        cfg, ctx, window = self.cfg, self.ctx, self.window
        if not ran_last:  # the step's last micro-batch was all bad files: gradients never synced
            self.optimizer.zero_grad(set_to_none=True)
            bad = all_reduce_sum(torch.tensor([float(group.get("bad", 0))], device=self.device), ctx)
            self.skipped_bad_files += int(bad.item())
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        if cfg.clip_grad > 0:
            clip_grads_with_norm_(self.params, cfg.clip_grad, norm)
        loss = group["loss"] / group["count"]
        nonfinite = (~torch.isfinite(loss) | ~torch.isfinite(norm)).float()
        stats = torch.stack([loss, nonfinite, norm.float(), torch.tensor(float(group.get("clips", 0))).to(loss),
                             torch.tensor(float(group.get("bad", 0))).to(loss)])
        loss_sum, nonfinite_ranks, norm, clips, bad = all_reduce_sum(stats, ctx).tolist()
        self.skipped_bad_files += int(bad)
        window.clips += clips
        if nonfinite_ranks > 0:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_nonfinite += 1
            self.nonfinite_run += 1
            if cfg.max_nonfinite and self.nonfinite_run >= cfg.max_nonfinite:
                kept = f"the last good checkpoint (step {self.saved_step}) is in {self.run_dir / 'checkpoint'}" \
                    if self.saved_step >= 0 else "no checkpoint was written yet"
                raise NonFiniteLossError(
                    f"{self.name}: {self.nonfinite_run} optimizer steps in a row had a non-finite loss or gradient "
                    f"(up to step {self.step + 1}); {kept}. Lower engine.lr, set engine.clip_grad, or check the data")
            return
        self.nonfinite_run = 0
        factor = lr_factor(cfg, self.step, self.total_steps, self.steps_per_epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = cfg.lr * g["lr_scale"] * factor
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.module)
        hook = getattr(self.module, "after_optimizer_step", None)
        if hook is not None:
            hook(self.step + 1, self.total_steps)
        window.loss_sum += loss_sum / ctx.world_size
        window.steps += 1
        window.grad_norm = norm
        for k, v in group["metrics"].items():
            window.metrics[k] = window.metrics.get(k, 0.0) + v
        window.metric_count += group["count"]

    def _log_window(self, log: MetricsLog) -> None:
        window = self.window
        keys = sorted(window.metrics)
        metrics = {}
        if keys:
            values = torch.stack([window.metrics[k] / window.metric_count for k in keys])
            metrics = dict(zip(keys, (all_reduce_sum(values, self.ctx) / self.ctx.world_size).tolist()))
        lr = self.cfg.lr * lr_factor(self.cfg, self.step - 1, self.total_steps, self.steps_per_epoch)
        rate = window.clips / max(1e-9, time.perf_counter() - window.start)
        row = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "lr": lr, "clips_per_s": rate,
               "skipped_nonfinite": self.skipped_nonfinite}
        if window.steps:  # else every step of the window was skipped: no loss to show
            self.train_loss = window.loss_sum / window.steps
            row.update({"loss": self.train_loss, "grad_norm": window.grad_norm})
            row.update({k: v for k, v in metrics.items() if k not in row})
        log.add(row)
        self.progress_info = f"loss {self.train_loss:.4f} lr {lr:.2e} {rate:.0f} clips/s"
        self.window = _Window()

    def _evaluate(self, log: MetricsLog) -> None:
        """Rank 0 runs evaluate() on the final-model weights (EMA if any) in eval mode; all ranks get the result."""
        if self.evaluate_fn is None:
            return
        metrics = {}
        if self.ctx.is_main:
            target = self.ema.module if self.ema is not None else self.module
            was_training = target.training
            target.eval()
            try:
                metrics = {k: float(v) for k, v in self.evaluate_fn(target).items()}
            finally:
                target.train(was_training)
        self.last_eval = broadcast_object(metrics, self.ctx)
        log.add({"step": self.step, "epoch": self.step / self.steps_per_epoch,
                 **{EVAL_PREFIX + k: v for k, v in self.last_eval.items()}})
