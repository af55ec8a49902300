"""Distillation options: DeiT distillation token, soft/hard teacher terms, attention distillation, validation.

Tiny models (32-dim, 2 blocks) on synthetic tones; everything runs on the CPU in seconds.
"""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeast.audio.augment import AugmentConfig
from edgeast.audio.frontend import FrontendConfig, LogMelFrontend
from edgeast.config import ConfigError, load_config
from edgeast.engine.config import EngineConfig
from edgeast.export.exporter import export_model
from edgeast.models.ast import ASTClassifier, ASTConfig, ASTEncoder, ast_config
from edgeast.models.checkpoint import load_model
from edgeast.models.keyword import KeywordModel
from edgeast.runtime.backends import open_backend
from edgeast.stages.distill import DistillTrainee, run_distill
from edgeast.stages.pipeline import validate_sections
from edgeast.stages.recipe import DistillConfig, ModelConfig, Recipe

LABELS = ["low", "mid", "high"]
NO_AUGMENT = AugmentConfig(shift_ms=0, gain_db=0, noise_prob=0, speed_prob=0, freqm=0, timem=0, mixup_prob=0)
DEIT = dict(prefix_tokens=2, dist_head=True, pool="cls")


def tiny_config(**overrides) -> ASTConfig:
    """32-dim, 2 blocks, 16x16 patches on 128 mel x 100 frames: an 8x6 token grid."""
    return ASTConfig(**{**dict(embed_dim=32, depth=2, num_heads=2, num_frames=100, num_classes=3), **overrides})


def keyword_model(seed: int, **overrides) -> KeywordModel:
    torch.manual_seed(seed)
    return KeywordModel(LogMelFrontend(FrontendConfig()), ASTClassifier(tiny_config(**overrides)), LABELS).eval()


def tones(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """1 s tones, class c near (c + 1) * 700 Hz, with random pitch, level and phase."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(16000) / 16000
    labels = torch.arange(count) % len(LABELS)
    level, pitch, phase = torch.rand(3, count, 1, generator=gen)
    waves = (0.1 + 0.4 * level) * torch.sin(2 * math.pi * (700 * (labels[:, None] + 1) + 200 * pitch) * t + phase)
    return waves, labels


def distill_config(**fields) -> DistillConfig:
    engine = EngineConfig(device="cpu", max_steps=2, batch_size=4, log_every=1)
    # fp32 teacher: these tests check the losses' arithmetic ("auto" is bf16 on CPUs with bf16 matmuls)
    return DistillConfig(**{"augment": NO_AUGMENT, "engine": engine, "teacher_precision": "fp32", **fields})


def test_dist_head_inference_is_the_mean_of_both_heads():
    model = ASTClassifier(tiny_config(**DEIT)).eval()
    x = torch.randn(2, 100, 128)
    with torch.no_grad():
        tokens = model.encoder(x)
        cls_logits = model.head(tokens[:, 0])
        dist_logits = model.head_dist(tokens[:, 1])
        assert not torch.allclose(cls_logits, dist_logits, atol=1e-3)  # two different heads
        torch.testing.assert_close(model.heads(tokens)[1], dist_logits)
        torch.testing.assert_close(model(x), (cls_logits + dist_logits) / 2)
    assert model(x).shape == (2, 3)
    with pytest.raises(ValueError, match="dist_head=True needs prefix_tokens=2"):
        ASTConfig(dist_head=True)
    with pytest.raises(ValueError, match="pool='prefix' would feed the distillation token to both heads"):
        ASTConfig(prefix_tokens=2, dist_head=True, pool="prefix")


def test_forward_with_qkv_reads_the_last_attention_and_leaves_forward_alone():
    encoder = ASTEncoder(tiny_config(prefix_tokens=2)).eval()
    attn = encoder.blocks[-1].attn
    seen = {}
    attn.register_forward_hook(lambda module, args, out: seen.update(out=out))
    x = torch.randn(2, 100, 128)
    with torch.no_grad():
        tokens, (q, k, v) = encoder.forward_with_qkv(x)
        torch.testing.assert_close(tokens, encoder(x))
        assert q.shape == k.shape == v.shape == (2, 2, 2 + 48, 16)  # [B, heads, prefix + patches, dim / heads]
        mixed = torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1) @ v  # explicit attention, sqrt(16) = 4
        torch.testing.assert_close(attn.proj(mixed.transpose(1, 2).reshape(2, 50, 32)), seen["out"])
    assert not attn.qkv._forward_hooks  # the training-only hook is gone


def teacher_term(student: torch.Tensor, teacher: torch.Tensor, kd_target: str, T: float) -> torch.Tensor:
    """The soft and hard teacher terms written out from their definitions."""
    if kd_target == "hard":
        return -F.log_softmax(student, -1).gather(1, teacher.argmax(-1, keepdim=True)).mean()
    p = F.softmax(teacher / T, -1)
    return T * T * (p * (p.log() - F.log_softmax(student / T, -1))).sum(-1).mean()


@pytest.mark.parametrize("kd_target", ["soft", "hard"])
def test_class_head_learns_the_labels_and_distillation_head_the_teacher(kd_target):
    teacher, student = keyword_model(1), keyword_model(2, **DEIT)
    cfg = distill_config(kd_target=kd_target, temperature=3.0, label_weight=0.3, kd_weight=0.7)
    trainee = DistillTrainee(student, teacher, cfg).eval()  # eval: clean features, same numbers as training
    waves, labels = tones(6)
    loss, metrics = trainee((waves, labels))
    with torch.no_grad():
        tokens = student.classifier.encoder(student.frontend(waves))
        cls_logits, dist_logits = student.classifier.head(tokens[:, 0]), student.classifier.head_dist(tokens[:, 1])
        kd = teacher_term(dist_logits, teacher(waves), kd_target, T=3.0)
        expected = 0.3 * -F.log_softmax(cls_logits, -1)[torch.arange(6), labels].mean() + 0.7 * kd
    torch.testing.assert_close(metrics["kd"], kd)
    torch.testing.assert_close(loss.detach(), expected)
    assert metrics["acc"] == ((cls_logits + dist_logits).argmax(-1) == labels).float().mean()


def test_distillation_token_student_learns():
    teacher, student = keyword_model(1), keyword_model(2, **DEIT)
    teacher_state = copy.deepcopy(teacher.state_dict())
    heads_before = [student.classifier.head[1].weight.clone(), student.classifier.head_dist[1].weight.clone()]
    trainee = DistillTrainee(student, teacher, distill_config(kd_target="hard", label_weight=0.5, kd_weight=0.5))
    trainee.train()
    optimizer = torch.optim.AdamW([p for p in trainee.parameters() if p.requires_grad], lr=3e-3)
    waves, labels = tones(12)
    losses = []
    for _ in range(25):
        loss, _ = trainee((waves, labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    after = [student.classifier.head[1].weight, student.classifier.head_dist[1].weight]
    assert all(not torch.equal(a, b) for a, b in zip(heads_before, after))  # both heads trained
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items())  # teacher frozen


def test_run_distill_with_distillation_token_round_trips_through_a_checkpoint(tmp_path):
    teacher = keyword_model(1)
    waves, labels = tones(8)
    cfg = distill_config(student=ModelConfig("student-64x4", {"depth": 1}), dist_token=True, kd_target="hard")
    student, result = run_distill(cfg, teacher, list(zip(waves, labels.tolist())), tmp_path / "student")
    assert result.steps == 2
    config = json.loads((tmp_path / "student" / "model" / "config.json").read_text())["model"]
    assert (config["prefix_tokens"], config["dist_head"], config["embed_dim"]) == (2, True, 64)
    loaded = load_model(tmp_path / "student" / "model")
    assert loaded.classifier.cfg == student.classifier.cfg and loaded.labels == LABELS
    with torch.no_grad():
        torch.testing.assert_close(loaded(waves), student.eval()(waves))


def test_distillation_token_model_exports_with_parity(tmp_path):
    model = keyword_model(3, **DEIT)
    with torch.no_grad():  # random-init logits are tiny; spread them out so top-1 is not a coin toss
        model.classifier.head[1].weight.mul_(50)
        model.classifier.head_dist[1].weight.mul_(50)
    waves, labels = tones(8, seed=1)
    report = export_model(model, tmp_path, formats=["pte", "onnx"], heldout=(waves, labels), source="deit")
    assert [r.format for r in report.results] == ["pte", "onnx"]
    assert all(r.agreement == 1.0 and r.max_abs_diff < 1e-3 for r in report.results)
    with torch.no_grad():
        eager = model(waves[:1])[0].numpy()
    for name in ("model.pte", "model.onnx"):
        np.testing.assert_allclose(open_backend(tmp_path / name).infer(waves[0].numpy()), eager, atol=1e-3)


def relations_by_hand(model: KeywordModel, waves: torch.Tensor, kind: str) -> list[torch.Tensor]:
    """Head-averaged attention (and value) distributions among patch tokens, from probabilities."""
    encoder = model.classifier.encoder
    _, (q, k, v) = encoder.forward_with_qkv(model.frontend(waves))
    P = encoder.num_prefix
    pairs = [(q, k)] + ([(v, v)] if kind == "minilm" else [])
    out = []
    for a, b in pairs:
        probs = torch.softmax(a @ b.transpose(-2, -1) / math.sqrt(a.shape[-1]), dim=-1)[:, :, P:, P:]
        out.append((probs / probs.sum(-1, keepdim=True)).mean(1))
    return out


@pytest.mark.parametrize("kind", ["attention", "minilm"])
def test_attention_loss_is_zero_for_a_copy_of_the_teacher_and_positive_otherwise(kind):
    teacher = keyword_model(1)
    with torch.no_grad():  # random init attends almost uniformly; give the teacher a trained model's sharper maps
        teacher.classifier.encoder.blocks[-1].attn.qkv.weight.mul_(20)
    cfg = distill_config(attention_weight=1.0, attention_loss=kind)
    waves, labels = tones(4)
    with torch.no_grad():
        _, same = DistillTrainee(copy.deepcopy(teacher), teacher, cfg).eval()((waves, labels))
        assert same["attention"].item() == pytest.approx(0.0, abs=1e-7)

        student = keyword_model(2, **DEIT)  # cls + distillation token against a cls-only teacher
        _, other = DistillTrainee(student, teacher, cfg).eval()((waves, labels))
        pairs = zip(relations_by_hand(teacher, waves, kind), relations_by_hand(student, waves, kind))
        expected = sum((p * (p.log() - s.log())).sum(-1).mean() for p, s in pairs)
    assert other["attention"].item() > 1e-3
    torch.testing.assert_close(other["attention"], expected, atol=1e-5, rtol=1e-4)


def test_attention_distillation_needs_the_same_token_grid(tmp_path):
    teacher = keyword_model(1)
    frame_tokens = dict(patch_f=128, patch_t=2, stride_f=128, stride_t=2)
    message = (r"teacher has 16x16 patches, stride 16x16 on 128 mel x 100 frames \(8x6 tokens\) "
               r"and the student 128x2 patches, stride 128x2 on 128 mel x 100 frames \(1x50 tokens\)")
    with pytest.raises(ConfigError, match=message):
        DistillTrainee(keyword_model(2, **frame_tokens), teacher, distill_config(attention_weight=0.5))
    cfg = distill_config(attention_weight=0.5, student=ModelConfig("student-64x4", frame_tokens))
    waves, labels = tones(4)
    with pytest.raises(ConfigError, match="same token grid"):
        run_distill(cfg, teacher, list(zip(waves, labels.tolist())), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # failed before any training


@pytest.mark.parametrize("overrides, message", [
    (["distill.cache_teacher=true", "distill.attention_weight=0.5"], "cache_teacher=true keeps only the teacher's"),
    (["distill.cache_teacher=true", "distill.hidden_weight=1"], "hidden_weight=1.0 / attention_weight=0.0 cannot"),
    (["distill.kd_target=logits"], "distill.kd_target='logits': use one of soft, hard"),
    (["distill.attention_loss=tinybert"], "distill.attention_loss='tinybert': use one of attention, minilm"),
    (["distill.init=random"], "distill.init='random': use one of scratch, teacher_layers"),
    (["distill.temperature=0"], "distill.temperature=0.0: must be > 0"),
    (["distill.teacher_precision=fp16"], "distill.teacher_precision='fp16': use one of auto, bf16, fp32"),
    (["distill.attention_weight=-1"], "distill.attention_weight=-1.0: a loss weight must not be negative"),
    (["distill.label_weight=0", "distill.kd_weight=0"], "every loss weight is 0"),
    (["distill.dist_token=true", "distill.student.overrides.prefix_tokens=1"], "sets {'prefix_tokens': 1}"),
])
def test_recipe_rejects_bad_distillation_settings(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("{", r"\{")):
        load_config(Recipe, None, overrides)


def test_recipe_accepts_the_new_options():
    recipe = load_config(Recipe, None, ["distill.dist_token=true", "distill.kd_target=hard",
                                        "distill.attention_weight=0.5", "distill.attention_loss=minilm",
                                        "distill.student.overrides.pool=cls"])
    validate_sections(recipe)
    d = recipe.distill
    assert (d.dist_token, d.kd_target, d.attention_weight, d.attention_loss) == (True, "hard", 0.5, "minilm")
    built = d.student_model()
    assert built.overrides == {"pool": "cls", "prefix_tokens": 2, "dist_head": True}
    assert ast_config(built.size, **built.overrides).dist_head
    assert recipe.distill.student.overrides == {"pool": "cls"}  # the recipe itself is untouched


def test_bf16_teacher_on_the_fly_gives_nearly_the_fp32_loss():
    """distill.teacher_precision=bf16: the frozen teacher's matmuls in bf16, the student's in fp32."""
    teacher, student = keyword_model(0), keyword_model(1)
    waves, labels = tones(8)
    dtypes = {}
    for name, model in (("teacher", teacher), ("student", student)):
        qkv = model.classifier.encoder.blocks[0].attn.qkv
        qkv.register_forward_hook(lambda m, a, out, name=name: dtypes.setdefault(name, set()).add(out.dtype))
    losses = {}
    for precision in ("fp32", "bf16"):
        trainee = DistillTrainee(copy.deepcopy(student), teacher, distill_config(teacher_precision=precision)).train()
        losses[precision], metrics = trainee((waves, labels))
        assert metrics["kd"] > 0
    assert dtypes == {"teacher": {torch.float32, torch.bfloat16}, "student": {torch.float32}}
    assert losses["bf16"].item() == pytest.approx(losses["fp32"].item(), rel=1e-2)
