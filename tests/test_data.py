"""Datasets on a small folder laid out exactly like Google Speech Commands."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from edgeast.audio.io import save_audio
from edgeast.data import SILENCE, UNKNOWN
from edgeast.data.common import BadFileWarning, DatasetError, collate_skip_none, fix_length, hash_split
from edgeast.data.folders import FolderDataset, UnlabeledAudio
from edgeast.data.speech_commands import KS1_KEYWORDS, SpeechCommands

SR = 16000
OTHER_WORDS = ("bed", "cat", "marvin")
WORDS = KS1_KEYWORDS + OTHER_WORDS
SPEAKERS = ("0a1b2c3d", "1f2e3d4c", "2b3c4d5e", "3c4d5e6f", "4d5e6f70")  # last two: val, test
CORRUPT = "yes/deadbeef_nohash_0.wav"


def tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def sc_root(tmp_path_factory):
    """13 word folders x 5 speakers, one extra take, a corrupt wav, two noise files, official lists."""
    root = tmp_path_factory.mktemp("speech_commands")
    for w, word in enumerate(WORDS):
        for s, speaker in enumerate(SPEAKERS):
            seconds = (0.7, 1.0, 1.2)[(w + s) % 3]  # shorter, exact and longer than 1 s
            save_audio(root / word / f"{speaker}_nohash_0.wav", tone(seconds, 200 + 50 * w), SR)
    save_audio(root / "yes" / f"{SPEAKERS[0]}_nohash_1.wav", tone(1.0, 300), SR)
    (root / CORRUPT).write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really audio")
    save_audio(root / "_background_noise_" / "white_noise.wav", np.random.default_rng(0).uniform(-0.5, 0.5, 5 * SR), SR)
    save_audio(root / "_background_noise_" / "running_tap.wav", tone(3.0, 1000), SR)
    for list_name, speaker in (("validation_list.txt", SPEAKERS[3]), ("testing_list.txt", SPEAKERS[4])):
        (root / list_name).write_text("".join(f"{word}/{speaker}_nohash_0.wav\n" for word in WORDS))
    return root


def rel(ds, i):
    return ds.files[i].relative_to(ds.root).as_posix()


def test_ks1_labels_and_official_splits(sc_root):
    train = SpeechCommands(sc_root, "train", task="ks1")
    assert train.labels == list(KS1_KEYWORDS) + [UNKNOWN, SILENCE]
    words = [rel(train, i) for i in range(train.num_word_clips)]
    # train = every word clip in neither list: speakers 0-2, the extra take and the corrupt file
    assert len(words) == 3 * len(WORDS) + 2
    assert not any(SPEAKERS[3] in w or SPEAKERS[4] in w for w in words)
    assert CORRUPT in words
    for i, w in enumerate(words):
        word = w.split("/")[0]
        expected = KS1_KEYWORDS.index(word) if word in KS1_KEYWORDS else train.labels.index(UNKNOWN)
        assert train.targets[i] == expected
    # _silence_ defaults to the average keyword class: 32 keyword clips / 10 keywords
    assert len(train) - train.num_word_clips == round(32 / 10)
    assert train.targets[train.num_word_clips:] == [train.labels.index(SILENCE)] * 3

    val = SpeechCommands(sc_root, "val", task="ks1")
    listed = set((sc_root / "validation_list.txt").read_text().split())
    assert {rel(val, i) for i in range(val.num_word_clips)} == listed
    test = SpeechCommands(sc_root, "test", task="ks1")
    assert all(SPEAKERS[4] in rel(test, i) for i in range(test.num_word_clips))
    assert len(test) - test.num_word_clips == 1  # 10 keyword clips / 10 keywords


def test_35_task_has_one_class_per_word_folder(sc_root):
    ds = SpeechCommands(sc_root, "test", task="35")
    assert ds.labels == sorted(WORDS)
    assert len(ds) == len(WORDS)  # no _unknown_, no _silence_
    assert sorted(ds.labels[t] for t in ds.targets) == sorted(WORDS)


def test_items_are_one_second_float32(sc_root):
    ds = SpeechCommands(sc_root, "val", task="ks1")
    for i in range(len(ds)):
        wave, label = ds[i]
        assert wave.shape == (SR,) and wave.dtype == torch.float32 and label == ds.targets[i]
    short = [rel(ds, i) for i in range(ds.num_word_clips)].index(f"yes/{SPEAKERS[3]}_nohash_0.wav")
    wave, _ = ds[short]  # "yes" of speaker 3 is 0.7 s long: zero-padded at the end
    assert wave[round(0.7 * SR):].abs().max() == 0 and wave[: round(0.7 * SR)].abs().max() > 0.4


def test_fix_length_pads_end_and_crops_centre():
    x = torch.arange(10.0)
    assert fix_length(x, 12).tolist() == list(range(10)) + [0, 0]
    assert fix_length(x, 4).tolist() == [3, 4, 5, 6]


def test_silence_clips_are_deterministic_noise_crops(sc_root):
    a = SpeechCommands(sc_root, "train", task="ks1", silence_clips=6, seed=3)
    b = SpeechCommands(sc_root, "train", task="ks1", silence_clips=6, seed=3)
    silence = range(a.num_word_clips, len(a))
    assert len(silence) == 6
    for i in silence:
        assert a.files[i].parent.name == "_background_noise_"
        wave_a, label = a[i]
        assert label == a.labels.index(SILENCE) and wave_a.shape == (SR,)
        assert torch.equal(wave_a, b[i][0])
        assert 0 < wave_a.abs().max() <= 0.5 + 1e-4  # noise peak 0.5 scaled by a gain <= 1
    other_seed = SpeechCommands(sc_root, "train", task="ks1", silence_clips=6, seed=4)
    assert any(not torch.equal(a[i][0], other_seed[i][0]) for i in silence)
    assert len(SpeechCommands(sc_root, "train", task="ks1", silence_clips=0)) == a.num_word_clips


def test_silence_needs_background_noise(sc_root, tmp_path):
    root = tmp_path / "sc"
    shutil.copytree(sc_root, root, ignore=shutil.ignore_patterns("_background_noise_"))
    with pytest.raises(DatasetError, match="_background_noise_"):
        SpeechCommands(root, "train", task="ks1")
    assert len(SpeechCommands(root, "test", task="ks1", silence_clips=0)) == len(WORDS)


def test_bad_file_is_skipped_counted_and_warned_once(sc_root):
    ds = SpeechCommands(sc_root, "train", task="ks1", silence_clips=0)
    bad = [rel(ds, i) for i in range(len(ds))].index(CORRUPT)
    with pytest.warns(BadFileWarning, match="deadbeef_nohash_0.wav"):
        assert ds[bad] is None
    assert ds.skipped == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second read neither warns nor counts again
        assert ds[bad] is None
    assert ds.skipped == 1

    fresh = SpeechCommands(sc_root, "train", task="ks1", silence_clips=0)
    with pytest.warns(BadFileWarning):
        waves, labels = next(iter(DataLoader(fresh, batch_size=len(fresh), collate_fn=collate_skip_none)))
    assert waves.shape == (len(fresh) - 1, SR) and labels.shape == (len(fresh) - 1,)
    assert fresh.skipped == 1


def test_collate_skip_none():
    item = (torch.ones(4), 2)
    waves, labels = collate_skip_none([None, item, item])
    assert waves.shape == (2, 4) and labels.tolist() == [2, 2]
    assert collate_skip_none([None, None]) is None
    assert collate_skip_none([torch.zeros(3), None]).shape == (1, 3)


def test_auto_task_uses_synth_manifest_keywords(sc_root, tmp_path):
    assert SpeechCommands(sc_root, "test", task="auto").labels == SpeechCommands(sc_root, "test", task="ks1").labels
    root = tmp_path / "sc"
    shutil.copytree(sc_root, root)
    (root / "synth_manifest.json").write_text(json.dumps({"keywords": ["marvin", "yes"]}))
    ds = SpeechCommands(root, "test", task="auto")
    assert ds.labels == ["marvin", "yes", UNKNOWN, SILENCE]
    assert sorted(ds.targets[: ds.num_word_clips]) == [0, 1] + [2] * (len(WORDS) - 2)


def test_bad_arguments_raise_one_clear_error(sc_root, tmp_path):
    with pytest.raises(DatasetError, match="split"):
        SpeechCommands(sc_root, "validation")
    with pytest.raises(DatasetError, match="task"):
        SpeechCommands(sc_root, "train", task="v3")
    with pytest.raises(DatasetError, match="no such folder"):
        SpeechCommands(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no word folders"):
        SpeechCommands(tmp_path)


def test_folder_dataset_with_split_lists(sc_root):
    ds = FolderDataset(sc_root, "val", labels=["yes", "no"])
    assert ds.labels == ["yes", "no"] and len(ds) == 2
    assert [ds.labels[t] for t in ds.targets] == ["yes", "no"]
    wave, label = ds[0]
    assert wave.shape == (SR,) and label == 0
    everything = FolderDataset(sc_root)
    assert everything.labels == sorted(WORDS) and len(everything) == len(WORDS) * len(SPEAKERS) + 2
    with pytest.raises(DatasetError, match="sheila"):
        FolderDataset(sc_root, labels=["yes", "sheila"])


def test_folder_dataset_hash_split_keeps_speakers_together(tmp_path):
    for word in ("hey_edge", "other"):
        for speaker in range(30):
            for take in range(2):
                save_audio(tmp_path / word / f"spk{speaker:02d}_nohash_{take}.wav", tone(0.2, 440), SR)
    splits = {split: FolderDataset(tmp_path, split) for split in ("train", "val", "test")}
    assert sum(len(ds) for ds in splits.values()) == 120
    speakers = {split: {f.name.split("_nohash_")[0] for f in ds.files} for split, ds in splits.items()}
    assert not (speakers["train"] & speakers["val"]) and not (speakers["train"] & speakers["test"])
    assert not (speakers["val"] & speakers["test"])
    assert len(splits["val"]) > 0 and len(splits["test"]) > 0 and len(splits["train"]) > 60
    assert hash_split("x/spk07_nohash_0.wav", 10, 10) == hash_split("y/spk07_nohash_5.wav", 10, 10)


def test_unlabeled_audio_random_seeded_crops(tmp_path):
    save_audio(tmp_path / "a.wav", tone(3.0, 440) * np.linspace(0, 1, 3 * SR, dtype=np.float32), SR)
    save_audio(tmp_path / "deep" / "er" / "b.wav", tone(0.5, 220), SR)
    (tmp_path / "notes.txt").write_text("not audio")
    ds = UnlabeledAudio(tmp_path, clip_seconds=1.0, seed=1)
    assert [f.name for f in ds.files] == ["a.wav", "b.wav"]
    crop = ds[0]
    assert crop.shape == (SR,)
    assert torch.equal(crop, UnlabeledAudio(tmp_path, 1.0, seed=1)[0])
    full = UnlabeledAudio(tmp_path, 3.0)[0]
    windows = np.lib.stride_tricks.sliding_window_view(full.numpy(), 16)
    starts = np.flatnonzero((windows == crop[:16].numpy()).all(axis=1))  # where the crop came from
    assert len(starts) == 1 and torch.equal(full[starts[0]:starts[0] + SR], crop)
    crops = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        crops.add(tuple(ds[0][:4].tolist()))
    assert len(crops) == 4
    short = ds[1]
    assert short.shape == (SR,) and short[SR // 2:].abs().max() == 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no audio files"):
        UnlabeledAudio(tmp_path / "empty", 1.0)


def test_unlabeled_audio_skips_bad_file(sc_root):
    ds = UnlabeledAudio(sc_root / "yes", clip_seconds=0.5)
    bad = [f.name for f in ds.files].index("deadbeef_nohash_0.wav")
    with pytest.warns(BadFileWarning):
        assert ds[bad] is None
    assert ds.skipped == 1 and ds[0].shape == (SR // 2,)
    assert math.isclose(ds.clip_samples / SR, 0.5)
