"""Distill a small student AST from the keyword teacher.

Loss = label_weight * CE(student class head, labels)
     + kd_weight * teacher term, on the distillation head (DeiT, `dist_token`) or else the class head:
         soft: T^2 * KL(softmax(teacher / T) || softmax(student / T))   (Hinton et al.)
         hard: CE(student, argmax teacher)                               (DeiT's hard distillation)
     [+ hidden_weight * MSE(proj(student pooled tokens), teacher pooled tokens)]
     [+ attention_weight * KL(teacher || student) of the last block's attention among patch tokens,
        heads averaged (MiniLM); "minilm" adds MiniLM's value relation softmax(V V^T / sqrt(d))]

Teacher and student see the same augmented features (function matching), so
the teacher runs on the fly; `cache_teacher` trades that for one pass of the
teacher over the clean clips (logits only: no hidden or attention terms).
A DeiT student's inference averages its two heads, so it exports like any other.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from edgeast.audio.frontend import LogMelFrontend
from edgeast.config import ConfigError
from edgeast.engine.distributed import barrier, native_bf16
from edgeast.engine.trainer import Trainer
from edgeast.models.ast import ASTConfig
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
    student = build_classifier(cfg.student_model(), frontend.cfg, len(teacher.labels))
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


def tokenizer(cfg: ASTConfig) -> str:
    """How a model cuts its input into tokens, in words (for error messages)."""
    n_f, n_t = cfg.grid
    return (f"{cfg.patch_f}x{cfg.patch_t} patches, stride {cfg.stride_f}x{cfg.stride_t} on "
            f"{cfg.num_mel_bins} mel x {cfg.num_frames} frames ({n_f}x{n_t} tokens)")


def check_token_grids(teacher: ASTConfig, student: ASTConfig) -> None:
    """Attention maps compare token by token: both models must cut the spectrogram the same way."""
    keys = ("patch_f", "patch_t", "stride_f", "stride_t", "num_mel_bins", "num_frames")
    if any(getattr(teacher, k) != getattr(student, k) for k in keys):
        raise ConfigError(f"distill.attention_weight needs teacher and student on the same token grid, but the "
                          f"teacher has {tokenizer(teacher)} and the student {tokenizer(student)}; give "
                          "distill.student.overrides the teacher's patch_f, patch_t, stride_f and stride_t, "
                          "or set distill.attention_weight=0")


def patch_relation(a: Tensor, b: Tensor, prefix: int) -> Tensor:
    """log of the head-averaged softmax(a_h b_h^T / sqrt(d)) among patch tokens: [B, H, L, d] -> [B, N, N].

    Prefix tokens are left out (rows renormalised over patch keys), so a
    cls + distillation-token student compares with a cls-only teacher.
    """
    a, b = a[:, :, prefix:].float(), b[:, :, prefix:].float()
    log_probs = torch.log_softmax(a @ b.transpose(-2, -1) / math.sqrt(a.shape[-1]), dim=-1)  # [B, H, N, N]
    return torch.logsumexp(log_probs, dim=1) - math.log(a.shape[1])  # log of the mean over heads


def attention_relations(qkv: tuple[Tensor, Tensor, Tensor], prefix: int, kind: str) -> list[Tensor]:
    """The relations compared for attention distillation: attention maps, and value relations for "minilm"."""
    q, k, v = qkv
    relations = [patch_relation(q, k, prefix)]
    if kind == "minilm":
        relations.append(patch_relation(v, v, prefix))
    return relations


def relation_kl(teacher: Tensor, student: Tensor) -> Tensor:
    """KL(teacher || student) of log-distributions [B, N, N], summed over keys, mean over queries and batch."""
    return F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1).mean()


def kd_loss(student: Tensor, teacher: Tensor, cfg: DistillConfig) -> Tensor:
    """The teacher term: soft (T^2 KL at temperature T) or hard (CE to the teacher's top class)."""
    if cfg.kd_target == "hard":
        return F.cross_entropy(student.float(), teacher.argmax(-1))
    T = cfg.temperature
    return F.kl_div(F.log_softmax(student.float() / T, -1), F.log_softmax(teacher.float() / T, -1),
                    log_target=True, reduction="batchmean") * T * T


@torch.no_grad()
def teacher_logits(teacher: KeywordModel, dataset: Dataset, batch_size: int = 64) -> Tensor:
    teacher.eval()
    out = []
    for start in range(0, len(dataset), batch_size):
        waves = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))])
        out.append(teacher(waves))
    return torch.cat(out)


class DistillTrainee(KeywordTrainee):
    """The student's fine-tuning step with a frozen teacher's targets added."""

    def __init__(self, student: KeywordModel, teacher: KeywordModel, cfg: DistillConfig,
                 noise_bank: Tensor | None = None, cached_logits: Tensor | None = None):
        super().__init__(student, as_finetune(cfg), noise_bank)
        self.dcfg = cfg
        self.teacher = teacher.eval().requires_grad_(False)
        self.attention = cfg.attention_weight > 0
        if cached_logits is not None and (cfg.hidden_weight > 0 or self.attention):
            raise ValueError("cached teacher logits carry no hidden states or attention; "
                             "set hidden_weight and attention_weight to 0 or run the teacher on the fly")
        if self.attention:
            check_token_grids(teacher.classifier.cfg, student.classifier.cfg)
        if cached_logits is not None:
            self.register_buffer("cached_logits", cached_logits, persistent=False)
        else:
            self.cached_logits = None
        s_dim, t_dim = student.classifier.cfg.embed_dim, teacher.classifier.cfg.embed_dim
        self.hidden_proj = nn.Linear(s_dim, t_dim) if cfg.hidden_weight > 0 else None

    def teacher_autocast(self, device_type: str):
        """The frozen teacher's forward in bf16 where it pays: the quickstart teacher runs 1.65x faster on a
        CPU with bf16 matmuls (AVX512-BF16), its logits within 0.02 of fp32 ("auto": wherever bf16 is native)."""
        precision = self.dcfg.teacher_precision
        bf16 = precision == "bf16" or (precision == "auto" and native_bf16(device_type))
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never trains (no dropout, frozen norms)
        return self

    def forward(self, batch) -> tuple[Tensor, dict[str, Tensor]]:
        wave, labels, *index = batch
        x = self.features(wave)
        cfg, student, teacher = self.dcfg, self.model.classifier, self.teacher.classifier
        if self.attention:
            s_tokens, s_qkv = student.encoder.forward_with_qkv(x)
        else:
            s_tokens = student.encoder(x)
        s_logits, s_dist = student.heads(s_tokens)
        with torch.no_grad():
            if self.cached_logits is not None:
                t_logits = self.cached_logits[index[0]]
            else:
                with self.teacher_autocast(x.device.type):
                    if self.attention:
                        t_tokens, t_qkv = teacher.encoder.forward_with_qkv(x)
                    else:
                        t_tokens = teacher.encoder(x)
                    t_logits = teacher.merge_heads(*teacher.heads(t_tokens))
        hard = F.cross_entropy(s_logits.float(), labels)
        kd = kd_loss(s_logits if s_dist is None else s_dist, t_logits, cfg)
        loss = cfg.label_weight * hard + cfg.kd_weight * kd
        predicted = student.merge_heads(s_logits, s_dist).argmax(-1)  # what inference will answer
        metrics = {"acc": (predicted == labels).float().mean().detach(), "kd": kd.detach()}
        if self.hidden_proj is not None:
            hidden = F.mse_loss(self.hidden_proj(student.pool(s_tokens)).float(), teacher.pool(t_tokens).float())
            loss = loss + cfg.hidden_weight * hidden
            metrics["hidden"] = hidden.detach()
        if self.attention:
            pairs = zip(attention_relations(t_qkv, teacher.encoder.num_prefix, cfg.attention_loss),
                        attention_relations(s_qkv, student.encoder.num_prefix, cfg.attention_loss))
            attention = sum(relation_kl(t, s) for t, s in pairs)
            loss = loss + cfg.attention_weight * attention
            metrics["attention"] = attention.detach()
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
