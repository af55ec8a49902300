"""Clips for int8 calibration and parity checks.

The `.pte`'s int8 activation ranges are observed on real windows from the
training data (class balanced, so a rare keyword's activations are seen too);
parity is measured on held-out clips of the test split. `probe_clips` makes
varied synthetic windows for models without data (random-init benchmarks,
tests).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from edgeast.data.common import DatasetError, class_folders


def labelled_clips(
    root: str | Path,
    labels: list[str],
    split: str,
    count: int,
    *,
    window_samples: int = 16000,
    sample_rate: int = 16000,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Up to `count` clips `[N, window_samples]` of `split`, balanced over classes, and their targets `[N]`.

    Targets index `labels` (the model's label order). A folder with a
    sub-folder per label is read as such, else as the Speech Commands layout
    (or synthetic data in it) with `_unknown_` / `_silence_`. Unreadable files
    are skipped.
    """
    dataset = _open(Path(root), labels, split, window_samples / sample_rate, sample_rate)
    to_model = [labels.index(label) for label in dataset.labels]
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i in rng.permutation(len(dataset.targets)):
        by_class.setdefault(dataset.targets[i], []).append(int(i))
    # Round robin over the classes: balanced while every class has clips left.
    queues = list(by_class.values())
    longest = max((len(queue) for queue in queues), default=0)
    order = [queue[rank] for rank in range(longest) for queue in queues if rank < len(queue)]
    waves, targets = [], []
    for i in order:
        if len(waves) == count:
            break
        item = dataset[i]
        if item is not None:
            waves.append(item[0])
            targets.append(to_model[item[1]])
    if not waves:
        raise DatasetError(f"{root}: no readable clips in split {split!r}")
    return torch.stack(waves).float(), torch.tensor(targets)


def _open(root: Path, labels: list[str], split: str, clip_seconds: float, sample_rate: int):
    """A folder-per-class dataset when every label has a folder, else the Speech Commands layout."""
    from edgeast.data.folders import FolderDataset
    from edgeast.data.speech_commands import SpeechCommands

    if not root.is_dir():
        raise DatasetError(f"{root}: no such data folder; give the folder the model was trained on")
    if set(labels) <= set(class_folders(root)):
        return FolderDataset(root, split, labels=labels, sample_rate=sample_rate, clip_seconds=clip_seconds)
    for task in ("auto", "ks1"):  # the tasks whose labels include _unknown_ / _silence_
        dataset = SpeechCommands(root, split, task, sample_rate=sample_rate, clip_seconds=clip_seconds)
        if sorted(dataset.labels) == sorted(labels):
            return dataset
    raise DatasetError(f"{root}: its classes do not match the model's labels {labels}; give the model's training data")


def probe_clips(count: int, window_samples: int = 16000, sample_rate: int = 16000, seed: int = 0) -> Tensor:
    """`[count, window_samples]` varied synthetic windows: tones, chirps, noise bursts, near-silence.

    Levels span -50 to -6 dBFS so that quantization ranges see quiet and loud input.
    """
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(window_samples) / sample_rate
    clips = []
    for i in range(count):
        u = torch.rand(4, generator=gen)
        level = 10 ** (-(6 + 44 * u[0].item()) / 20)
        kind = i % 4
        if kind == 0:  # tone with a few harmonics
            f0 = 100 + 1900 * u[1].item()
            wave = sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in (1, 2, 3))
        elif kind == 1:  # linear chirp
            f_start, f_end = 200 + 3000 * u[1].item(), 200 + 6000 * u[2].item()
            wave = torch.sin(2 * math.pi * (f_start * t + (f_end - f_start) * t * t / (2 * t[-1])))
        elif kind == 2:  # noise burst with an envelope
            centre, width = u[1].item(), 0.05 + 0.3 * u[2].item()
            envelope = torch.exp(-((t / t[-1] - centre) ** 2) / (2 * width**2))
            wave = torch.randn(window_samples, generator=gen) * envelope
        else:  # near-silence: faint noise
            wave = torch.randn(window_samples, generator=gen) * 0.01
        clips.append(level * wave / wave.abs().max().clamp(min=1e-6))
    return torch.stack(clips).float()
