"""The streaming detector's mechanics, checked exactly against a model whose answers are known.

`ToneBackend` stands in for a keyword model: "low" is a 500 Hz tone, "high" a
1500 Hz tone, and its logits grow with how much of a tone burst the window
holds. So the posteriors of every window can be computed by hand, and the
detector's hops, smoothing, thresholds and refractory period checked to the
sample. (tests/test_stream.py runs the same detector on a trained model.)
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgeast.runtime.detector import DetectorError, DetectorThread, StreamingDetector, softmax
from edgeast.runtime.files import stream_audio
from conftest import SR, ToneBackend, stream



def push_in_chunks(detector: StreamingDetector, audio: np.ndarray, sizes: list[int]):
    found, pos, i = [], 0, 0
    while pos < len(audio):
        n = sizes[i % len(sizes)]
        found += detector.push(audio[pos:pos + n])
        pos, i = pos + n, i + 1
    return found


def test_detection_fires_on_the_first_window_holding_the_whole_burst():
    detector = StreamingDetector(ToneBackend(), smoothing_hops=1, thresholds={"low": 0.95, "high": 0.95})
    found = detector.push(stream(5.0, [("low", 2.05)]))
    # Windows end every 100 ms from 1.0 s; the burst is 2.05-2.35 s, whole from the window ending at 2.4 s.
    assert [(d.keyword, d.start_s, d.end_s) for d in found] == [("low", pytest.approx(1.4), pytest.approx(2.4))]
    assert found[0].score == pytest.approx(softmax(np.array([8.0, 0, 4, 0]))[0], abs=1e-3)
    assert detector.stats.windows_run == (5 * SR - SR) // 1600 + 1


def test_any_chunk_sizes_give_the_same_detections_and_windows():
    audio = stream(4.0, [("high", 1.2), ("low", 2.9)])
    results = []
    for sizes in ([len(audio)], [1600], [1], [137, 3001, 7], [16000, 5]):
        detector = StreamingDetector(ToneBackend())
        results.append((push_in_chunks(detector, audio, sizes), detector.stats.windows_run, detector.time_s))
    assert all(r == results[0] for r in results)
    assert [d.keyword for d in results[0][0]] == ["high", "low"]
    assert results[0][1] == 31 and results[0][2] == pytest.approx(4.0)


def test_smoothing_averages_the_softmax_of_the_last_hops():
    backend = ToneBackend()
    detector = StreamingDetector(backend, smoothing_hops=3)
    audio = stream(3.0, [("low", 1.3)])
    seen = []
    detector.push(audio, on_window=lambda t, s: seen.append((t, s.copy())))
    raw = []
    for t, _ in seen:
        end = round(t * SR)
        raw.append(softmax(backend.infer(audio[end - SR:end])))
    for i, (_, smoothed) in enumerate(seen):
        np.testing.assert_allclose(smoothed, np.mean(raw[max(0, i - 2):i + 1], axis=0), atol=1e-6)


def test_smoothing_delays_a_detection_by_whole_hops():
    audio = stream(4.0, [("low", 2.05)])
    ends = {}
    for hops in (1, 3):
        detector = StreamingDetector(ToneBackend(), smoothing_hops=hops, thresholds={"low": 0.95})
        (det,) = detector.push(audio)
        ends[hops] = det.end_s
    # "low" by window end: 2.2 s holds 4/6 of the burst (p = 0.785), 2.3 s 5/6 (0.933), 2.4 s and on all (0.981).
    # Alone, 2.4 s is the first >= 0.95; the mean of 3 hops is 0.900 at 2.4 s and 0.965 at 2.5 s.
    assert ends[1] == pytest.approx(2.4) and ends[3] == pytest.approx(2.5)


def ends(found) -> list[tuple[str, float]]:
    return [(d.keyword, round(d.end_s, 3)) for d in found]


def test_one_burst_fires_once_and_the_refractory_period_holds_every_keyword():
    # The 1.5-1.8 s burst is whole in the windows ending 1.8 .. 2.5 s; at 2.6 s "low" drops below 0.8.
    once = stream(4.0, [("low", 1.5)])
    assert ends(StreamingDetector(ToneBackend(), smoothing_hops=1, refractory_s=0.3).push(once)) == [("low", 1.8)]
    # A second burst (2.9-3.2 s) fires once the first has left the window, or when the refractory period ends.
    twice = stream(5.0, [("low", 1.5), ("low", 2.9)])
    assert ends(StreamingDetector(ToneBackend(), smoothing_hops=1, refractory_s=0.3).push(twice)) == [
        ("low", 1.8), ("low", 3.2)]
    assert ends(StreamingDetector(ToneBackend(), smoothing_hops=1, refractory_s=2.0).push(twice)) == [
        ("low", 1.8), ("low", 3.8)]
    # The refractory period holds other keywords too: "high" (2.0-2.3 s, whole until 3.0 s) waits for 2.8 s.
    both = stream(4.0, [("low", 1.5), ("high", 2.0)])
    assert ends(StreamingDetector(ToneBackend(), smoothing_hops=1, refractory_s=1.0).push(both)) == [
        ("low", 1.8), ("high", 2.8)]


def test_thresholds_can_change_while_streaming_from_another_thread():
    detector = StreamingDetector(ToneBackend(), smoothing_hops=1)
    bursts = stream(2.0, [("low", 0.6)])
    assert len(detector.push(bursts)) == 1
    stop = threading.Event()

    def toggle():
        while not stop.is_set():
            detector.set_threshold("low", 0.99)
            detector.set_threshold("low", 0.5)

    thread = threading.Thread(target=toggle)
    thread.start()
    for _ in range(20):
        detector.push(bursts)
    stop.set()
    thread.join()
    detector.set_threshold("low", 1.0)  # nothing reaches 1.0
    assert detector.push(bursts) == []
    assert detector.thresholds == {"low": 1.0, "high": 0.8}
    detector.set_threshold("low", 0.5)
    assert [d.keyword for d in detector.push(bursts)] == ["low"]


def test_bad_settings_and_chunks_raise_one_clear_error():
    detector = StreamingDetector(ToneBackend())
    with pytest.raises(DetectorError, match="not a keyword of this model"):
        detector.set_threshold("_unknown_", 0.5)
    with pytest.raises(DetectorError, match=r"probability in \[0, 1\]"):
        detector.set_threshold("low", 1.5)
    with pytest.raises(DetectorError, match="expected mono"):
        detector.push(np.zeros((100, 2), np.float32))
    with pytest.raises(DetectorError, match="float32 or int16"):
        detector.push(np.zeros(100, np.int32))
    with pytest.raises(DetectorError, match="fixed 1 s windows"):
        StreamingDetector(ToneBackend(), window_s=0.5)
    with pytest.raises(DetectorError, match="hop must be positive"):
        StreamingDetector(ToneBackend(), hop_s=2.0)


def test_int16_input_is_the_same_audio_as_float():
    audio = stream(3.0, [("high", 1.2)])
    pcm = np.round(audio * 32768).clip(-32768, 32767).astype(np.int16)
    as_float = StreamingDetector(ToneBackend()).push(pcm.astype(np.float32) / 32768)
    as_int = StreamingDetector(ToneBackend()).push(pcm[:, None])  # [n, 1] as sounddevice gives
    assert as_int == as_float and len(as_int) == 1


def test_vad_gate_skips_silent_windows_and_keeps_the_detections():
    audio = stream(20.0, [("low", 5.0), ("high", 15.0)])
    plain_backend, gated_backend = ToneBackend(), ToneBackend()
    plain = StreamingDetector(plain_backend).push(audio)
    gated = StreamingDetector(gated_backend, vad_threshold_db=-40.0)
    found = gated.push(audio)
    assert found == plain and [d.keyword for d in found] == ["low", "high"]
    stats = gated.stats
    # A 0.3 s burst overlaps the 12 windows ending 0.1 .. 1.2 s after its start; the rest is -70 dB noise.
    assert stats.windows_run == 2 * 12 == gated_backend.calls
    assert stats.windows_skipped == 191 - 24 and plain_backend.calls == 191


def test_reset_starts_the_stream_over():
    detector = StreamingDetector(ToneBackend())
    audio = stream(3.0, [("low", 1.2)])
    first = detector.push(audio)
    detector.reset()
    assert detector.time_s == 0 and detector.stats.windows_run == 0
    assert detector.push(audio) == first


def test_a_clip_shorter_than_a_window_is_centred_and_reported_on_its_own_timeline():
    detector = StreamingDetector(ToneBackend(), smoothing_hops=1)
    clip = stream(0.5, [("high", 0.1)], noise_db=-90)
    (det,) = stream_audio(detector, clip)
    # 0.25 s of silence before the clip: the first window spans -0.25 .. 0.75 s of the clip
    assert (det.keyword, det.start_s, det.end_s) == ("high", pytest.approx(-0.25), pytest.approx(0.75))
    assert detector.stats.windows_run == 1 + 1  # the window, then a smoothing tail of one hop


class BlockingBackend(ToneBackend):
    """Holds inference until released, as a very slow model would."""

    def __init__(self):
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def infer(self, window):
        self.entered.set()
        self.release.wait()
        return super().infer(window)


def test_detector_thread_drops_and_counts_chunks_instead_of_blocking_the_callback():
    backend = BlockingBackend()
    worker = DetectorThread(StreamingDetector(backend), max_chunks=10).start()
    chunks = [np.zeros(1600, np.float32)] * 23
    assert all(worker.submit(c) for c in chunks[:10])  # one window: the worker takes them all, then blocks
    assert backend.entered.wait(10)
    accepted = [worker.submit(c) for c in chunks[10:]]  # 10 fit in the queue; the rest return at once
    assert accepted == [True] * 10 + [False] * 3 and worker.dropped == 3
    backend.release.set()
    worker.stop()
    assert worker.error is None and worker.detector.stats.windows_run == 1 + 10


def test_detector_thread_delivers_the_same_detections_as_push():
    audio = stream(6.0, [("low", 1.0), ("high", 3.5)])
    expected = StreamingDetector(ToneBackend()).push(audio)
    found = []
    worker = DetectorThread(StreamingDetector(ToneBackend()), max_chunks=1000, on_detection=found.append).start()
    for i in range(0, len(audio), 800):
        assert worker.submit(audio[i:i + 800])
    worker.stop()
    assert found == expected and worker.dropped == 0
