"""Shared fixtures: a tiny synthetic keyword dataset, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeast.data.synth import SynthConfig, synthesize_dataset

TINY_SYNTH = SynthConfig(
    keywords=("yes", "no"),
    unknown_words=("cat", "dog"),
    speakers=20,  # 16 train, 2 val, 2 test
    keyword_clips=(16, 4, 4),
    unknown_clips=(4, 2, 2),
    noise_seconds=4.0,
    unlabeled=8,
    unlabeled_seconds=2.0,
    seed=0,
    workers=2,
)


@pytest.fixture(scope="session")
def synth_config() -> SynthConfig:
    """The config `synth_dataset` was made with (counts to assert against)."""
    return TINY_SYNTH


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """Root of a tiny synthetic dataset in the Speech Commands layout (read-only: do not modify).

    Keywords yes/no, unknown words cat/dog, 20 speakers split 16/2/2,
    16/4/4 clips per keyword and 4/2/2 per unknown word (train/val/test),
    4 s background noise files, and 8 unlabeled 2 s clips in `_unlabeled_/`.
    `SpeechCommands(root, split, task="auto")` reads it as
    yes, no, _unknown_, _silence_.
    """
    out = tmp_path_factory.mktemp("synth") / "keywords"
    synthesize_dataset(out, TINY_SYNTH, show_progress=False)
    return out
