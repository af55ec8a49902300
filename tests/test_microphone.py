"""Live detection through real PortAudio capture, fed by a virtual PulseAudio microphone.

`bash .ci/setup-audio.sh` makes a null sink whose monitor is the default
source: what paplay plays into the sink, PortAudio's default input records.
The end-to-end test plays keywords into it and runs `listen` for real. The
resampler and clip saver are checked without any audio device.
"""

from __future__ import annotations

import ctypes.util
import io
import json
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile

from edgeast.audio.io import load_audio, save_audio
from edgeast.runtime.backends import open_backend
from edgeast.runtime.benchmark_stream import speech_bounds
from edgeast.runtime.detector import Detection
from edgeast.runtime.detector_options import DetectorOptions
from edgeast.runtime.files import stream_files
from edgeast.runtime.microphone import ClipSaver, MicrophoneError, StreamResampler, listen, list_devices
from conftest import SR, THRESHOLDS, TrainedModel, detectable_clip, matches

SETUP = "run `bash .ci/setup-audio.sh` (installs PulseAudio + libportaudio2 and starts a virtual microphone)"


def require_virtual_microphone() -> None:
    """Skip, naming what is missing, unless PortAudio records what paplay plays."""
    missing = [tool for tool in ("pulseaudio", "pactl", "paplay") if shutil.which(tool) is None]
    if ctypes.util.find_library("portaudio") is None:
        missing.append("libportaudio2")
    if missing:
        pytest.skip(f"no virtual microphone: {', '.join(missing)} not installed; {SETUP}")
    if subprocess.run(["pactl", "info"], capture_output=True).returncode != 0:
        pytest.skip(f"PulseAudio is installed but no daemon is running; {SETUP}")
    sink = subprocess.run(["pactl", "get-default-sink"], capture_output=True, text=True).stdout.strip()
    source = subprocess.run(["pactl", "get-default-source"], capture_output=True, text=True).stdout.strip()
    if source != f"{sink}.monitor":
        pytest.skip(f"the default source {source!r} does not record the default sink {sink!r}; {SETUP}")


@pytest.fixture(scope="module")
def model(request) -> TrainedModel:
    """conftest's `trained_model`, asked for only once the virtual microphone works."""
    require_virtual_microphone()  # before the training: a test that skips should skip at once
    return request.getfixturevalue("trained_model")


def alignment(recording: np.ndarray, played: np.ndarray) -> int:
    """Lag (samples) of `played` inside `recording`, by FFT cross-correlation."""
    n = 1 << int(np.ceil(np.log2(len(recording) + len(played))))
    corr = np.fft.irfft(np.fft.rfft(recording, n) * np.conj(np.fft.rfft(played, n)), n)
    lag = int(np.argmax(corr))
    return lag if lag < n // 2 else lag - n


def test_listen_detects_keywords_played_into_the_virtual_microphone(model, tmp_path):
    require_virtual_microphone()
    options = DetectorOptions(thresholds=THRESHOLDS)
    words = ["yes", "stop", "seven", "yes"]
    played = (np.random.default_rng(0).standard_normal(int(12.0 * SR)) * 1e-3).astype(np.float32)
    truth = []
    for i, word in enumerate(words):
        clip = detectable_clip(model, word)
        pos = int((1.5 + 2.5 * i) * SR)
        played[pos:pos + len(clip)] += clip
        start, end = speech_bounds(clip, SR)
        truth.append((word, (pos + start) / SR, (pos + end) / SR))
    save_audio(tmp_path / "played.wav", played, SR)

    runs = {
        "16k": dict(out=io.StringIO(), json_lines=True, record=tmp_path / "rec16.wav"),
        # The device is asked for 48 kHz (PulseAudio converts), so the detector thread resamples to 16 kHz.
        "48k": dict(out=io.StringIO(), live=True, capture_rate=48000, record=tmp_path / "rec48.wav",
                    save_detections=tmp_path / "clips"),
    }
    list_devices()  # the first use of PortAudio scans every ALSA device (seconds): do it before listening
    reports, threads = {}, []
    for name, kwargs in runs.items():
        backend = open_backend(model.checkpoint)  # loaded before listening, so capture starts at once
        threads.append(threading.Thread(target=lambda n=name, b=backend, k=kwargs: reports.__setitem__(
            n, listen(b, duration_s=len(played) / SR + 2.5, options=options, **k))))
        threads[-1].start()
        time.sleep(0.5)
    time.sleep(1.0)
    subprocess.run(["paplay", str(tmp_path / "played.wav")], check=True, timeout=60)
    for thread in threads:
        thread.join(timeout=60)
    assert set(reports) == {"16k", "48k"}, "a listen thread failed; see the captured output"

    for name, report in reports.items():
        recording = load_audio(runs[name]["record"]).numpy()
        lag = alignment(recording, played) / SR  # recording time of the played file's first sample
        assert 0 < lag and lag + len(played) / SR < report.audio_s, f"{name}: playback not inside the capture {lag} {report}"
        expected = [(word, start + lag, end + lag) for word, start, end in truth]
        found = report.detections
        assert len(found) == len(expected), f"{name}: {found} vs played {expected}"
        for det, event in zip(found, expected):  # right keyword, window around the word (+-300 ms)
            assert matches(det, event, slack_s=0.3), f"{name}: {det} vs played {event}"
        # The live path saw exactly the recorded samples: streaming the recording gives the same detections.
        offline = stream_files(open_backend(model.checkpoint), [runs[name]["record"]], options=options,
                               out=io.StringIO()).all_detections()
        assert [(d.keyword, d.start_s, d.end_s) for d in offline] == [(d.keyword, d.start_s, d.end_s) for d in found]
        assert report.stats.windows_run > 0 and report.overflows >= 0

    assert reports["16k"].capture_rate == 16000 and reports["48k"].capture_rate == 48000
    lines = [json.loads(line) for line in runs["16k"]["out"].getvalue().splitlines()]
    assert lines == [d.to_dict() for d in reports["16k"].detections]
    screen = runs["48k"]["out"].getvalue()
    for text in ("level", "top scores", "detections", "overflows", "Ctrl-C to stop", "yes", "stop", "seven"):
        assert text in screen
    clips = reports["48k"].clips_saved
    assert [p.name.split("_")[1] for p in clips] == words
    assert all(soundfile.info(str(p)).duration == pytest.approx(2.0, abs=0.01) for p in clips)  # window + 2 x 0.5 s


def test_list_devices_and_unknown_device_errors():
    require_virtual_microphone()
    devices = list_devices()
    assert any(d.is_default for d in devices) and all(d.channels > 0 for d in devices)
    assert "Hz" in str(devices[0])
    with pytest.raises(MicrophoneError, match="no audio input device 'no-such-mic'.*edgeast devices"):
        listen("unused", device="no-such-mic", duration_s=0.1)


def test_missing_portaudio_is_one_clear_error():
    code = ("import ctypes.util; ctypes.util.find_library = lambda name: None\n"
            "from edgeast.runtime.microphone import list_devices, MicrophoneError\n"
            "try:\n    list_devices()\nexcept MicrophoneError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("PortAudio library not found: install it (Debian/Ubuntu: sudo apt-get install "
                                 "libportaudio2; macOS: brew install portaudio)")


@pytest.mark.parametrize("rates", [(48000, 16000), (44100, 16000), (22050, 16000), (8000, 16000)])
def test_stream_resampler_is_block_size_independent_and_accurate(rates):
    in_rate, out_rate = rates
    rng = np.random.default_rng(0)
    x = rng.standard_normal(in_rate).astype(np.float32)
    whole = StreamResampler(in_rate, out_rate)(x)
    blocks, pos, resampler = [], 0, StreamResampler(in_rate, out_rate)
    while pos < len(x):
        n = int(rng.integers(1, 2000))
        blocks.append(resampler(x[pos:pos + n]))
        pos += n
    assert np.array_equal(np.concatenate(blocks), whole)
    assert len(whole) == pytest.approx(out_rate, abs=resampler.half_taps * out_rate / in_rate + 1)
    t = np.arange(2 * in_rate) / in_rate
    sine = StreamResampler(in_rate, out_rate)(np.sin(2 * np.pi * 440 * t).astype(np.float32))
    expected = np.sin(2 * np.pi * 440 * np.arange(len(sine)) / out_rate)
    assert np.abs(sine - expected)[200:].max() < 1e-3  # output k is the input at time k / out_rate
    above = StreamResampler(in_rate, out_rate)(np.sin(2 * np.pi * 0.55 * out_rate * t).astype(np.float32))
    if in_rate > out_rate:  # a tone above the new Nyquist is removed, not aliased
        assert np.sqrt(np.mean(above[200:] ** 2)) < 1e-3  # -57 dB; the kernel gives about -95 dB


def test_clip_saver_writes_window_plus_context_once_it_has_arrived(tmp_path):
    saver = ClipSaver(tmp_path, SR, window_samples=SR, context_s=0.5)
    ramp = (np.arange(5 * SR) / (5 * SR)).astype(np.float32)
    det = Detection("yes", 0.9, 2.0, 3.0)
    for i in range(0, 3 * SR, 1000):
        saver.feed(ramp[i:i + 1000])
    saver.add(det)
    assert list(saver.saved) == []  # the 0.5 s after the window has not arrived yet
    for i in range(3 * SR, 5 * SR, 1000):
        saver.feed(ramp[i:i + 1000])
    (path,) = saver.saved
    audio, rate = soundfile.read(str(path), dtype="float32")
    assert rate == SR and len(audio) == 2 * SR and path.name == "0001_yes_00002.00s.wav"
    np.testing.assert_allclose(audio, ramp[int(1.5 * SR):int(3.5 * SR)], atol=1 / 32768)
