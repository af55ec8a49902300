"""Datasets for the pipeline stages, built from a recipe's `data` section."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from edgeast.data import MANIFEST
from edgeast.data.common import DatasetError
from edgeast.data.folders import FolderDataset, UnlabeledAudio
from edgeast.data.speech_commands import SpeechCommands
from edgeast.stages.recipe import DataConfig


class InMemory(Dataset):
    """Decode every clip of a small dataset once; bad files are dropped and counted.

    Epochs then cost no file I/O, which matters on a 2-core machine where the
    decoder would otherwise compete with the model for the same cores.
    """

    def __init__(self, source: Dataset) -> None:
        items = [source[i] for i in range(len(source))]
        self.skipped = sum(item is None for item in items)
        items = [item for item in items if item is not None]
        if not items:
            raise DatasetError(f"{getattr(source, 'root', source)}: no readable clips")
        self.waves = torch.stack([w for w, _ in items])
        self.targets = [int(t) for _, t in items]
        self.labels = getattr(source, "labels", [])

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, i: int):
        return self.waves[i], self.targets[i]


def ensure_data(cfg: DataConfig, seed: int = 0) -> Path:
    """The dataset root; synthesized first when the recipe asks for it and it is missing."""
    from edgeast.config import from_dict
    from edgeast.data.synth import SynthConfig, synthesize_dataset

    root = Path(cfg.root)
    synth = from_dict(SynthConfig, {"seed": seed, **cfg.synth})
    if root.is_dir() and any(root.iterdir()):
        if cfg.synthesize:
            check_synthesized(root, synth)
        return root
    if not cfg.synthesize:
        raise DatasetError(f"data.root={root}: no such dataset folder; point data.root at your data "
                           "or set data.synthesize=true to create the synthetic set")
    synthesize_dataset(root, synth)
    return root


def check_synthesized(root: Path, synth) -> None:
    """A synthetic set made earlier with other settings would silently change the run: refuse it."""
    from edgeast.data.synth import manifest_config

    manifest = root / MANIFEST
    if not manifest.is_file():
        return  # the recipe points data.root at a dataset of its own: use it as it is
    made = json.loads(manifest.read_text()).get("config", {})
    wanted = json.loads(json.dumps(manifest_config(synth)))  # tuples -> lists, as stored
    changed = sorted(k for k in wanted if made.get(k) != wanted[k])
    if changed:
        raise DatasetError(f"data.root={root} was synthesized with other settings ({', '.join(changed)}); "
                           "delete the folder to synthesize it again, or point data.root elsewhere")


def labelled_split(cfg: DataConfig, split: str, labels: list[str] | None = None) -> Dataset:
    root = Path(cfg.root)
    if cfg.kind == "speech_commands":
        ds = SpeechCommands(root, split, cfg.task)
    elif cfg.kind == "folders":
        ds = FolderDataset(root, split, labels=labels)
    else:
        raise DatasetError(f"data.kind={cfg.kind!r}: use 'speech_commands' or 'folders'")
    if labels is not None and list(ds.labels) != list(labels):
        raise DatasetError(f"labels of {root} ({ds.labels}) do not match the model's labels ({labels}); "
                           "fine-tune on data with the same classes or start from scratch")
    return InMemory(ds) if cfg.in_memory else ds


def unlabeled_set(cfg: DataConfig, clip_seconds: float = 1.0) -> Dataset:
    """Pretraining audio: the recipe's folder, <root>/_unlabeled_, or the labelled training clips."""
    root = Path(cfg.root)
    folder = Path(cfg.unlabeled) if cfg.unlabeled else root / "_unlabeled_"
    if folder.is_dir():
        return UnlabeledAudio(folder, clip_seconds)  # a fresh random crop per clip and epoch
    if cfg.unlabeled:
        raise DatasetError(f"data.unlabeled={folder}: no such folder of audio")
    return Mapped(labelled_split(cfg, "train"), wave_only)


class Mapped(Dataset):
    """`fn(item, index)` over a dataset's items; None (a skipped file) passes through."""

    def __init__(self, source: Dataset, fn) -> None:
        self.source, self.fn = source, fn
        self.skipped = getattr(source, "skipped", 0)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        item = self.source[i]
        return None if item is None else self.fn(item, i)


def wave_only(item, index):
    """A labelled item seen without its label (pretraining on the keyword clips)."""
    return item[0]


def with_index(item, index):
    """A labelled item that carries its index (to look up cached teacher logits)."""
    return (*item, index)


