"""Fine-tune a keyword teacher: front end + augmentation + AST classifier + loss.

`KeywordTrainee` is what the engine trains for fine-tuning (and, with a
teacher, for distillation): waves go in, a loss comes out. Augmentation runs
batched inside the forward pass, so it is on the training device and drawn
from the torch RNG the engine saves for resume.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeast.audio.augment import AugmentConfig, SpecAugment, WaveAugment, mixup
from edgeast.audio.frontend import FrontendConfig, LogMelFrontend
from edgeast.engine.distributed import barrier
from edgeast.engine.trainer import Trainer
from edgeast.models.ast import ASTClassifier, ASTConfig, ast_config
from edgeast.models.checkpoint import from_pretrained, save_model
from edgeast.models.keyword import KeywordModel
from edgeast.stages.recipe import FinetuneConfig, ModelConfig


def build_classifier(model: ModelConfig, frontend: FrontendConfig, num_classes: int) -> ASTClassifier:
    """A fresh classifier for the recipe's model size, shaped to the front end's output."""
    overrides = {"num_mel_bins": frontend.num_mel_bins, "num_frames": frontend.num_frames or 100,
                 "num_classes": num_classes, **model.overrides}
    return ASTClassifier(ast_config(model.size, **overrides))


def layer_id(name: str, depth: int) -> int:
    """0 for embeddings, i + 1 for block i, depth + 1 for the final norm and head (BEiT-style)."""
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    if name.startswith("encoder.") and not name.startswith("encoder.norm"):
        return 0
    return depth + 1


class KeywordTrainee(nn.Module):
    """Waves + labels -> loss; what the engine optimizes for fine-tuning."""

    def __init__(self, model: KeywordModel, cfg: FinetuneConfig, noise_bank: Tensor | None = None):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.wave_augment = WaveAugment(cfg.augment)
        self.register_buffer("noise_bank", noise_bank, persistent=False)  # follows the module to its device
        self.spec_augment = SpecAugment(cfg.augment.freqm, cfg.augment.timem)
        if cfg.linear_probe:
            for p in model.classifier.encoder.parameters():
                p.requires_grad_(False)

    @property
    def num_classes(self) -> int:
        return self.model.classifier.cfg.num_classes

    def features(self, wave: Tensor) -> Tensor:
        """Augmented features in training, clean features in eval."""
        if self.training:
            self.wave_augment.noise_bank = self.noise_bank
            wave = self.wave_augment(wave)
        x = self.model.frontend(wave)
        return self.spec_augment(x) if self.training else x

    def targets(self, labels: Tensor) -> Tensor:
        eps = self.cfg.label_smoothing
        onehot = F.one_hot(labels, self.num_classes).float()
        return onehot * (1 - eps) + eps / self.num_classes

    def classification_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.cfg.loss == "bce":
            return F.binary_cross_entropy_with_logits(logits.float(), target)
        return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()

    def forward(self, batch) -> tuple[Tensor, dict[str, Tensor]]:
        wave, labels = batch
        x = self.features(wave)
        target = self.targets(labels)
        if self.training and self.cfg.augment.mixup_prob > 0:
            x, target = mixup(x, target, self.cfg.augment.mixup_alpha, prob=self.cfg.augment.mixup_prob)
        logits = self.model.classifier(x)
        loss = self.classification_loss(logits, target)
        acc = (logits.argmax(-1) == labels).float().mean()
        return loss, {"acc": acc.detach()}

    def param_groups(self, weight_decay: float) -> list[dict]:
        """No decay on 1-D params and tokens; layer-wise LR decay when configured."""
        depth = self.model.classifier.cfg.depth
        groups: dict[tuple[int, bool], dict] = {}
        for name, p in self.model.classifier.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = p.ndim <= 1 or "token" in name or "pos_embed" in name
            lid = layer_id(name, depth)
            g = groups.setdefault((lid, no_decay), {
                "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": self.cfg.layer_decay ** (depth + 1 - lid)})
            g["params"].append(p)
        return list(groups.values())


def starts_from_weights(cfg: FinetuneConfig, pretrain_dir: Path | None) -> bool:
    """False for random init: `init: scratch`, or `init: pretrain` with no pretraining checkpoint."""
    return not (cfg.init == "scratch" or (cfg.init == "pretrain" and pretrain_dir is None))


def init_teacher(cfg: FinetuneConfig, model_cfg: ModelConfig, frontend: FrontendConfig,
                 labels: list[str], pretrain_dir: Path | None, train_set=None) -> KeywordModel:
    """The starting point: our pretraining, an imported checkpoint, or random init.

    Trained weights get their pooled features standardized on `train_set` when given
    (`cfg.standardize_features`, see `standardize_features`); random init never does.
    """
    if not starts_from_weights(cfg, pretrain_dir):
        return KeywordModel(LogMelFrontend(frontend), build_classifier(model_cfg, frontend, len(labels)), labels)
    src = pretrain_dir if cfg.init == "pretrain" else Path(cfg.init)
    overrides = {k: v for k, v in model_cfg.overrides.items() if k in ("drop_path", "dropout", "stride_f", "stride_t", "pool")}
    classifier = from_pretrained(src, num_classes=len(labels), num_frames=frontend.num_frames or 100, **overrides)
    model = KeywordModel(LogMelFrontend(frontend), classifier, labels)
    if cfg.standardize_features and train_set is not None and classifier.cfg.norm_position == "final":
        standardize_features(model, train_set)
    return model


@torch.no_grad()
def standardize_features(model: KeywordModel, dataset, *, max_clips: int = 2000, batch_size: int = 64) -> None:
    """Fold the per-dimension mean and std of the pooled features on `dataset` into the encoder's final norm.

    A pretrained encoder's pooled features are mostly one vector shared by every clip (on the
    low-label synthetic set: norm 11.5 of 11.9), and the head's LayerNorm cannot remove a shared
    vector, so a fresh head sees the class information as small deviations and learns slowly
    from them (MAE's linear probe puts a BatchNorm before its head for the same reason). Pooling
    is a mean over tokens and the final norm's affine part is per dimension, so rescaling that
    affine part standardizes the pooled features exactly; the model's graph is unchanged.
    """
    encoder = model.classifier.encoder
    if encoder.cfg.norm_position != "final":
        raise ValueError("standardize_features needs the encoder's norm after its blocks (norm_position='final')")
    was_training = model.training
    model.eval()
    count = min(len(dataset), max_clips)
    items = (dataset[i] for i in range(count))
    waves = [item[0] for item in items if item is not None]
    pooled = torch.cat([model.classifier.pool(encoder(model.frontend(torch.stack(waves[i:i + batch_size]))))
                        for i in range(0, len(waves), batch_size)])
    mean, std = pooled.mean(dim=0), pooled.std(dim=0).clamp_min(1e-4)
    encoder.norm.weight.div_(std)
    encoder.norm.bias.sub_(mean).div_(std)
    model.train(was_training)


def run_finetune(cfg: FinetuneConfig, model: KeywordModel, train_set, out: Path, *,
                 evaluate=None, noise_bank: Tensor | None = None, resume: bool = False,
                 provenance: dict | None = None):
    """Train `model` on `train_set`; writes <out>/model (checkpoint) and returns (model, FitResult)."""
    trainee = KeywordTrainee(model, cfg, noise_bank)
    trainer = Trainer(cfg.engine, trainee, train_set, out, evaluate=evaluate, name="finetune")
    result = trainer.fit(resume=resume)
    model = trainer.module.model
    if trainer.ctx.is_main:
        save_model(model, out / "model", labels=model.labels,
                   provenance={"stage": "finetune", "recipe": asdict(cfg), **(provenance or {})})
    barrier(trainer.ctx)
    return model, result
