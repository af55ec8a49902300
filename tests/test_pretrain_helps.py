"""Self-supervised pretraining helps: small seeded runs on synthetic keyword speech (CPU, ~6 min).

A 64-dim 4-layer encoder is pretrained on 1 s crops of unlabeled synthetic sentences. The
same short fine-tuning then runs from it and from random init on 6 labelled clips per
keyword, and the pretrained model must score higher on 480 clips of held-out speakers. Two
settings: frame tokens (the keyword models' tokenizer) with MAE-AST at mask ratio 0.5 (so that
it leaves the InfoNCE plateau within the test's budget), and the papers' 16x16 patches with
each of the three objectives. The full-size comparison, per objective, is
`bench/train_quality.py` (figures in bench/RESULTS.md); these tests assert smaller margins
than they measure.

Measured (val + test pooled, fine-tuning seeds 0 / 1 / 2): random init 0.469 / 0.450 / 0.438;
after 1500 pretraining steps 0.562 / 0.594 / 0.600; after 700 steps 0.408 / 0.408 / 0.402,
below random init. (This test used 700 steps and 62 held-out clips until a front-end change
that moved only float rounding turned its 0.565 vs 0.468 into 0.339 vs 0.468: a pass that a
62-clip evaluation of one run could not support.)
"""
from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from edgeast.audio.augment import AugmentConfig
from edgeast.audio.frontend import FrontendConfig, LogMelFrontend, compute_stats
from edgeast.data.synth import SynthConfig, synthesize_dataset
from edgeast.engine.config import EngineConfig
from edgeast.models.ast import ASTClassifier, ast_config
from edgeast.models.keyword import KeywordModel
from edgeast.stages.data import labelled_split, unlabeled_set
from edgeast.stages.evaluate import evaluate_model
from edgeast.stages.finetune import init_teacher, run_finetune, standardize_features
from edgeast.stages.pretrain import run_pretrain
from edgeast.stages.recipe import DataConfig, FinetuneConfig, ModelConfig, PretrainConfig

SYNTH = SynthConfig(
    keywords=("yes", "no", "up", "down"),
    unknown_words=("cat", "dog", "bird", "tree"),
    speakers=60,
    keyword_clips=(6, 40, 40),  # few labels (where pretraining should pay), enough held-out clips to tell
    unknown_clips=(2, 10, 10),
    speech_clips=(0, 0, 0),
    noise_seconds=4.0,
    unlabeled=400,
    unlabeled_seconds=2.0,
    seed=0,
    workers=2,
)
MODEL = ModelConfig(size="student-64x4", overrides=dict(patch_f=128, patch_t=2, stride_f=128, stride_t=2))
PRETRAIN_STEPS = 1500  # InfoNCE leaves chance after ~350 steps at mask ratio 0.5; 700 steps do not pay yet
FINETUNE_STEPS = 60  # a short budget, where the starting point matters most
MARGIN = 0.05  # accuracy on val + test pooled; measured: 0.562 vs 0.469 (fine-tuning seed 0)

# The papers' 16x16 patches; each objective as in its paper except where the test's scale needs
# otherwise (sinusoidal starting positions for the full encoders, smaller DINO heads for ASiT).
PATCH_MODEL = ModelConfig(size="student-64x4", overrides=dict(patch_f=16, patch_t=16, stride_f=16, stride_t=16))
PATCH_OBJECTIVES = {
    "ssast": {"pos_init": "sincos"},
    "maeast": {},  # 75% random masking
    "asit": {"pos_init": "sincos", "out_dim": 256, "head_hidden_dim": 128, "head_bottleneck_dim": 32},
}
PATCH_FINETUNE_STEPS = 200  # patches learn slower from random init: 60 steps leave it at chance
# Measured, val + test pooled, pretraining seeds 0 / 1: random init 0.252; ssast 0.421 / 0.504,
# maeast 0.444 / 0.473, asit 0.435 / 0.444.
PATCH_MARGIN = 0.08


def engine(steps: int, lr: float) -> EngineConfig:
    return EngineConfig(device="cpu", max_steps=steps, batch_size=16, lr=lr, warmup_steps=20, clip_grad=5.0,
                        log_every=1000)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> DataConfig:
    root = tmp_path_factory.mktemp("pretrain_helps") / "keywords"
    synthesize_dataset(root, SYNTH, show_progress=False)
    return DataConfig(root=str(root))


def fine_tune(init: str, data: DataConfig, frontend: FrontendConfig, out: Path, model_cfg: ModelConfig = MODEL,
              steps: int = FINETUNE_STEPS) -> float:
    """Fine-tune from `init`; accuracy on the held-out speakers of val and test together."""
    train, val, test = (labelled_split(data, split) for split in ("train", "val", "test"))
    augment = AugmentConfig(mixup_prob=0.0, freqm=0, timem=0, noise_prob=0.0, speed_prob=0.0,
                            shift_ms=100.0, gain_db=6.0)
    cfg = FinetuneConfig(init=init, layer_decay=0.75, augment=augment, engine=engine(steps, 2e-3))
    torch.manual_seed(0)
    model = init_teacher(cfg, model_cfg, frontend, list(train.labels), None, train)
    model, _ = run_finetune(cfg, model, train, out)
    model.eval()
    results = [evaluate_model(model, split) for split in (val, test)]
    return sum(r.accuracy * len(split) for r, split in zip(results, (val, test))) / (len(val) + len(test))


def test_standardized_features_have_zero_mean_and_unit_std():
    torch.manual_seed(0)
    cfg = ast_config("student-64x4", num_classes=3, **MODEL.overrides)
    model = KeywordModel(LogMelFrontend(FrontendConfig()), ASTClassifier(cfg), ["a", "b", "c"])
    waves = torch.randn(48, 16000) * torch.logspace(-3, 0, 48)[:, None]
    standardize_features(model, [(wave, 0) for wave in waves], batch_size=16)
    with torch.no_grad():
        pooled = model.classifier.pool(model.classifier.encoder(model.frontend(waves)))
    assert pooled.mean(dim=0).abs().max() < 1e-3
    assert (pooled.std(dim=0) - 1).abs().max() < 1e-3


@contextlib.contextmanager
def single_thread():
    """Single-threaded float reductions: the run is the same on every machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def frontend(data) -> FrontendConfig:
    """The front end's normalization, fitted on the labelled training clips."""
    train = labelled_split(data, "train")
    mean, std = compute_stats((train[i][0] for i in range(len(train))), FrontendConfig())
    return replace(FrontendConfig(), mean=mean, std=std)


@pytest.fixture(scope="module")
def crops(data) -> list:
    """One 1 s crop per unlabeled sentence, read once and kept in memory."""
    unlabeled = unlabeled_set(data)
    return [unlabeled[i] for i in range(len(unlabeled))]


def pretrain(objective: str, objective_cfg: dict, model_cfg: ModelConfig, crops: list, frontend: FrontendConfig,
             out: Path) -> Path:
    """1500 seeded pretraining steps on the crops; returns the encoder's folder."""
    torch.manual_seed(0)
    cfg = PretrainConfig(objective=objective, objective_cfg=objective_cfg, engine=engine(PRETRAIN_STEPS, 2e-3))
    run_pretrain(cfg, model_cfg, frontend, crops, out)
    return out / "model"


def test_pretrained_encoder_beats_random_init_at_equal_fine_tuning(data, crops, frontend, tmp_path, one_thread):
    encoder = pretrain("maeast", {"mask_ratio": 0.5}, MODEL, crops, frontend, tmp_path / "pretrain")
    scratch = fine_tune("scratch", data, frontend, tmp_path / "scratch")
    pretrained = fine_tune(str(encoder), data, frontend, tmp_path / "pretrained")
    assert pretrained > scratch + MARGIN, f"pretrained {pretrained:.3f} vs random init {scratch:.3f}"


@pytest.fixture(scope="module")
def patch_scratch(data, frontend, tmp_path_factory) -> float:
    """Random init's score on 16x16 patches, shared by the three objectives."""
    with single_thread():
        out = tmp_path_factory.mktemp("patch_scratch")
        return fine_tune("scratch", data, frontend, out, PATCH_MODEL, PATCH_FINETUNE_STEPS)


@pytest.mark.parametrize("objective", list(PATCH_OBJECTIVES))
def test_each_objective_beats_random_init_on_patches(objective, data, crops, frontend, patch_scratch, tmp_path,
                                                      one_thread):
    encoder = pretrain(objective, PATCH_OBJECTIVES[objective], PATCH_MODEL, crops, frontend, tmp_path / "pretrain")
    pretrained = fine_tune(str(encoder), data, frontend, tmp_path / "pretrained", PATCH_MODEL, PATCH_FINETUNE_STEPS)
    assert pretrained > patch_scratch + PATCH_MARGIN, (
        f"{objective}: pretrained {pretrained:.3f} vs random init {patch_scratch:.3f}")
