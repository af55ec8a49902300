"""EngineConfig: every knob of the training loop, one plain dataclass (a recipe's `engine:` section)."""
from __future__ import annotations

from dataclasses import dataclass

from edgeast.config import ConfigError

OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "constant", "step")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class EngineConfig:
    device: str = "auto"              # auto -> cuda, then mps, then cpu; or "cpu" / "cuda" / "cuda:1" / "mps"
    precision: str = "auto"           # auto: bf16 autocast on CUDA, fp32 elsewhere; "bf16" | "fp32"
    compile: bool = False             # torch.compile the (DDP-wrapped) module
    epochs: int = 1
    max_steps: int = 0                # >0: train exactly this many optimizer steps (epochs is then ignored)
    batch_size: int = 32              # per process
    accum_steps: int = 1              # micro-batches per optimizer step
    num_workers: int = 0              # DataLoader workers; pinned memory on CUDA
    optimizer: str = "adamw"          # "adamw" | "adam" (Adam adds weight_decay as L2, like SSAST)
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"          # "cosine" | "constant" | "step"
    warmup_steps: int = 0             # linear warmup over the first optimizer steps
    min_lr_ratio: float = 0.0         # cosine floor, as a fraction of lr
    lr_decay_start: int = 5           # step schedule: first (0-based) epoch at lr * lr_decay_rate
    lr_decay_rate: float = 0.85       # step schedule: factor per epoch from lr_decay_start on
    clip_grad: float = 0.0            # >0: clip the global gradient norm to this
    ema_decay: float = 0.0            # >0: keep an EMA of the weights; it becomes the final model
    seed: int = 0
    checkpoint_every: int = 0         # steps between checkpoints; one is always written at each epoch end
    log_every: int = 10               # steps between CSV / TensorBoard rows
    max_nonfinite: int = 20           # consecutive non-finite steps that stop the run (0: never stop)
    balanced_sampling: bool = False   # class-balanced sampling (with replacement) from dataset.targets
    find_unused_parameters: bool = False  # DDP: needed only when some parameters get no gradient

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"engine.{name}={getattr(self, name)!r}: use one of {', '.join(allowed)}")
        for name in ("epochs", "batch_size", "accum_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"engine.{name}={getattr(self, name)}: must be at least 1")
        for name in ("max_steps", "num_workers", "warmup_steps", "checkpoint_every", "max_nonfinite",
                     "lr_decay_start", "clip_grad", "weight_decay", "lr"):
            if getattr(self, name) < 0:
                raise ConfigError(f"engine.{name}={getattr(self, name)}: must not be negative")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"engine.betas={list(self.betas)}: give two numbers in [0, 1), e.g. [0.9, 0.999]")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"engine.ema_decay={self.ema_decay}: must be in [0, 1), e.g. 0.999 (0 = off)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"engine.min_lr_ratio={self.min_lr_ratio}: must be in [0, 1]")
        if not 0.0 < self.lr_decay_rate <= 1.0:
            raise ConfigError(f"engine.lr_decay_rate={self.lr_decay_rate}: must be in (0, 1]")
