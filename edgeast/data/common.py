"""Pieces every edgeast dataset shares: fixed-length clips, split lists, bad-file skipping, collation.

Datasets return `(wave [clip_samples] float32, label)` or a bare wave. A file
that cannot be read is skipped and counted: `__getitem__` returns None for it
(every time); the first time it also warns naming the file and increments
`.skipped`, the number of bad files seen. `collate_skip_none` drops the Nones,
so a long run never dies on one bad file. Each DataLoader worker holds its own
copy of a dataset, so `.skipped` counts what this process saw.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import torch
from torch.utils.data import Dataset, default_collate

from edgeast.audio.io import AudioError, load_audio
from edgeast.data import TESTING_LIST, VALIDATION_LIST

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")
SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset folder that cannot be used as given (missing, empty, unknown split or label)."""


class BadFileWarning(UserWarning):
    """A file inside a dataset could not be read and is skipped."""


def fix_length(wave: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Zero-pad at the end or crop the centre so `wave` holds exactly `num_samples`."""
    n = wave.shape[-1]
    if n < num_samples:
        return torch.nn.functional.pad(wave, (0, num_samples - n))
    start = (n - num_samples) // 2
    return wave[..., start:start + num_samples]


def collate_skip_none(batch: list) -> object:
    """Collate a batch after dropping the None items of skipped files; None if nothing is left."""
    kept = [item for item in batch if item is not None]
    return default_collate(kept) if kept else None


def is_audio(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS


def class_folders(root: Path) -> list[str]:
    """Sub-folder names that hold a class: everything not starting with '_' or '.'."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def check_split(split: str | None, allow_none: bool = False) -> None:
    if split is None and allow_none:
        return
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def hash_split(relpath: str, val_percent: float, test_percent: float) -> str:
    """Stable split of a file without split lists, by a hash of its speaker part.

    Names like `<speaker>_nohash_<n>.wav` hash only `<speaker>`, so one
    speaker's clips stay in one split; the split of a file never changes when
    other files are added.
    """
    key = re.sub(r"_nohash_.*$", "", Path(relpath).name)
    bucket = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 10000 / 100.0
    if bucket < val_percent:
        return "val"
    if bucket < val_percent + test_percent:
        return "test"
    return "train"


def split_files(root: Path, folders: list[str], split: str | None,
                val_percent: float = 10.0, test_percent: float = 10.0) -> list[tuple[Path, str]]:
    """(file, folder) pairs of `split` (all files when None), sorted by path.

    Uses root's validation_list.txt / testing_list.txt (Speech Commands
    layout: paths relative to root, train = every file in neither list) when
    present, else `hash_split`.
    """
    lists = {}
    for name, list_file in (("val", VALIDATION_LIST), ("test", TESTING_LIST)):
        path = root / list_file
        if path.is_file():
            lists[name] = {line.strip() for line in path.read_text().splitlines() if line.strip()}
    pairs = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if not is_audio(path):
                continue
            rel = path.relative_to(root).as_posix()
            if lists:
                which = "val" if rel in lists.get("val", ()) else "test" if rel in lists.get("test", ()) else "train"
            else:
                which = hash_split(rel, val_percent, test_percent)
            if split is None or which == split:
                pairs.append((path, folder))
    return pairs


class AudioClips(Dataset):
    """Base of the edgeast datasets: reads files, skipping and counting bad ones."""

    def __init__(self, sample_rate: int, clip_seconds: float) -> None:
        self.sample_rate = sample_rate
        self.clip_samples = round(clip_seconds * sample_rate)
        self.skipped = 0
        self._warned: set[str] = set()

    def load(self, path: Path) -> torch.Tensor | None:
        """The file as a float32 mono wave, or None (warned once, counted) if it cannot be read."""
        try:
            return load_audio(path, self.sample_rate)
        except AudioError as err:
            if str(path) not in self._warned:
                self._warned.add(str(path))
                self.skipped += 1
                warnings.warn(f"skipping bad audio file: {err}", BadFileWarning, stacklevel=2)
            return None
