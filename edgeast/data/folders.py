"""Datasets from plain folders: one sub-folder per class, or any tree of unlabeled audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgeast.data.common import AudioClips, DatasetError, check_split, class_folders, fix_length, is_audio, split_files


class FolderDataset(AudioClips):
    """Custom keywords: `root/<label>/**/*.wav`; items are `(wave [clip_samples], label index)`.

    Folders starting with '_' or '.' are not classes. `labels` fixes the class
    order (default: sorted folder names; other folders are ignored). `split`
    selects train/val/test by root's `validation_list.txt` / `testing_list.txt`
    like Speech Commands, or, without them, by a stable hash of each file's
    speaker part (`<speaker>_nohash_<n>.wav`) with the given percentages.
    """

    def __init__(self, root: str | Path, split: str | None = None, *, labels: list[str] | None = None,
                 sample_rate: int = 16000, clip_seconds: float = 1.0,
                 val_percent: float = 10.0, test_percent: float = 10.0) -> None:
        super().__init__(sample_rate, clip_seconds)
        self.root = Path(root)
        check_split(split, allow_none=True)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such folder; give a folder with one sub-folder per class")
        folders = class_folders(self.root)
        self.labels = list(labels) if labels is not None else folders
        missing = [label for label in self.labels if label not in folders]
        if missing or not self.labels:
            raise DatasetError(f"{self.root}: no class folder for {missing or 'any label'}; found {folders}")
        index = {label: i for i, label in enumerate(self.labels)}
        pairs = split_files(self.root, self.labels, split, val_percent, test_percent)
        self.files = [path for path, _ in pairs]
        self.targets = [index[folder] for _, folder in pairs]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        wave = self.load(self.files[i])
        return None if wave is None else (fix_length(wave, self.clip_samples), self.targets[i])


class UnlabeledAudio(AudioClips):
    """Every audio file under `root` (recursively), one random `clip_seconds` crop per item.

    The crop of item i depends only on (seed, epoch, i): call `set_epoch` to
    draw new crops each epoch. Files shorter than a clip are zero-padded.
    Each item reads its whole file, so prefer files of seconds to minutes.
    """

    def __init__(self, root: str | Path, clip_seconds: float, *, sample_rate: int = 16000, seed: int = 0) -> None:
        super().__init__(sample_rate, clip_seconds)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such folder; give a folder of audio files for pretraining")
        self.files = sorted(p for p in self.root.rglob("*") if is_audio(p))
        if not self.files:
            raise DatasetError(f"{self.root}: holds no audio files (.wav, .flac, .ogg, .opus, .mp3)")
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor | None:
        wave = self.load(self.files[i])
        if wave is None:
            return None
        excess = wave.numel() - self.clip_samples
        if excess <= 0:
            return fix_length(wave, self.clip_samples)
        start = int(np.random.default_rng([self.seed, self.epoch, i]).integers(excess + 1))
        return wave[start:start + self.clip_samples]
