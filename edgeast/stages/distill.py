"""Distill a small student AST from the keyword teacher.

Loss = label_weight * CE(student, labels)
     + kd_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))
     [+ hidden_weight * MSE(proj(student pooled tokens), teacher pooled tokens)]

Teacher and student see the same augmented features (function matching), so
the teacher runs on the fly; `cache_teacher` trades that for one pass of the
teacher over the clean clips.
"""
from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from edgeast.audio.frontend import LogMelFrontend
from edgeast.engine.distributed import barrier
from edgeast.engine.trainer import Trainer
from edgeast.models.checkpoint import save_model
from edgeast.models.keyword import KeywordModel
from edgeast.stages.data import Mapped, with_index
from edgeast.stages.finetune import FinetuneConfig, KeywordTrainee, build_classifier
from edgeast.stages.recipe import DistillConfig


def as_finetune(cfg: DistillConfig) -> FinetuneConfig:
    """The student's own training settings (shared with the no-teacher baseline)."""
    return FinetuneConfig(init="scratch", augment=cfg.augment, engine=cfg.engine)


def build_student(cfg: DistillConfig, teacher: KeywordModel) -> KeywordModel:
    """A student with the teacher's front end and labels; optionally seeded from teacher blocks."""
    frontend = LogMelFrontend(copy.deepcopy(teacher.frontend.cfg))
    student = build_classifier(cfg.student, frontend.cfg, len(teacher.labels))
    if cfg.init == "teacher_layers":
        copy_teacher_layers(student, teacher.classifier)
    return KeywordModel(frontend, student, teacher.labels)


def copy_teacher_layers(student, teacher) -> None:
    """Initialise the student from every k-th teacher block (needs equal widths and tokenizers)."""
    s, t = student.cfg, teacher.cfg
    if (s.embed_dim, s.patch_f, s.patch_t, s.num_heads) != (t.embed_dim, t.patch_f, t.patch_t, t.num_heads):
        raise ValueError("distill.init=teacher_layers needs a student with the teacher's embed_dim, heads and "
                         f"patch size (student {s.embed_dim}/{s.num_heads}, teacher {t.embed_dim}/{t.num_heads}); "
                         "use distill.init=scratch")
    step = t.depth / s.depth
    state = {}
    for i in range(s.depth):
        j = int(i * step)
        for k, v in teacher.encoder.blocks[j].state_dict().items():
            state[f"encoder.blocks.{i}.{k}"] = v
    for k, v in teacher.state_dict().items():
        if not k.startswith("encoder.blocks.") and k in student.state_dict() and student.state_dict()[k].shape == v.shape:
            state[k] = v
    student.load_state_dict(state, strict=False)


@torch.no_grad()
def teacher_logits(teacher: KeywordModel, dataset: Dataset, batch_size: int = 64) -> Tensor:
    teacher.eval()
    out = []
    for start in range(0, len(dataset), batch_size):
        waves = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))])
        out.append(teacher(waves))
    return torch.cat(out)


class DistillTrainee(KeywordTrainee):
    """The student's fine-tuning step with a frozen teacher's soft targets added."""

    def __init__(self, student: KeywordModel, teacher: KeywordModel, cfg: DistillConfig,
                 noise_bank: Tensor | None = None, cached_logits: Tensor | None = None):
        super().__init__(student, as_finetune(cfg), noise_bank)
        self.dcfg = cfg
        self.teacher = teacher.eval().requires_grad_(False)
        if cached_logits is not None:
            self.register_buffer("cached_logits", cached_logits, persistent=False)
        else:
            self.cached_logits = None
        s_dim, t_dim = student.classifier.cfg.embed_dim, teacher.classifier.cfg.embed_dim
        self.hidden_proj = nn.Linear(s_dim, t_dim) if cfg.hidden_weight > 0 else None

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never trains (no dropout, frozen norms)
        return self

    def forward(self, batch) -> tuple[Tensor, dict[str, Tensor]]:
        wave, labels, *index = batch
        x = self.features(wave)
        s_tokens = self.model.classifier.encoder(x)
        s_pooled = self.model.classifier.pool(s_tokens)
        s_logits = self.model.classifier.head(s_pooled)
        T = self.dcfg.temperature
        with torch.no_grad():
            if self.cached_logits is not None:
                t_logits, t_pooled = self.cached_logits[index[0]], None
            else:
                t_pooled = self.teacher.classifier.pool(self.teacher.classifier.encoder(x))
                t_logits = self.teacher.classifier.head(t_pooled)
        hard = F.cross_entropy(s_logits.float(), labels)
        kd = F.kl_div(F.log_softmax(s_logits.float() / T, -1), F.log_softmax(t_logits.float() / T, -1),
                      log_target=True, reduction="batchmean") * T * T
        loss = self.dcfg.label_weight * hard + self.dcfg.kd_weight * kd
        metrics = {"acc": (s_logits.argmax(-1) == labels).float().mean().detach(), "kd": kd.detach()}
        if self.hidden_proj is not None and t_pooled is not None:
            hidden = F.mse_loss(self.hidden_proj(s_pooled).float(), t_pooled.float())
            loss = loss + self.dcfg.hidden_weight * hidden
            metrics["hidden"] = hidden.detach()
        return loss, metrics

    def param_groups(self, weight_decay: float) -> list[dict]:
        groups = super().param_groups(weight_decay)
        if self.hidden_proj is not None:
            groups.append({"params": list(self.hidden_proj.parameters()), "weight_decay": weight_decay, "lr_scale": 1.0})
        return groups


def run_distill(cfg: DistillConfig, teacher: KeywordModel, train_set, out: Path, *, evaluate=None,
                noise_bank: Tensor | None = None, resume: bool = False, with_teacher: bool = True):
    """Train a student (with the teacher, or without it for the baseline); writes <out>/model."""
    torch.manual_seed(cfg.engine.seed)
    student = build_student(cfg, teacher)
    if with_teacher:
        cached = teacher_logits(teacher, train_set) if cfg.cache_teacher else None
        trainee = DistillTrainee(student, teacher, cfg, noise_bank, cached)
        data = Mapped(train_set, with_index) if cached is not None else train_set
    else:
        trainee, data = KeywordTrainee(student, as_finetune(cfg), noise_bank), train_set
    trainer = Trainer(cfg.engine, trainee, data, out, evaluate=evaluate, name="distill" if with_teacher else "student")
    result = trainer.fit(resume=resume)
    student = trainer.module.model
    if trainer.ctx.is_main:
        save_model(student, out / "model", labels=student.labels,
                   provenance={"stage": "distill" if with_teacher else "student_baseline", "recipe": asdict(cfg)})
    barrier(trainer.ctx)
    return student, result
