"""Shared machinery for importing published weights into edgeast checkpoints.

``import_checkpoint(kind, src, out)`` reads a foreign file (SSAST ``.pth``,
fairseq MAE-AST ``.pt``, Hugging Face ``ASTForAudioClassification``), maps it
onto ``ASTClassifier`` and writes an edgeast checkpoint. The per-format
converters live in ``import_ssast.py``, ``import_maeast.py``, ``import_hf.py``;
each returns a ``Converted``.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from edgeast.audio.frontend import FrontendConfig
from edgeast.models.ast import ASTClassifier, ASTConfig
from edgeast.models.checkpoint import CheckpointError, load_state_checked, save_model

KNOWN_FORMATS = (
    "ssast (SSAST .pth: module.v.* keys), "
    "maeast (fairseq MAE-AST .pt: model -> encoder.layers.*), "
    "hf (Hugging Face ASTForAudioClassification directory: config.json + model.safetensors or pytorch_model.bin)"
)


@dataclass
class Converted:
    """A foreign model expressed in edgeast terms."""

    cfg: ASTConfig
    frontend: FrontendConfig
    state: dict[str, Tensor]  # ASTClassifier state dict
    labels: list[str]
    extra: dict[str, Tensor] = field(default_factory=dict)  # names under "pretrain."
    provenance: dict = field(default_factory=dict)


def read_torch_file(path: str | Path) -> dict:
    """``torch.load(weights_only=True)``; files that need arbitrary unpickling are refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if unsupported is None:
            raise CheckpointError(f"{path} is not a readable PyTorch file ({str(err).strip()})") from err
        raise CheckpointError(
            f"{path} needs unpickling of arbitrary Python objects ({unsupported.group(1)}), which edgeast refuses; "
            "if you trust the file, load it yourself with weights_only disabled and re-save only its tensors "
            "and plain dicts (for fairseq: torch.save({'model': c['model'], 'cfg': c['cfg']}, out))"
        ) from err
    except (RuntimeError, OSError, EOFError) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch file ({err})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a state dict; known formats: {KNOWN_FORMATS}")
    return data


class ForeignWeights:
    """A foreign state dict under conversion: hands out tensors, checks shapes, tracks use."""

    def __init__(self, state: dict, source: str | Path, kind: str):
        self.keys = sorted(map(str, state))
        self.state = {k: v for k, v in state.items() if isinstance(v, Tensor)}
        self.source, self.kind = source, kind
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.state

    def take(self, key: str, shape: tuple[int, ...] | torch.Size | None = None) -> Tensor:
        if key not in self.state:
            raise CheckpointError(f"{self.source}: {self.kind} weight {key!r} is missing")
        tensor = self.state[key]
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(
                f"{self.source}: {key} has shape {tuple(tensor.shape)}, expected {tuple(shape)}"
            )
        self.used.add(key)
        return tensor

    def count(self, prefix: str) -> int:
        """Number of consecutive numbered children ``prefix{i}.`` (e.g. transformer layers)."""
        n = 0
        while any(k.startswith(f"{prefix}{n}.") for k in self.state):
            n += 1
        return n

    def unknown_layout(self, expected: str) -> CheckpointError:
        first = self.keys[:6]
        return CheckpointError(
            f"{self.source}: not a {self.kind} checkpoint (expected {expected}; found keys {first}); "
            f"known formats: {KNOWN_FORMATS}"
        )

    def check_all_used(self, ignored_prefixes: tuple[str, ...] = ()) -> None:
        left = sorted(k for k in self.state if k not in self.used and not k.startswith(ignored_prefixes))
        if left:
            raise CheckpointError(
                f"{self.source}: unexpected keys for a {self.kind} checkpoint: {left[:6]}"
                f"{f' (+{len(left) - 6} more)' if len(left) > 6 else ''}; known formats: {KNOWN_FORMATS}"
            )


def fill_state(cfg: ASTConfig, weights: ForeignWeights, sources: dict[str, str]) -> dict[str, Tensor]:
    """Classifier tensors from plain renames ``{our key: foreign key}``, shape-checked."""
    target = ASTClassifier(cfg).state_dict()
    return {
        ours: weights.take(theirs, target[ours].shape).to(target[ours].dtype) for ours, theirs in sources.items()
    }


def block_sources(depth: int, ours_to_theirs: dict[str, str], theirs_prefix: str) -> dict[str, str]:
    """Per-block renames: ``encoder.blocks.{i}.{ours}`` <- ``{theirs_prefix}{i}.{theirs}``."""
    return {
        f"encoder.blocks.{i}.{ours}": f"{theirs_prefix}{i}.{theirs}"
        for i in range(depth)
        for ours, theirs in ours_to_theirs.items()
    }


def import_checkpoint(kind: str, src: str | Path, out: str | Path, **opts) -> Path:
    """Convert published weights at ``src`` into an edgeast checkpoint at ``out``.

    ``kind`` is ``"ssast"``, ``"maeast"`` or ``"hf"``; ``opts`` go to the
    converter (e.g. ``num_frames``, ``stride``, ``num_heads``, ``labels``).
    The written checkpoint is loaded back into the model before it is kept.
    """
    # the converters import this module's helpers, so they are imported here
    from edgeast.models import import_hf, import_maeast, import_ssast

    converters = {"ssast": import_ssast.convert, "maeast": import_maeast.convert, "hf": import_hf.convert}
    if kind not in converters:
        raise CheckpointError(f"unknown import kind {kind!r}; known formats: {KNOWN_FORMATS}")
    converted = converters[kind](Path(src), **opts)
    classifier = ASTClassifier(converted.cfg)
    load_state_checked(classifier, converted.state, src)
    provenance = {"imported_from": kind, "source": str(src), **converted.provenance}
    return save_model(
        classifier,
        out,
        labels=converted.labels,
        provenance=provenance,
        frontend_cfg=converted.frontend,
        extra=converted.extra,
    )
