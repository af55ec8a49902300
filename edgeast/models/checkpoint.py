"""The edgeast checkpoint: a directory with ``model.safetensors`` + ``config.json``.

``config.json`` holds ``{"format": "edgeast-checkpoint", "version": 1, "model":
ASTConfig, "frontend": FrontendConfig, "labels": [...], "provenance": {...}}``.
Tensors are the classifier's state dict (``encoder.*``, ``head.*``); an encoder
saved for pretraining has ``encoder.*`` only. Extra tensors that belong to no
model (e.g. imported pretraining heads) ride along under their own prefix,
``pretrain.``.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from edgeast.audio.frontend import FrontendConfig, LogMelFrontend
from edgeast.models.ast import ASTClassifier, ASTConfig, ASTEncoder, resize_pos_embed
from edgeast.models.keyword import KeywordModel

FORMAT = "edgeast-checkpoint"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
EXTRA_PREFIX = "pretrain."


class CheckpointError(ValueError):
    """A checkpoint or foreign weight file that cannot be read or converted."""


def save_model(
    model: KeywordModel | ASTClassifier | ASTEncoder,
    path: str | Path,
    labels: list[str] | None = None,
    provenance: dict | None = None,
    *,
    frontend_cfg: FrontendConfig | None = None,
    extra: dict[str, Tensor] | None = None,
) -> Path:
    """Write ``model`` as a checkpoint directory, atomically.

    Files go to a temporary directory beside ``path`` that is renamed into
    place, so a crash never leaves a half-written checkpoint. An existing
    checkpoint at ``path`` is replaced; any other existing path is refused.
    ``extra`` tensors must be named under ``pretrain.``.
    """
    path = Path(path)
    if isinstance(model, KeywordModel):
        classifier_cfg, state = model.classifier.cfg, model.classifier.state_dict()
        frontend_cfg = frontend_cfg or model.frontend.cfg
        labels = model.labels if labels is None else labels
    elif isinstance(model, ASTClassifier):
        classifier_cfg, state = model.cfg, model.state_dict()
    elif isinstance(model, ASTEncoder):
        classifier_cfg = replace(model.cfg, num_classes=0)
        state = {f"encoder.{k}": v for k, v in model.state_dict().items()}
    else:
        raise TypeError(f"save_model takes a KeywordModel, ASTClassifier or ASTEncoder, not {type(model).__name__}")
    labels = list(labels) if labels is not None else [str(i) for i in range(classifier_cfg.num_classes)]
    if len(labels) != classifier_cfg.num_classes:
        raise ValueError(f"{len(labels)} labels given for a model with {classifier_cfg.num_classes} classes")
    if frontend_cfg is None:
        frontend_cfg = FrontendConfig(num_mel_bins=classifier_cfg.num_mel_bins, num_frames=classifier_cfg.num_frames)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    for name, tensor in (extra or {}).items():
        if not name.startswith(EXTRA_PREFIX):
            raise ValueError(f"extra tensor {name!r} must be named under {EXTRA_PREFIX!r}")
        tensors[name] = tensor.detach().cpu().contiguous()
    config = {
        "format": FORMAT,
        "version": VERSION,
        "model": asdict(classifier_cfg),
        "frontend": asdict(frontend_cfg),
        "labels": labels,
        "provenance": provenance or {},
    }

    if path.exists() and not (path / CONFIG).is_file():
        raise CheckpointError(f"{path} exists and is not an edgeast checkpoint; choose another output path")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"  # mkdir, unlike mkdtemp, honours umask
    staging.mkdir()
    try:
        save_file(tensors, str(staging / WEIGHTS), metadata={"format": FORMAT})
        (staging / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if path.exists():
            retired = staging.with_suffix(".old")
            path.rename(retired)
            staging.rename(path)
            shutil.rmtree(retired)
        else:
            staging.rename(path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """The parsed ``config.json`` and all tensors of a checkpoint directory."""
    path = Path(path)
    config_file, weights_file = path / CONFIG, path / WEIGHTS
    if not config_file.is_file() or not weights_file.is_file():
        raise CheckpointError(
            f"{path} is not an edgeast checkpoint (needs {CONFIG} and {WEIGHTS}); "
            "foreign weights go through `edgeast import`"
        )
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file} is not valid JSON ({err}); the checkpoint is damaged") from err
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{config_file}: format is {config.get('format')!r}, expected {FORMAT!r}")
    if config.get("version") != VERSION:
        raise CheckpointError(
            f"{config_file}: version {config.get('version')!r} is not supported (this edgeast reads {VERSION})"
        )
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights_file} cannot be read ({err}); the checkpoint is damaged") from err
    return config, tensors


def model_config(config: dict, source: str | Path) -> ASTConfig:
    """``ASTConfig`` from a checkpoint's ``model`` section, naming any unknown key."""
    return _dataclass_from(ASTConfig, config.get("model"), f"{source}: model")


def frontend_config(config: dict, source: str | Path) -> FrontendConfig:
    return _dataclass_from(FrontendConfig, config.get("frontend"), f"{source}: frontend")


def _dataclass_from(cls, values, where: str):
    if not isinstance(values, dict):
        raise CheckpointError(f"{where} section is missing from config.json")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CheckpointError(f"{where} has unknown keys {unknown}; written by a newer edgeast?")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: {err}") from err


def load_model(path: str | Path) -> KeywordModel:
    """A ``KeywordModel`` (front end + classifier + labels) from a checkpoint directory, in eval mode."""
    config, tensors = read_checkpoint(path)
    cfg = model_config(config, path)
    classifier = ASTClassifier(cfg)
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    load_state_checked(classifier, state, path)
    model = KeywordModel(LogMelFrontend(frontend_config(config, path)), classifier, labels=config.get("labels"))
    return model.eval()


def load_encoder_state(path: str | Path) -> tuple[ASTConfig, dict[str, Tensor]]:
    """The encoder config and state dict (keys without ``encoder.``) of any checkpoint.

    Works for classifiers and for encoder-only (pretraining) checkpoints alike;
    ready for ``ASTEncoder(cfg).load_state_dict(state)``.
    """
    config, tensors = read_checkpoint(path)
    state = {k.removeprefix("encoder."): v for k, v in tensors.items() if k.startswith("encoder.")}
    if not state:
        raise CheckpointError(f"{path} holds no encoder weights (no 'encoder.*' tensors)")
    return model_config(config, path), state


def load_extra(path: str | Path, prefix: str = EXTRA_PREFIX) -> dict[str, Tensor]:
    """Extra tensors stored under ``prefix`` (e.g. imported pretraining heads), prefix removed."""
    _, tensors = read_checkpoint(path)
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def from_pretrained(
    path: str | Path,
    num_classes: int,
    num_frames: int | None = None,
    stride: int | tuple[int, int] | None = None,
    **overrides,
) -> ASTClassifier:
    """A classifier with a checkpoint's encoder, a fresh head, and positions adapted.

    ``num_frames`` and ``stride`` (one int or (frequency, time)) may differ from
    the checkpoint's: learned patch positions are center-cropped or bilinearly
    interpolated to the new grid, as SSAST does for fine-tuning. Other
    ``ASTConfig`` fields (pool, drop_path, dropout...) can be overridden too.
    """
    old_cfg, state = load_encoder_state(path)
    changes = dict(overrides, num_classes=num_classes)
    if num_frames is not None:
        changes["num_frames"] = num_frames
    if stride is not None:
        changes["stride_f"], changes["stride_t"] = (stride, stride) if isinstance(stride, int) else stride
    try:
        cfg = replace(old_cfg, **changes)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"cannot adapt {path} to {changes}: {err}") from err
    classifier = ASTClassifier(cfg)
    if cfg.pos_embed == "learned" and "pos_embed" in state:
        P = cfg.prefix_tokens
        pos = state["pos_embed"]
        state["pos_embed"] = torch.cat([pos[:, :P], resize_pos_embed(pos[:, P:], old_cfg.grid, cfg.grid)], dim=1)
    load_state_checked(classifier.encoder, state, path)
    return classifier


def load_state_checked(module: nn.Module, state: dict[str, Tensor], source: str | Path) -> None:
    """``load_state_dict(strict=True)`` with one readable message on any mismatch."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit the configured model "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}"
            )
    module.load_state_dict(state)
