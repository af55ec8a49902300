"""Synthetic keyword speech with espeak-ng: the binding, the dataset layout, speakers, determinism."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile

from edgeast.data import BACKGROUND_NOISE, MANIFEST, SILENCE, SPEECH, UNKNOWN, UNLABELED
from edgeast.data import espeak, synth
from edgeast.data.folders import UnlabeledAudio
from edgeast.data.speech_commands import SpeechCommands
from edgeast.data.synth import SynthConfig, SynthError, folder_name, synthesize_dataset

SR = 16000
SMALL = SynthConfig(keywords=("go",), unknown_words=(), speakers=6, keyword_clips=(3, 1, 1),
                    noise_seconds=1.0, workers=1, seed=7)


def file_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def speech_seconds(wave: np.ndarray) -> float:
    """Span between the first and last sample above 5 % of the peak (the noise floor is far below)."""
    loud = np.flatnonzero(np.abs(wave) > 0.05 * np.abs(wave).max())
    return (loud[-1] - loud[0]) / SR


# --- espeak binding ---------------------------------------------------------------------------

def test_espeak_speaks_at_its_native_rate_and_knows_voices():
    wave, rate = espeak.synthesize("yes", espeak.Voice("en-us", "f2"))
    assert rate == 22050 and wave.dtype == np.float32
    assert 0.2 < len(wave) / rate < 1.0 and 0.05 < np.abs(wave).max() <= 1.0
    assert {"m1", "f5", "croak", "whisper", "klatt"} <= set(espeak.variants())
    assert {"en", "en-us", "en-gb-x-rp", "en-029", "de", "es"} <= set(espeak.languages())


def test_espeak_rate_pitch_and_language_change_the_speech():
    slow, _ = espeak.synthesize("seven", espeak.Voice(rate=100))
    fast, _ = espeak.synthesize("seven", espeak.Voice(rate=300))
    assert len(slow) > 1.8 * len(fast)
    low, _ = espeak.synthesize("nein", espeak.Voice("de", pitch=10))
    high, _ = espeak.synthesize("nein", espeak.Voice("de", pitch=90))
    english, _ = espeak.synthesize("nein", espeak.Voice("en", pitch=10))

    def f0(w, rate=22050):
        """Autocorrelation pitch of the loudest 100 ms, low-passed so formants do not mislead it."""
        spectrum = np.fft.rfft(w)
        spectrum[np.fft.rfftfreq(len(w), 1 / rate) > 400] = 0
        low = np.fft.irfft(spectrum, len(w))
        centre = int(np.clip(np.argmax(np.convolve(low**2, np.ones(2205), "same")), 1102, len(low) - 1102))
        x = low[centre - 1102:centre + 1102]
        ac = np.correlate(x, x, "full")[len(x) - 1:]
        past_zero_lag = int(np.argmax(ac < 0))
        return rate / (past_zero_lag + int(np.argmax(ac[past_zero_lag:rate // 50])))

    assert f0(high) > 1.8 * f0(low)
    assert len(english) != len(low) or not np.array_equal(english, low)


def test_espeak_rejects_unknown_voice():
    with pytest.raises(espeak.EspeakError, match="xx-nowhere"):
        espeak.synthesize("hello", espeak.Voice("xx-nowhere"))


def test_espeak_is_safe_from_threads():
    results = {}

    def speak(word):
        results[word] = espeak.synthesize(word, espeak.Voice("en", "m3"))[0]

    threads = [threading.Thread(target=speak, args=(w,)) for w in ("one", "two", "three", "four")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["four", "one", "three", "two"]
    assert all(0.15 < len(w) / 22050 < 1.0 for w in results.values())


def test_resample_keeps_a_tone():
    t = np.arange(22050) / 22050
    out = espeak.resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), 22050, SR)
    assert len(out) == SR
    expected = np.sin(2 * np.pi * 1000 * np.arange(SR) / SR)
    assert np.abs(out - expected)[100:-100].max() < 1e-3


# --- the synthetic dataset ------------------------------------------------------------------

def test_layout_of_synthetic_dataset(synth_dataset, synth_config):
    root, cfg = synth_dataset, synth_config
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == sorted([BACKGROUND_NOISE, UNLABELED, SPEECH, "yes", "no", "cat", "dog"])
    for folder, per_split in (("yes", cfg.keyword_clips), ("cat", cfg.unknown_clips), (SPEECH, cfg.speech_clips)):
        files = sorted((root / folder).glob("*.wav"))
        assert len(files) == sum(per_split)
        assert all(f.name.split("_nohash_")[1][:-4].isdigit() for f in files)
    noise = sorted(p.name for p in (root / BACKGROUND_NOISE).iterdir())
    assert noise == ["babble.wav", "brown_noise.wav", "pink_noise.wav", "white_noise.wav"]
    for name in noise:
        wave, rate = soundfile.read(root / BACKGROUND_NOISE / name)
        assert rate == SR and len(wave) == 4 * SR and 0.02 < np.sqrt(np.mean(wave**2)) < 0.2
    for path in list((root / "yes").glob("*.wav"))[:10]:
        info = soundfile.info(path)
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (SR, 1, SR, "PCM_16")
        wave, _ = soundfile.read(path)
        assert 0.1 < speech_seconds(wave) < 0.9 and 0.1 < np.abs(wave).max() < 0.9

    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["keywords"] == ["yes", "no"] and manifest["unknown_words"] == ["cat", "dog"]
    assert manifest["phrases"] == {"yes": "yes", "no": "no", "cat": "cat", "dog": "dog"}
    assert manifest["language"] == "en" and manifest["seed"] == 0
    assert {k: len(v) for k, v in manifest["speakers"].items()} == {"train": 16, "val": 2, "test": 2}
    val = (root / "validation_list.txt").read_text().split()
    test = (root / "testing_list.txt").read_text().split()
    assert len(val) == 2 * cfg.keyword_clips[1] + 2 * cfg.unknown_clips[1] + cfg.speech_clips[1]
    assert len(test) == 2 * cfg.keyword_clips[2] + 2 * cfg.unknown_clips[2] + cfg.speech_clips[2]
    assert all((root / p).is_file() for p in val + test)


def test_splits_are_speaker_disjoint(synth_dataset):
    root = synth_dataset
    manifest = json.loads((root / MANIFEST).read_text())
    speakers = {split: set(ids) for split, ids in manifest["speakers"].items()}
    assert not (speakers["train"] & speakers["val"] or speakers["train"] & speakers["test"]
                or speakers["val"] & speakers["test"])
    listed = {"val": set((root / "validation_list.txt").read_text().split()),
              "test": set((root / "testing_list.txt").read_text().split())}
    for path, speaker in manifest["clips"].items():
        assert Path(path).name.startswith(speaker + "_nohash_")
        split = "val" if path in listed["val"] else "test" if path in listed["test"] else "train"
        assert speaker in speakers[split]
    assert len(manifest["clips"]) == sum(1 for _ in root.glob("*/*_nohash_*.wav"))
    voices = {tuple(sorted(v.items())) for v in manifest["voices"].values()}
    assert len(voices) == 20  # every speaker its own voice


def test_speech_commands_auto_reads_synthetic_data(synth_dataset, synth_config):
    train = SpeechCommands(synth_dataset, "train", task="auto")
    assert train.labels == ["yes", "no", UNKNOWN, SILENCE]
    counts = np.bincount(train.targets, minlength=4).tolist()
    k, u, s = synth_config.keyword_clips[0], synth_config.unknown_clips[0], synth_config.speech_clips[0]
    assert counts == [k, k, 2 * u + s, k]  # _silence_: as many as an average keyword
    val = SpeechCommands(synth_dataset, "val", task="auto")
    assert np.bincount(val.targets, minlength=4).tolist()[:3] == [4, 4, 6]
    wave, label = val[0]
    assert wave.shape == (SR,) and label == val.targets[0] and val.skipped == 0


def test_speech_clips_are_cropped_running_speech_without_keywords(synth_dataset, synth_config):
    for path in sorted((synth_dataset / SPEECH).glob("*.wav")):
        wave, rate = soundfile.read(path)
        assert rate == SR and len(wave) == SR and speech_seconds(wave) > 0.5  # speech, not a word in silence
    cfg = replace(synth_config, keywords=("go", "stop"), speech_clips=(30, 0, 0))
    phrases = {"go": "go", "stop": "stop", "cat": "cat"}
    speakers = synth._plan_speakers(cfg, np.random.default_rng(0))
    plan, _ = synth._plan_speech(cfg, phrases, ["go", "stop"], speakers, np.random.default_rng(0))
    words = {w for u in plan for w in u.text.split()}
    assert len(plan) == 30 and len(words) > 50 and not words & {"go", "stop"}  # "go" is a common word too
    assert words <= set(synth.ENGLISH_SENTENCE_WORDS) | {"cat"}


def test_context_puts_speech_around_the_word_and_keeps_the_word(tmp_path):
    cfg = replace(SMALL, keyword_clips=(8, 2, 0))
    synthesize_dataset(tmp_path / "plain", cfg, show_progress=False)
    synthesize_dataset(tmp_path / "context", replace(cfg, context_prob=1.0), show_progress=False)
    val = set((tmp_path / "plain" / "validation_list.txt").read_text().split())
    plain = {p.name: soundfile.read(p)[0] for p in (tmp_path / "plain" / "go").glob("*.wav")}
    context = {p.name: soundfile.read(p)[0] for p in (tmp_path / "context" / "go").glob("*.wav")}
    assert plain.keys() == context.keys() and len(plain) == 10 and len(val) == 2
    train = [n for n in plain if f"go/{n}" not in val]
    longer = sum(speech_seconds(context[n]) > speech_seconds(plain[n]) + 0.1 for n in train)
    assert longer >= 6  # speech reaches further out (a word near a window edge may leave no room on that side)
    # val/test words stay isolated (not bit-equal: espeak's pitch flutter depends on what was spoken before)
    assert all(abs(speech_seconds(context[n]) - speech_seconds(plain[n])) < 0.05 for n in plain if f"go/{n}" in val)
    with pytest.raises(SynthError, match="context_prob=1.5"):
        synthesize_dataset(tmp_path / "bad", replace(cfg, context_prob=1.5), show_progress=False)


def test_unlabeled_clips(synth_dataset, synth_config):
    files = sorted((synth_dataset / UNLABELED).glob("*.wav"))
    assert len(files) == synth_config.unlabeled
    manifest = json.loads((synth_dataset / MANIFEST).read_text())
    assert {f.name.split("_")[0] for f in files} <= set(manifest["speakers"]["train"])
    wave, rate = soundfile.read(files[0])
    assert rate == SR and len(wave) == 2 * SR and speech_seconds(wave) > 1.0
    crops = UnlabeledAudio(synth_dataset / UNLABELED, clip_seconds=1.0)
    assert len(crops) == synth_config.unlabeled and crops[3].shape == (SR,)


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    cfg = replace(SMALL, unlabeled=2)
    synthesize_dataset(tmp_path / "a", cfg, show_progress=False)
    synthesize_dataset(tmp_path / "b", replace(cfg, workers=2), show_progress=False)
    a, b = file_bytes(tmp_path / "a"), file_bytes(tmp_path / "b")
    assert len(a) == 5 + 4 + 2 + 2 + 1  # clips, noise files, unlabeled, lists, manifest
    assert a == b
    synthesize_dataset(tmp_path / "c", replace(cfg, seed=8), show_progress=False)
    other_seed = {data for path, data in file_bytes(tmp_path / "c").items() if path.startswith("go/")}
    assert len(other_seed) == 5 and not other_seed & set(a.values())


def test_multi_word_phrase_gets_a_safe_folder(tmp_path):
    cfg = replace(SMALL, keywords=("Hey Edge!", "go"))
    report = synthesize_dataset(tmp_path / "out", cfg, show_progress=False)
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["keywords"] == ["hey_edge", "go"]
    assert manifest["phrases"]["hey_edge"] == "Hey Edge!"
    phrase = [speech_seconds(soundfile.read(p)[0]) for p in (tmp_path / "out" / "hey_edge").glob("*.wav")]
    word = [speech_seconds(soundfile.read(p)[0]) for p in (tmp_path / "out" / "go").glob("*.wav")]
    assert len(phrase) == 5 and np.mean(phrase) > 1.3 * np.mean(word)  # two words take longer than one
    assert report.clips == 10 and report.clips_per_second > 0
    assert folder_name("  Ok, Google ") == "ok_google" and folder_name("tschüss") == "tschüss"


def test_phrase_too_long_for_the_clip_is_spoken_faster(tmp_path):
    report = synthesize_dataset(tmp_path / "out", replace(SMALL, keywords=("the quick brown fox jumps",)),
                                show_progress=False)
    assert report.respoken == 5
    for path in (tmp_path / "out" / "the_quick_brown_fox_jumps").glob("*.wav"):
        wave = soundfile.read(path)[0]
        assert 0.5 < speech_seconds(wave) < 0.91 and np.abs(wave[:80]).max() < 0.01  # whole phrase inside


def test_german_keywords(tmp_path):
    cfg = replace(SMALL, keywords=("ja", "nein"), language="de")
    synthesize_dataset(tmp_path / "de", cfg, show_progress=False)
    manifest = json.loads((tmp_path / "de" / MANIFEST).read_text())
    assert manifest["language"] == "de" and manifest["unknown_words"] == []
    assert {v["language"] for v in manifest["voices"].values()} == {"de"}
    ds = SpeechCommands(tmp_path / "de", "train", task="auto")
    assert ds.labels == ["ja", "nein", UNKNOWN, SILENCE] and len(ds) == 3 + 3 + 3


def test_bad_settings_raise_one_clear_error(tmp_path):
    with pytest.raises(SynthError, match="hey_edge"):
        synthesize_dataset(tmp_path / "a", replace(SMALL, keywords=("hey edge", "hey-edge")), show_progress=False)
    with pytest.raises(SynthError, match="klingon"):
        synthesize_dataset(tmp_path / "b", replace(SMALL, language="klingon"), show_progress=False)
    with pytest.raises(SynthError, match="split empty"):
        synthesize_dataset(tmp_path / "c", replace(SMALL, speakers=2), show_progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(SynthError, match="not empty"):
        synthesize_dataset(tmp_path / "full", SMALL, show_progress=False)
