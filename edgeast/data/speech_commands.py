"""Google Speech Commands v1/v2 (and synthetic data in its layout) from a local folder.

Layout: one folder per word holding `<speaker>_nohash_<n>.wav`, long noise
recordings in `_background_noise_/`, and `validation_list.txt` /
`testing_list.txt` naming the val and test files; train is everything else.
An optional `_speech_/` folder (not in Google's release; `edgeast data synth`
writes one with `speech_clips`, and any 1 s crops of keyword-free speech will
do) counts as `_unknown_` in tasks that have that class.

Tasks:
- "35": one class per word folder (35 in v2, 30 in v1).
- "ks1": the SUPERB KS1 protocol: yes, no, up, down, left, right, on, off,
  stop, go, `_unknown_` (every other word) and `_silence_`.
- "auto": the `"keywords"` of `synth_manifest.json` + `_unknown_` + `_silence_`
  when the folder holds that file (written by `edgeast.data.synth`), else ks1.

`_silence_` clips are 1 s crops of the background noise files at a random
gain from -60 to 0 dB (down to the near-digital silence a quiet microphone
gives), fixed by `seed`; each split crops its own part of every file (train the
first 80 %, val the next 10 %, test the last 10 %), so no noise is shared
across splits. Their count defaults to the average size of a keyword class.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edgeast.data import BACKGROUND_NOISE, MANIFEST, SILENCE, SPEECH, UNKNOWN
from edgeast.data.common import AudioClips, DatasetError, check_split, class_folders, fix_length, is_audio, split_files

KS1_KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
NOISE_REGIONS = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
SILENCE_GAIN_DB = (-60.0, 0.0)  # down to near-digital silence, which a live microphone gives too


class SpeechCommands(AudioClips):
    """Items are `(wave [clip_samples] float32, label index)`; `.labels`, `.targets`, `.files`.

    Items `[0, num_word_clips)` are word clips, the rest `_silence_` clips;
    `.files[i]` is the wav of item i (for `_silence_`, the noise file it is cut
    from). `silence_clips` overrides the `_silence_` count (0: none).
    """

    def __init__(self, root: str | Path, split: str = "train", task: str = "ks1", *,
                 sample_rate: int = 16000, clip_seconds: float = 1.0,
                 silence_clips: int | None = None, seed: int = 0) -> None:
        super().__init__(sample_rate, clip_seconds)
        self.root = Path(root)
        check_split(split)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such folder; give the Speech Commands root "
                               "(the folder with the word folders)")
        words = class_folders(self.root)
        if not words:
            raise DatasetError(f"{self.root}: holds no word folders; is this the Speech Commands root?")
        self.split, self.task = split, task
        self.labels = self._labels(task, words)
        index = {label: i for i, label in enumerate(self.labels)}
        has_unknown = UNKNOWN in index

        self.files: list[Path] = []
        self.targets: list[int] = []
        for path, word in split_files(self.root, words, split):
            if word in index:
                self.targets.append(index[word])
            elif has_unknown:
                self.targets.append(index[UNKNOWN])
            else:
                continue
            self.files.append(path)
        if has_unknown and (self.root / SPEECH).is_dir():
            for path, _ in split_files(self.root, [SPEECH], split):
                self.files.append(path)
                self.targets.append(index[UNKNOWN])
        self.num_word_clips = len(self.files)

        self._silence: list[tuple[float, float]] = []  # per silence item: (start in [0, 1) of the region, gain)
        self._noise_cache: dict[Path, torch.Tensor | None] = {}
        if SILENCE in index:
            keywords = [label for label in self.labels if label not in (UNKNOWN, SILENCE)]
            if silence_clips is None:
                in_keywords = sum(1 for t in self.targets if self.labels[t] in keywords)
                silence_clips = round(in_keywords / max(len(keywords), 1))
            self._add_silence(silence_clips, index[SILENCE], seed)

    def _labels(self, task: str, words: list[str]) -> list[str]:
        if task == "auto":
            manifest = self.root / MANIFEST
            if not manifest.is_file():
                return self._labels("ks1", words)
            keywords = json.loads(manifest.read_text()).get("keywords")
            if not keywords:
                raise DatasetError(f"{manifest}: has no \"keywords\" list; regenerate it or use task='ks1'")
            return list(keywords) + [UNKNOWN, SILENCE]
        if task == "ks1":
            return list(KS1_KEYWORDS) + [UNKNOWN, SILENCE]
        if task == "35":
            return words
        raise DatasetError(f"unknown task {task!r}; use 'ks1', '35' or 'auto'")

    def _add_silence(self, count: int, target: int, seed: int) -> None:
        noise_dir = self.root / BACKGROUND_NOISE
        noise_files = sorted(p for p in noise_dir.glob("*") if is_audio(p)) if noise_dir.is_dir() else []
        if count > 0 and not noise_files:
            raise DatasetError(f"{noise_dir}: no noise wavs to cut {SILENCE} clips from; "
                               "add the folder or pass silence_clips=0")
        rng = np.random.default_rng([seed, SPLIT_SEEDS[self.split]])
        for _ in range(count):
            which = int(rng.integers(len(noise_files)))
            position = float(rng.random())
            gain = float(10 ** (rng.uniform(*SILENCE_GAIN_DB) / 20))
            self._silence.append((position, gain))
            self.files.append(noise_files[which])
            self.targets.append(target)

    def _noise(self, path: Path) -> torch.Tensor | None:
        if path not in self._noise_cache:
            self._noise_cache[path] = self.load(path)
        return self._noise_cache[path]

    def _silence_clip(self, i: int) -> torch.Tensor | None:
        position, gain = self._silence[i - self.num_word_clips]
        noise = self._noise(self.files[i])
        if noise is None:
            return None
        lo, hi = (round(f * noise.numel()) for f in NOISE_REGIONS[self.split])
        span = max(hi - lo - self.clip_samples, 0)
        start = lo + int(position * span)
        return fix_length(noise[start:start + self.clip_samples] * gain, self.clip_samples)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        if i >= self.num_word_clips:
            wave = self._silence_clip(i)
        else:
            wave = self.load(self.files[i])
            wave = None if wave is None else fix_length(wave, self.clip_samples)
        return None if wave is None else (wave, self.targets[i])

