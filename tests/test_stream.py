"""The streaming runtime over files and long streams, with a small model that really detects.

The model is conftest's `trained_model`: a tiny AST trained once per session,
enough to find held-out speakers' keywords in a stream.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from edgeast.audio.io import save_audio
from edgeast.runtime.detector import StreamingDetector
from edgeast.runtime.detector_options import DetectorOptions
from edgeast.runtime.files import stream_audio, stream_files
from conftest import SR, THRESHOLDS, detectable_clip, keyword_stream, matches


def test_stream_files_finds_the_keywords_in_place_and_skips_bad_files(trained_model, tmp_path):
    times = [1.0, 3.5, 6.0, 8.5, 11.0, 13.5]
    audio_a, truth_a = keyword_stream(trained_model, 15.0, times, seed=1)
    audio_b, truth_b = keyword_stream(trained_model, 15.0, times, seed=2)
    save_audio(tmp_path / "a.wav", audio_a, SR)
    save_audio(tmp_path / "b.wav", audio_b, SR)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    out = io.StringIO()
    files = [tmp_path / "a.wav", tmp_path / "broken.wav", tmp_path / "b.wav"]
    report = stream_files(trained_model.checkpoint, files, json_lines=True, out=out,
                          options=DetectorOptions(thresholds=THRESHOLDS))

    assert report.skipped == [str(tmp_path / "broken.wav")]
    assert list(report.detections) == [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(d["file"], d["keyword"], d["end_s"]) for d in lines] == [
        (f, d.keyword, round(d.end_s, 4)) for f, dets in report.detections.items() for d in dets]
    events = {str(tmp_path / "a.wav"): truth_a, str(tmp_path / "b.wav"): truth_b}
    hits = sum(any(matches(d, t) for d in report.detections[p]) for p in events for t in events[p])
    false = sum(not any(matches(d, t) for t in events[p]) for p in events for d in report.detections[p])
    assert hits >= 10 and false <= 2, f"{hits} of 12 keywords found, {false} false alarms"
    assert report.audio_s == pytest.approx(30.0, abs=0.01)
    assert report.windows_run == 2 * ((15 * SR + 3 * 1600 - SR) // 1600 + 1)


def test_realtime_pacing_gives_the_same_detections(trained_model, tmp_path):
    audio, truth = keyword_stream(trained_model, 2.0, [0.6], seed=3)
    save_audio(tmp_path / "short.wav", audio, SR)
    options = DetectorOptions(thresholds=THRESHOLDS)
    fast = stream_files(trained_model.checkpoint, [tmp_path / "short.wav"], out=io.StringIO(), options=options)
    paced = stream_files(trained_model.checkpoint, [tmp_path / "short.wav"], realtime=True, out=io.StringIO(),
                         options=options)
    assert fast.all_detections() == paced.all_detections()
    assert paced.processing_s >= 2.0  # paced: not before the audio's own time (a lower bound, never flaky)
    assert len(fast.all_detections()) == 1 and matches(fast.all_detections()[0], truth[0])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="RSS sampling reads /proc/self/statm (Linux)")
def test_one_hour_stream_keeps_memory_flat(trained_model):
    """An hour of mostly silent audio with a keyword every 30 s, through the VAD gate and the model."""
    clip = detectable_clip(trained_model, "yes")
    period = 30 * SR
    background = (np.random.default_rng(0).standard_normal(period) * 1e-4).astype(np.float32)  # -80 dBFS
    block = background.copy()
    block[5 * SR:5 * SR + len(clip)] += clip
    detector = StreamingDetector(trained_model.checkpoint, vad_threshold_db=-50.0, thresholds=THRESHOLDS)
    found = []
    rss = {}
    for i in range(120):  # 120 x 30 s = 1 h
        for pos in range(0, period, 1024):  # odd-sized chunks, as an audio callback would give
            found += detector.push(block[pos:pos + 1024])
        if i + 1 in (20, 120):  # end of minute 10 and of minute 60
            rss[i + 1] = _rss_bytes()
    stats = detector.stats
    assert stats.samples_seen == 3600 * SR
    assert stats.windows_run + stats.windows_skipped == (3600 * SR - SR) // 1600 + 1
    assert stats.windows_skipped > 30_000 and stats.windows_run > 1000  # both paths ran all along
    assert len(found) == 120 and {d.keyword for d in found} == {"yes"}
    assert [round(d.end_s - 30 * k, 3) for k, d in enumerate(found)] == [round(found[0].end_s, 3)] * 120
    assert rss[120] - rss[20] < 2 * 1024 * 1024, f"RSS grew by {(rss[120] - rss[20]) / 1e6:.1f} MB over 50 min of audio"


def test_detections_do_not_depend_on_chunk_size(trained_model):
    audio, truth = keyword_stream(trained_model, 8.0, [1.0, 3.5, 6.0], seed=5)
    runs = []
    for chunk_s in (0.1, 0.037, 1.3):
        detector = StreamingDetector(trained_model.checkpoint, thresholds=THRESHOLDS)
        runs.append(stream_audio(detector, audio, chunk_s=chunk_s))
    assert runs[0] == runs[1] == runs[2]
    assert sum(any(matches(d, t) for d in runs[0]) for t in truth) >= 2
