import math

import numpy as np
import pytest
import soundfile
import torch

from edgeast.audio.io import AudioError, load_audio, save_audio


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def dominant_hz(wave: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    return float(np.argmax(spectrum) * rate / len(wave))


def test_wav_roundtrip_is_16_bit_exact(tmp_path):
    wave = torch.from_numpy(sine(440, 0.5, 16000))
    path = tmp_path / "a.wav"
    save_audio(path, wave, 16000)
    info = soundfile.info(str(path))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 16000, 1)
    loaded = load_audio(path)
    assert loaded.dtype == torch.float32 and loaded.shape == wave.shape
    assert (loaded - wave).abs().max() <= 1 / 32768


def test_stereo_flac_is_downmixed_and_resampled(tmp_path):
    left = sine(440, 1.0, 44100, 0.6)
    right = sine(440, 1.0, 44100, 0.2)
    path = tmp_path / "stereo.flac"
    soundfile.write(str(path), np.stack([left, right], axis=1), 44100, format="FLAC")
    loaded = load_audio(path, 16000)
    assert loaded.shape == (16000,)
    assert dominant_hz(loaded, 16000) == pytest.approx(440, abs=1)
    assert loaded.abs().max().item() == pytest.approx(0.4, abs=0.01)  # mean of the two channels


def test_ogg_and_upsampling(tmp_path):
    path = tmp_path / "tone.ogg"
    soundfile.write(str(path), sine(1000, 0.5, 8000), 8000, format="OGG", subtype="VORBIS")
    loaded = load_audio(path, 16000)
    assert loaded.shape == (8000,)
    assert dominant_hz(loaded, 16000) == pytest.approx(1000, abs=2)


def test_float_file_beyond_full_scale_is_clipped(tmp_path):
    path = tmp_path / "hot.wav"
    soundfile.write(str(path), sine(100, 0.1, 16000, 3.0), 16000, subtype="FLOAT")
    loaded = load_audio(path)
    assert loaded.max().item() == 1.0 and loaded.min().item() == -1.0


def _assert_one_line_naming(err: pytest.ExceptionInfo, path) -> None:
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert str(path) in message and "\n" not in message


def test_bad_files_raise_audio_error_naming_the_file(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioError, match="no such audio file") as err:
        load_audio(missing)
    _assert_one_line_naming(err, missing)

    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF not really a wave file" * 10)
    with pytest.raises(AudioError, match="cannot read audio") as err:
        load_audio(garbage)
    _assert_one_line_naming(err, garbage)

    empty = tmp_path / "empty.wav"
    soundfile.write(str(empty), np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="no audio samples") as err:
        load_audio(empty)
    _assert_one_line_naming(err, empty)

    nan = tmp_path / "nan.wav"
    samples = sine(100, 0.1, 16000)
    samples[10] = np.nan
    soundfile.write(str(nan), samples, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN") as err:
        load_audio(nan)
    _assert_one_line_naming(err, nan)

    short = tmp_path / "short.wav"
    save_audio(short, sine(100, 0.01, 16000), 16000)  # 160 samples
    with pytest.raises(AudioError, match="too short .160 samples") as err:
        load_audio(short, min_samples=400)
    _assert_one_line_naming(err, short)


def test_save_audio_clips_creates_dirs_and_writes_channels(tmp_path):
    path = tmp_path / "new" / "dir" / "loud.wav"
    save_audio(path, np.array([[0.5, 2.0, -3.0], [0.0, 0.25, 0.0]], dtype=np.float32), 8000)
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    assert rate == 8000 and data.shape == (3, 2)
    np.testing.assert_allclose(data[:, 0], [0.5, 32767 / 32768, -1.0], atol=1 / 32768)


def test_save_audio_rejects_bad_requests(tmp_path):
    with pytest.raises(AudioError, match=r"\.wav suffix"):
        save_audio(tmp_path / "x.flac", torch.zeros(10), 16000)
    with pytest.raises(AudioError, match="NaN"):
        save_audio(tmp_path / "x.wav", torch.tensor([0.0, float("nan")]), 16000)
    with pytest.raises(AudioError, match="non-empty"):
        save_audio(tmp_path / "x.wav", torch.zeros(0), 16000)
    assert not (tmp_path / "x.wav").exists()
