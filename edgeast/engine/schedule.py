"""Learning-rate schedules as a pure function of the optimizer step.

The engine sets every parameter group's lr to
`cfg.lr * group["lr_scale"] * lr_factor(...)` before each optimizer step, so
the schedule has no state of its own: resuming only needs the step.
"""
from __future__ import annotations

import math

from edgeast.engine.config import EngineConfig


def lr_factor(cfg: EngineConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of cfg.lr for optimizer step `step` (0-based) of `total_steps`.

    - warmup: linear, (step + 1) / warmup_steps over the first warmup_steps steps;
    - cosine: from 1 after warmup down towards min_lr_ratio at total_steps;
    - step (SSAST fine-tuning): lr_decay_rate ** (epoch - lr_decay_start + 1) from
      0-based epoch lr_decay_start on, i.e. SSAST's MultiStepLR counted from epoch 1;
    - constant: 1 after warmup.
    """
    warmup = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.schedule == "constant":
        return warmup
    if cfg.schedule == "step":
        epoch = step // max(1, steps_per_epoch)
        return warmup * cfg.lr_decay_rate ** max(0, epoch - cfg.lr_decay_start + 1)
    if step < cfg.warmup_steps:
        return warmup
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine
