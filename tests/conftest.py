"""Shared fixtures, each made once per test session, and the helpers that go with them.

`synth_dataset` is a tiny synthetic keyword dataset. `trained_model` trains a
tiny frame-token AST for ~500 steps on a synthesized yes/stop/seven dataset:
enough to find held-out speakers' keywords in a stream, for the runtime tests
(test_stream, test_wakeword, test_microphone, test_cpp_runtime), which build
their streams with `keyword_stream` and `detectable_clip` and score with `matches`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from edgeast.audio.frontend import FrontendConfig, LogMelFrontend
from edgeast.audio.io import load_audio
from edgeast.data import BACKGROUND_NOISE, TESTING_LIST, UNLABELED, VALIDATION_LIST
from edgeast.data.speech_commands import SpeechCommands
from edgeast.data.synth import SynthConfig, synthesize_dataset
from edgeast.export.metadata import ArtifactMeta
from edgeast.models.ast import ASTClassifier, ASTConfig
from edgeast.models.checkpoint import save_model
from edgeast.models.keyword import KeywordModel
from edgeast.runtime.benchmark_stream import speech_bounds
from edgeast.runtime.detector import StreamingDetector
from edgeast.runtime.files import stream_audio

TINY_SYNTH = SynthConfig(
    keywords=("yes", "no"),
    unknown_words=("cat", "dog"),
    speakers=20,  # 16 train, 2 val, 2 test
    keyword_clips=(16, 4, 4),
    unknown_clips=(4, 2, 2),
    speech_clips=(4, 2, 2),
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
    4/2/2 running-speech crops in `_speech_/` (read as `_unknown_`),
    4 s background noise files, and 8 unlabeled 2 s clips in `_unlabeled_/`.
    `SpeechCommands(root, split, task="auto")` reads it as
    yes, no, _unknown_, _silence_.
    """
    out = tmp_path_factory.mktemp("synth") / "keywords"
    synthesize_dataset(out, TINY_SYNTH, show_progress=False)
    return out


# -- a tiny trained detector, for the runtime tests ---------------------------

SR = 16000
KEYWORDS = ("yes", "stop", "seven")
THRESHOLDS = {k: 0.6 for k in KEYWORDS}  # the tiny model's scores rarely reach the default 0.8 for 3 hops
TRAIN_SYNTH = SynthConfig(
    keywords=KEYWORDS,
    unknown_words=("go", "left", "house", "bird", "happy", "nine", "off", "tree", "dog", "learn"),
    speakers=60,
    keyword_clips=(100, 2, 12),
    unknown_clips=(12, 1, 3),
    noise_seconds=30.0,
    unlabeled=40,
    seed=1,
    workers=2,
)


@dataclass(frozen=True)
class TrainedModel:
    """The tiny detector `trained_model` makes: its checkpoint and the dataset it learned from."""

    dataset: Path  # the synthetic dataset it was trained on (test split held out by speaker)
    checkpoint: Path
    labels: list[str]


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> TrainedModel:
    """Synthesize the dataset and train the tiny detector, once per session (~30-60 s on 2 busy cores)."""
    return _train_tiny_detector(tmp_path_factory.mktemp("runtime") / "kws")


def _train_tiny_detector(root: Path) -> TrainedModel:
    """A frame-token AST trained for 500 steps on TRAIN_SYNTH (written to `root`), saved beside it."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    synthesize_dataset(root, TRAIN_SYNTH, show_progress=False)
    train = SpeechCommands(root, "train", task="auto")
    items = [train[i] for i in range(len(train))]
    x = torch.stack([w for w, _ in items])
    y = torch.tensor([label for _, label in items])
    unknown = train.labels.index("_unknown_")
    is_keyword = y < len(KEYWORDS)
    noise_files = [load_audio(p) for p in sorted((root / BACKGROUND_NOISE).glob("*.wav"))]
    noise = torch.cat([n[: int(0.8 * len(n))] for n in noise_files])  # the train part of each noise file
    sentences = [load_audio(p) for p in sorted((root / UNLABELED).glob("*.wav"))]

    def noisy(waves: torch.Tensor) -> torch.Tensor:
        starts = torch.randint(0, len(noise) - SR, (len(waves),), generator=g)
        n = torch.stack([noise[s:s + SR] for s in starts])
        speech = waves.pow(2).mean(1, keepdim=True).clamp_min(1e-8)
        snr = 10 ** (torch.empty(len(waves), 1).uniform_(5, 30, generator=g) / 10)
        return waves + n * (speech / snr / n.pow(2).mean(1, keepdim=True).clamp_min(1e-8)).sqrt()

    shifts = ((torch.rand(len(x), generator=g) * 2 - 1) * 0.2 * SR).long()
    shifted = noisy(torch.stack([_shift(w, int(s)) for w, s in zip(x, shifts)]))
    # A keyword cut in half by the window edge is not a keyword yet: the detector should fire once it is in.
    partial = []
    for w in x[is_keyword]:
        start, end = speech_bounds(w.numpy(), SR)
        gone = int((end - start) * (0.5 + 0.4 * float(torch.rand(1, generator=g))))
        left = bool(torch.randint(0, 2, (1,), generator=g))
        partial.append(_shift(w, -(start + gone) if left else SR - end + gone))
    partial = torch.stack(partial)
    speech = torch.stack([s[o:o + SR] for s in sentences for o in (0, SR // 2, SR) if len(s) >= o + SR])
    waves = torch.cat([x, shifted, partial, noisy(speech)])
    targets = torch.cat([y, y, torch.full((len(partial),), unknown), torch.full((len(speech),), unknown)])

    frontend = LogMelFrontend(FrontendConfig())
    with torch.no_grad():
        features = torch.cat([frontend(waves[i:i + 256]) for i in range(0, len(waves), 256)])
    cfg = ASTConfig(embed_dim=64, depth=2, num_heads=2, patch_f=128, patch_t=4, stride_f=128, stride_t=4,
                    num_classes=len(train.labels))
    classifier = ASTClassifier(cfg)
    steps = 500
    opt = torch.optim.AdamW(classifier.parameters(), 3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        idx = torch.randint(0, len(features), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(classifier(features[idx]), targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    model = KeywordModel(frontend, classifier.eval(), train.labels).eval()
    checkpoint = root.parent / "tiny_kws"
    save_model(model, checkpoint, train.labels)
    return TrainedModel(root, checkpoint, list(train.labels))


def _shift(wave: torch.Tensor, samples: int) -> torch.Tensor:
    out = torch.zeros_like(wave)
    if samples >= 0:
        out[samples:] = wave[:len(wave) - samples]
    else:
        out[:samples] = wave[-samples:]
    return out


def keyword_clips(model: TrainedModel, split: str) -> list[str]:
    """Keyword clips (paths relative to the dataset) of the train or test split."""
    test = [line for line in (model.dataset / TESTING_LIST).read_text().split() if line.split("/")[0] in KEYWORDS]
    if split == "test":
        return test
    held_out = set(test) | set((model.dataset / VALIDATION_LIST).read_text().split())
    return [f"{k}/{p.name}" for k in KEYWORDS for p in sorted((model.dataset / k).glob("*.wav"))
            if f"{k}/{p.name}" not in held_out]


def keyword_stream(model: TrainedModel, seconds: float, keywords_at: list[float], seed: int = 0,
                   noise_db: float = -60.0, split: str = "train") -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Faint noise with keyword clips starting near the given times (yes, stop, seven, yes, ...).

    Runtime tests use clips of the train split by default: they check the
    runtime, and the model knows those clips; model quality on held-out
    speakers is what test_wakeword.py measures. Returns the audio and the
    ground truth (keyword, start_s, end_s) of the speech inside each clip.
    """
    rng = np.random.default_rng(seed)
    clips = keyword_clips(model, split)
    audio = (rng.standard_normal(int(seconds * SR)) * 10 ** (noise_db / 20)).astype(np.float32)
    truth = []
    for i, at in enumerate(keywords_at):
        pool = [t for t in clips if t.split("/")[0] == KEYWORDS[i % len(KEYWORDS)]]
        rel = pool[int(rng.integers(len(pool)))]
        clip = load_audio(model.dataset / rel).numpy()
        start, end = speech_bounds(clip, SR)
        pos = int(at * SR) - start
        audio[pos:pos + len(clip)] += clip
        truth.append((rel.split("/")[0], (pos + start) / SR, (pos + end) / SR))
    return audio, truth


def detectable_clip(model: TrainedModel, keyword: str) -> np.ndarray:
    """The first train clip of `keyword` the detector finds once and in place, in 3 s of faint noise,
    wherever it falls between two hops.

    For tests of the plumbing around the model (capture, memory): they need a
    word the model surely detects; how often it does is test_wakeword's business.
    """
    detector = StreamingDetector(model.checkpoint, thresholds=THRESHOLDS)
    noise = (np.random.default_rng(0).standard_normal(3 * SR) * 1e-3).astype(np.float32)
    for rel in [c for c in keyword_clips(model, "train") if c.startswith(keyword + "/")]:
        clip = load_audio(model.dataset / rel).numpy()
        start, end = speech_bounds(clip, SR)
        for offset in range(SR, SR + 1600, 400):
            audio = noise.copy()
            audio[offset:offset + len(clip)] += clip
            detector.reset()
            found = stream_audio(detector, audio)
            if len(found) != 1 or not matches(found[0], (keyword, (offset + start) / SR, (offset + end) / SR)):
                break
        else:
            return clip
    raise AssertionError(f"the tiny model detects no train clip of {keyword!r}: training went wrong")


def matches(det, truth, slack_s: float = 0.3) -> bool:
    """The detection names the keyword and its window holds the spoken word (within slack_s)."""
    keyword, start, end = truth
    return det.keyword == keyword and det.start_s - slack_s <= start and end <= det.end_s + slack_s


# -- tiny stand-ins with known answers: engine tests (test_engine, test_ddp) and detector tests --

class Regressor(nn.Module):
    """A small MLP with a squared-error loss; optional dropout exercises the RNG."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1))

    def forward(self, batch):
        x, y = batch
        err = self.net(x).squeeze(-1) - y
        return (err ** 2).mean(), {"mae": err.abs().mean()}


def regression_data(n: int = 64, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]))


class FlakyFiles(Dataset):
    """Items listed in `bad` are unreadable: None, counted like the edgeast datasets do."""

    def __init__(self, bad: set[int]):
        self.data, self.bad, self.skipped = regression_data(32), bad, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if i in self.bad:
            self.skipped += 1
            return None
        return self.data[i]


BURST_S = 0.3
TONES = {"low": 500.0, "high": 1500.0}


class ToneBackend:
    """logits = [8 * fraction of a burst of each tone in the window, 4 for _unknown_, 0 for _silence_]."""

    def __init__(self, **meta):
        self.meta = ArtifactMeta(labels=["low", "high", "_unknown_", "_silence_"], **meta)
        t = np.arange(self.meta.window_samples) / SR
        self.refs = [np.exp(-2j * np.pi * f * t) for f in TONES.values()]
        self.calls = 0

    def infer(self, window: np.ndarray) -> np.ndarray:
        self.calls += 1
        assert window.dtype == np.float32 and window.shape == (self.meta.window_samples,)
        # |<w, e^-iwt>| = amplitude/2 * samples of tone in the window (amplitude 0.5 below)
        held = [min(1.0, abs(np.dot(window, r)) * 4 / (BURST_S * SR)) for r in self.refs]
        return np.array([8 * held[0], 8 * held[1], 4.0, 0.0], dtype=np.float32)


def stream(seconds: float, bursts: list[tuple[str, float]], noise_db: float = -70.0) -> np.ndarray:
    """Faint noise with 0.3 s tone bursts (amplitude 0.5) starting at the given times."""
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(int(seconds * SR)) * 10 ** (noise_db / 20)).astype(np.float32)
    n = int(BURST_S * SR)
    for name, at in bursts:
        start = int(at * SR)
        audio[start:start + n] += 0.5 * np.sin(2 * np.pi * TONES[name] * np.arange(n) / SR).astype(np.float32)
    return audio
