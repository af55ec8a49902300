"""The pipeline recipe: one YAML file describes pretrain -> teacher -> student.

Each section is a plain dataclass; `edgeast.config.load_config(Recipe, path,
overrides)` validates the whole file before any work starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeast.audio.augment import AugmentConfig
from edgeast.audio.frontend import FrontendConfig
from edgeast.config import ConfigError
from edgeast.engine.config import PRECISIONS, EngineConfig

STAGES = ("pretrain", "finetune", "distill")
DISTILL_INITS = ("scratch", "teacher_layers")
KD_TARGETS = ("soft", "hard")
ATTENTION_LOSSES = ("attention", "minilm")
DIST_TOKEN_OVERRIDES = {"prefix_tokens": 2, "dist_head": True}


@dataclass
class DataConfig:
    root: str = "data/synth"            # Speech Commands layout (or folder-per-class with kind=folders)
    kind: str = "speech_commands"       # "speech_commands" | "folders"
    task: str = "auto"                  # speech_commands: "auto" | "ks1" | "35"
    unlabeled: str = ""                 # pretraining audio; default: <root>/unlabeled, else the labelled clips
    synthesize: bool = False            # create `root` with `edgeast data synth` if it does not exist
    synth: dict[str, Any] = field(default_factory=dict)  # SynthConfig fields for synthesize
    in_memory: bool = True              # decode every clip once and keep it in RAM (small sets)


@dataclass
class ModelConfig:
    size: str = "tiny"                  # a name from `edgeast models`
    overrides: dict[str, Any] = field(default_factory=dict)  # ASTConfig fields, e.g. {depth: 4, stride_t: 10}


@dataclass
class PretrainConfig:
    enabled: bool = True
    objective: str = "maeast"           # "ssast" | "maeast" | "asit"
    objective_cfg: dict[str, Any] = field(default_factory=dict)
    engine: EngineConfig = field(default_factory=EngineConfig)


@dataclass
class FinetuneConfig:
    enabled: bool = True
    init: str = "pretrain"              # "pretrain" | "scratch" | path to a checkpoint (own or imported)
    loss: str = "ce"                    # "ce" | "bce" (SSAST on Speech Commands)
    label_smoothing: float = 0.0
    layer_decay: float = 1.0            # layer-wise LR decay (1.0 = off)
    linear_probe: bool = False          # freeze the encoder, train the head only
    standardize_features: bool = True   # trained weights: fold pooled-feature mean/std into the final norm
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


@dataclass
class DistillConfig:
    enabled: bool = True
    student: ModelConfig = field(default_factory=lambda: ModelConfig(size="student-64x4"))
    init: str = "scratch"               # "scratch" | "teacher_layers" (copy every k-th teacher block; same dims)
    label_weight: float = 0.1           # hard-label CE weight (on the class head)
    kd_weight: float = 0.9              # teacher term weight (on the distillation head with dist_token)
    temperature: float = 2.0            # softens teacher and student logits in the soft teacher term
    kd_target: str = "soft"             # "soft": T^2 KL to softened teacher logits | "hard": CE to its argmax (DeiT)
    dist_token: bool = False            # DeiT: a distillation token + head on the student learns the teacher term
    hidden_weight: float = 0.0          # MSE between projected student and teacher hidden states
    attention_weight: float = 0.0       # KL between last-layer attention of teacher and student (same token grid)
    attention_loss: str = "attention"   # "attention": head-averaged attention maps | "minilm": plus value relations
    cache_teacher: bool = False         # compute teacher logits once on clean clips instead of on the fly
    teacher_precision: str = "auto"     # the on-the-fly teacher's forward: "auto" (bf16 where native) | "bf16" | "fp32"
    baseline: bool = True               # also train the same student without the teacher, for comparison
    side_by_side: bool = True           # CPU, >= 2 cores: train the baseline in a second process meanwhile
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        choices = (("init", DISTILL_INITS), ("kd_target", KD_TARGETS), ("attention_loss", ATTENTION_LOSSES))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ConfigError(f"distill.{name}={getattr(self, name)!r}: use one of {', '.join(allowed)}")
        weights = ("label_weight", "kd_weight", "hidden_weight", "attention_weight")
        for name in weights:
            if getattr(self, name) < 0:
                raise ConfigError(f"distill.{name}={getattr(self, name)}: a loss weight must not be negative")
        if not any(getattr(self, name) > 0 for name in weights):
            raise ConfigError("distill: every loss weight is 0, so the student would learn nothing; "
                              "set distill.label_weight and distill.kd_weight (e.g. 0.5 and 0.5)")
        if self.teacher_precision not in PRECISIONS:
            raise ConfigError(f"distill.teacher_precision={self.teacher_precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.temperature <= 0:
            raise ConfigError(f"distill.temperature={self.temperature}: must be > 0 (2 to 4 is usual)")
        if self.cache_teacher and (self.hidden_weight > 0 or self.attention_weight > 0):
            raise ConfigError("distill.cache_teacher=true keeps only the teacher's logits, so hidden_weight="
                              f"{self.hidden_weight} / attention_weight={self.attention_weight} cannot apply; "
                              "set distill.cache_teacher=false or those weights to 0")
        if self.dist_token:
            given = {k: v for k, v in self.student.overrides.items() if k in DIST_TOKEN_OVERRIDES}
            if any(v != DIST_TOKEN_OVERRIDES[k] for k, v in given.items()):
                raise ConfigError(f"distill.dist_token=true builds the student with {DIST_TOKEN_OVERRIDES}, but "
                                  f"distill.student.overrides sets {given}; remove those overrides")

    def student_model(self) -> ModelConfig:
        """The student as built: with `dist_token`, cls + distillation token and a head on each."""
        if not self.dist_token:
            return self.student
        return ModelConfig(self.student.size, {**self.student.overrides, **DIST_TOKEN_OVERRIDES})


@dataclass
class Recipe:
    name: str = "run"
    run_dir: str = ""                   # default runs/<name>
    seed: int = 0
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    data: DataConfig = field(default_factory=DataConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    fit_normalization: bool = True      # compute mean/std on the training clips instead of the paper's numbers
    teacher: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ConfigError(f"stages: unknown stage {bad[0]!r}; use some of {', '.join(STAGES)}")

    @property
    def out(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")
