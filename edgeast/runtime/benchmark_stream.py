"""The synthetic wake-word benchmark: held-out keywords in running speech and noise.

The field compares always-on detectors the way Picovoice's wake-word benchmark
does: keywords mixed into running speech with noise (10 dB SNR).
`build_test_streams` makes a keyword stream (held-out keyword clips from a
dataset's test split, inserted at known times between background sentences)
and a keyword-free stream of the same kind of speech, both with noise. What is
measured on them is in `wakeword_metrics.py`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeast.audio.io import AudioError, load_audio, save_audio
from edgeast.data import BACKGROUND_NOISE, MANIFEST, TESTING_LIST


class StreamEvalError(ValueError):
    """A dataset or artifact that cannot give a test stream or take calibrated thresholds."""


@dataclass(frozen=True)
class KeywordEvent:
    keyword: str
    start_s: float
    end_s: float


@dataclass
class TestStream:
    audio: np.ndarray  # float32 mono
    sample_rate: int
    events: list[KeywordEvent]  # ground truth; empty for a keyword-free stream

    __test__ = False  # not a pytest class

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate

    def save(self, wav_path: str | Path) -> None:
        """The audio as wav and the events beside it (same stem, .json)."""
        save_audio(wav_path, self.audio, self.sample_rate)
        Path(wav_path).with_suffix(".json").write_text(json.dumps([asdict(e) for e in self.events], indent=1))


@dataclass
class StreamConfig:
    keyword_minutes: float = 10.0
    background_minutes: float = 10.0
    snr_db: float = 10.0  # speech level over noise level
    speech_db: float = -24.0  # RMS of active speech, dBFS (each utterance jittered by +-3 dB)
    speech_between_s: tuple[float, float] = (2.0, 6.0)  # background speech between two keywords
    pause_s: tuple[float, float] = (0.2, 0.8)  # silence around every utterance
    seed: int = 0


def speech_bounds(wave: np.ndarray, sample_rate: int, floor_db: float = -35.0) -> tuple[int, int]:
    """First and last sample of the 10 ms frames within `floor_db` of the loudest frame."""
    frame = sample_rate // 100
    usable = len(wave) // frame * frame
    if usable == 0:
        return 0, len(wave)
    rms = np.sqrt(np.mean(wave[:usable].reshape(-1, frame).astype(np.float64) ** 2, axis=1)) + 1e-12
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > floor_db)
    return int(loud[0] * frame), int((loud[-1] + 1) * frame)


def _at_level(wave: np.ndarray, rms_db: float) -> np.ndarray:
    rms = math.sqrt(float(np.mean(wave.astype(np.float64) ** 2))) + 1e-12
    return (wave * (10 ** (rms_db / 20) / rms)).astype(np.float32)


def _keyword_clips(root: Path, keywords: list[str], sample_rate: int) -> dict[str, list[np.ndarray]]:
    """The speech part of every test-split clip of each keyword."""
    listing = root / TESTING_LIST
    if not listing.is_file():
        raise StreamEvalError(f"{root}: no {TESTING_LIST}; give a dataset in the Speech Commands layout "
                              "(e.g. one written by `edgeast synth`)")
    clips: dict[str, list[np.ndarray]] = {k: [] for k in keywords}
    for rel in listing.read_text().split():
        folder = rel.split("/")[0]
        if folder not in clips:
            continue
        try:
            wave = load_audio(root / rel, sample_rate).numpy()
        except AudioError:
            continue  # a bad test clip is just not used
        start, end = speech_bounds(wave, sample_rate)
        clips[folder].append(wave[start:end])
    missing = [k for k, c in clips.items() if not c]
    if missing:
        raise StreamEvalError(f"{root}: the test split has no clips of {missing}; the model's keywords must be "
                              "folders of the dataset")
    return clips


def _test_voices(root: Path):
    """espeak voices of the dataset's test speakers (synthetic data), else a fixed set of English voices."""
    from edgeast.data.espeak import Voice

    manifest = root / MANIFEST
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        ids = data.get("speakers", {}).get("test", [])
        voices = [Voice(**data["voices"][i]) for i in ids if i in data.get("voices", {})]
        if voices:
            return voices
    return [Voice("en", v, rate, pitch) for v in ("m1", "m3", "f2", "f4") for rate, pitch in ((150, 40), (190, 60))]


class _Sentences:
    """Background speech: espeak sentences by held-out voices that avoid the keywords, or files from a folder."""

    def __init__(self, root: Path, keywords: list[str], sample_rate: int, rng: np.random.Generator,
                 folder: Path | None):
        self.sample_rate, self.rng = sample_rate, rng
        self.files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".wav", ".flac", ".ogg")) if folder else []
        if folder is not None and not self.files:
            raise StreamEvalError(f"{folder}: no audio files for background speech")
        from edgeast.data.synth import ENGLISH_SENTENCE_WORDS

        banned = {w for k in keywords for w in k.replace("_", " ").split()}
        self.words = [w for w in ENGLISH_SENTENCE_WORDS if w not in banned]
        self.voices = _test_voices(root)

    def next(self) -> np.ndarray:
        if self.files:
            try:
                wave = load_audio(self.files[int(self.rng.integers(len(self.files)))], self.sample_rate).numpy()
            except AudioError:
                return np.zeros(0, np.float32)
        else:
            import torch
            import torchaudio.functional as AF

            from edgeast.data import espeak

            text = " ".join(self.rng.choice(self.words, size=int(self.rng.integers(5, 12))))
            voice = self.voices[int(self.rng.integers(len(self.voices)))]
            raw, rate = espeak.synthesize(text, voice, seed=int(self.rng.integers(1 << 30)))
            wave = AF.resample(torch.from_numpy(raw), rate, self.sample_rate).numpy()
        start, end = speech_bounds(wave, self.sample_rate)
        return wave[start:end]


def _noise(root: Path, num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise: pieces of the last 10 % (the test part) of the dataset's noise files, else pink noise."""
    sources = []
    folder = root / BACKGROUND_NOISE
    for path in sorted(folder.glob("*.wav")) if folder.is_dir() else []:
        try:
            wave = load_audio(path, sample_rate).numpy()
        except AudioError:
            continue
        part = wave[int(0.9 * len(wave)):]
        if len(part) >= sample_rate and np.any(part):
            sources.append(part / (np.sqrt(np.mean(part ** 2)) + 1e-12))
    if not sources:
        spectrum = np.fft.rfft(rng.standard_normal(num_samples))
        spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
        pink = np.fft.irfft(spectrum, n=num_samples)
        return (pink / (np.sqrt(np.mean(pink ** 2)) + 1e-12)).astype(np.float32)
    out = np.empty(num_samples, np.float32)
    pos = 0
    while pos < num_samples:
        src = sources[int(rng.integers(len(sources)))]
        n = min(num_samples - pos, len(src))
        start = int(rng.integers(len(src) - n + 1))
        out[pos:pos + n] = src[start:start + n]
        pos += n
    return out


def build_test_streams(
    dataset: str | Path,
    keywords: list[str],
    cfg: StreamConfig = StreamConfig(),
    *,
    sample_rate: int = 16000,
    background: str | Path | None = None,
) -> tuple[TestStream, TestStream]:
    """(keyword stream, keyword-free stream) built from `dataset`'s test split.

    Background speech is espeak sentences spoken by the dataset's test voices
    with every keyword word left out, or the audio files under `background`
    (which must not contain the keywords).
    """
    root = Path(dataset)
    rng = np.random.default_rng(cfg.seed)
    clips = _keyword_clips(root, keywords, sample_rate)
    sentences = _Sentences(root, keywords, sample_rate, rng, Path(background) if background else None)

    def pause() -> int:
        return int(rng.uniform(*cfg.pause_s) * sample_rate)

    def level() -> float:
        return cfg.speech_db + rng.uniform(-3.0, 3.0)

    def assemble(minutes: float, with_keywords: bool) -> TestStream:
        total = int(minutes * 60 * sample_rate)
        audio = np.zeros(total, np.float32)
        events: list[KeywordEvent] = []
        pos, order = pause(), 0
        while True:
            budget = rng.uniform(*cfg.speech_between_s) * sample_rate
            spoken = 0
            while spoken < budget:  # background speech
                wave = sentences.next()
                if len(wave) == 0:
                    continue
                if pos + len(wave) > total:
                    return TestStream(audio, sample_rate, events)
                audio[pos:pos + len(wave)] = _at_level(wave, level())
                pos += len(wave) + pause()
                spoken += len(wave)
            if with_keywords:
                keyword = keywords[order % len(keywords)]
                order += 1
                pool = clips[keyword]
                wave = pool[int(rng.integers(len(pool)))]
                if pos + len(wave) > total:
                    return TestStream(audio, sample_rate, events)
                audio[pos:pos + len(wave)] = _at_level(wave, level())
                events.append(KeywordEvent(keyword, pos / sample_rate, (pos + len(wave)) / sample_rate))
                pos += len(wave) + pause()

    streams = []
    for minutes, with_keywords in ((cfg.keyword_minutes, True), (cfg.background_minutes, False)):
        stream = assemble(minutes, with_keywords)
        noise = _noise(root, len(stream.audio), sample_rate, rng) * 10 ** ((cfg.speech_db - cfg.snr_db) / 20)
        stream.audio = np.clip(stream.audio + noise, -1.0, 1.0).astype(np.float32)
        streams.append(stream)
    return streams[0], streams[1]
