"""Wake-word metrics: test streams, offline threshold replay, miss rate at a false-alarm rate, calibration."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgeast.export.exporter import export_model
from edgeast.export.metadata import ArtifactMeta
from edgeast.models.checkpoint import load_model
from edgeast.runtime.backends import open_backend
from edgeast.runtime.benchmark_stream import KeywordEvent, StreamConfig, StreamEvalError, build_test_streams
from edgeast.runtime.detector import StreamingDetector
from edgeast.runtime.wakeword_metrics import (
    ScoreTrack, calibrate, eval_stream, match, replay, score_stream, sweep, write_thresholds,
)
from conftest import KEYWORDS, SR, ToneBackend, stream


def test_replay_makes_exactly_the_detections_of_a_live_detector():
    """Scoring once and replaying a threshold equals running the detector with that threshold."""
    bursts = [("low", 1.0), ("high", 1.5), ("low", 4.0), ("low", 4.7), ("high", 8.0), ("high", 8.2), ("low", 12.0)]
    audio = stream(15.0, bursts)
    for smoothing, refractory in ((1, 1.0), (3, 0.5), (2, 2.0)):
        track = score_stream(StreamingDetector(ToneBackend(), smoothing_hops=smoothing, refractory_s=refractory), audio)
        for threshold in (0.3, 0.6, 0.8, 0.95, 0.99):
            live = StreamingDetector(ToneBackend(), smoothing_hops=smoothing, refractory_s=refractory,
                                     thresholds={"low": threshold, "high": threshold})
            expected = [(d.keyword, round(d.end_s * SR)) for d in live.push(audio)]
            expected += [(d.keyword, round(d.end_s * SR)) for d in live.push(np.zeros(smoothing * 1600, np.float32))]
            hops, kws = replay(track, np.full(2, threshold))
            assert [(track.keywords[k], int(track.ends[h])) for h, k in zip(hops, kws)] == expected


def hand_track(peaks: list[tuple[str, float, float]], seconds: float = 360.0) -> ScoreTrack:
    """Scores of 0.05 everywhere except one hop per (keyword, time, score); hop 0.1 s, refractory 1 s."""
    ends = np.arange(SR, int(seconds * SR) + 1, 1600)
    scores = np.full((len(ends), 2), 0.05, np.float32)
    for keyword, t, score in peaks:
        scores[int(np.argmin(np.abs(ends - t * SR))), ["a", "b"].index(keyword)] = score
    return ScoreTrack(["a", "b"], ends, scores, SR, int(seconds * SR), SR)


def test_sweep_counts_hits_misses_false_accepts_and_latency():
    events = [KeywordEvent("a", 10.0, 10.4), KeywordEvent("b", 100.0, 100.2), KeywordEvent("b", 150.0, 150.3)]
    keyword_track = hand_track([("a", 10.5, 0.9),  # hit 0.1 s after the end
                                ("a", 50.0, 0.7),  # no event: false accept
                                ("b", 100.6, 0.6),  # 0.4 s after the end: a hit
                                ("a", 150.2, 0.95),  # inside the b event but the wrong keyword: false accept
                                ("b", 151.0, 0.97)])  # 0.7 s after the end: too late, false accept
    background_track = hand_track([("b", 30.0, 0.5), ("a", 200.0, 0.98)])
    result = sweep(keyword_track, background_track, events, thresholds=np.array([0.4, 0.65, 0.8, 0.96, 0.99]),
                   targets=(50.0, 10.0))
    hours = 720 / 3600
    assert result.events == 3 and result.hours == pytest.approx(hours)
    # threshold: hits / false accepts (a@150.2 starts a 1 s refractory period that hides b@151)
    # 0.40: a@10, b@100 / a@50, a@150.2, b@30, a@200
    # 0.65: a@10 / a@50, a@150.2, a@200;   0.80: a@10 / a@150.2, a@200
    # 0.96: - / b@151, a@200;   0.99: - / -
    assert result.miss_rate == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1.0, 1.0])
    assert result.fa_per_hour == pytest.approx([4 / hours, 3 / hours, 2 / hours, 2 / hours, 0.0])
    p50, p10 = result.operating_points
    assert (p50.threshold, p50.false_accepts, p50.resolved) == (0.4, 4, True)  # 20 FA/h <= 50
    assert p50.latency_median_s == pytest.approx((0.1 + 0.4) / 2, abs=1e-6)
    assert (p10.threshold, p10.false_accepts, p10.resolved) == (0.8, 2, True) and p10.miss_rate == pytest.approx(2 / 3)
    assert p10.latency_median_s == pytest.approx(0.1, abs=1e-6)
    nothing = sweep(keyword_track, background_track, events, thresholds=np.array([0.99]), targets=(10.0,))
    assert math.isnan(nothing.operating_points[0].latency_median_s)  # no hit, no latency
    unresolved = sweep(keyword_track, background_track, events, targets=(1.0,)).operating_points[0]
    assert not unresolved.resolved and unresolved.false_accepts == 0  # 0.2 h cannot show 1 FA/h
    assert "cannot show such a low rate" in sweep(keyword_track, background_track, events, targets=(1.0,)).to_markdown()


def test_calibration_gives_each_keyword_its_share_of_the_false_accept_budget():
    events = [KeywordEvent("a", 10.0, 10.4), KeywordEvent("b", 100.0, 100.2)]
    keyword_track = hand_track([("a", 10.5, 0.9), ("a", 50.0, 0.7), ("b", 100.6, 0.6), ("a", 150.2, 0.95),
                                ("b", 151.0, 0.97)])
    background_track = hand_track([("b", 30.0, 0.5), ("a", 200.0, 0.98)])
    # 10 FA/h over 0.2 h for 2 keywords: at most one false accept each.
    # a: false peaks 0.7, 0.95, 0.98 -> lowest grid threshold above 0.95 is 0.96; b: false 0.5, 0.97 -> 0.52.
    assert calibrate(keyword_track, background_track, events, 10.0) == pytest.approx({"a": 0.96, "b": 0.52})


def test_match_gives_each_event_at_most_one_hit():
    track = hand_track([("a", 10.2, 0.9), ("a", 11.3, 0.9)])  # two detections, 1.1 s apart, one event
    hit, false, latencies = match(track, *replay(track, np.array([0.5, 0.5])), [KeywordEvent("a", 10.0, 10.9)])
    assert hit.tolist() == [True] and false.tolist() == [1, 0] and latencies == pytest.approx([10.2 - 10.9])


def test_test_streams_hold_held_out_keywords_at_known_times_in_speech_and_noise(trained_model):
    cfg = StreamConfig(keyword_minutes=1.0, background_minutes=0.5, snr_db=10.0, speech_db=-24.0, seed=3)
    keyword_stream, background = build_test_streams(trained_model.dataset, list(KEYWORDS), cfg)
    assert keyword_stream.duration_s == pytest.approx(60.0) and background.duration_s == pytest.approx(30.0)
    assert background.events == [] and len(keyword_stream.events) >= 8
    assert [e.keyword for e in keyword_stream.events[:6]] == list(KEYWORDS) * 2
    starts = [e.start_s for e in keyword_stream.events]
    assert starts == sorted(starts)
    assert all(b.start_s - a.end_s >= cfg.pause_s[0] for a, b in zip(keyword_stream.events, keyword_stream.events[1:]))
    audio = keyword_stream.audio
    for e in keyword_stream.events:  # each keyword is speech at about speech_db (+-3 dB jitter, + the noise)
        level = 10 * np.log10(np.mean(audio[int(e.start_s * SR):int(e.end_s * SR)] ** 2))
        assert -28.0 < level < -19.0
    # Noise sits at speech_db - snr_db: with the noise 10 dB above the speech, it is nearly all the power.
    loud_cfg = StreamConfig(keyword_minutes=0.2, background_minutes=0.5, snr_db=-10.0, speech_db=-24.0)
    loud = build_test_streams(trained_model.dataset, list(KEYWORDS), loud_cfg)[1]
    assert 10 * np.log10(np.mean(loud.audio.astype(np.float64) ** 2)) == pytest.approx(-14.0, abs=1.0)
    with pytest.raises(StreamEvalError, match="test split has no clips"):
        build_test_streams(trained_model.dataset, ["marvin"], cfg)


def test_eval_stream_reports_sweeps_plots_and_calibrates_an_onnx_export(trained_model, tmp_path):
    export_model(load_model(trained_model.checkpoint), tmp_path / "export", formats=("onnx",))
    onnx = tmp_path / "export" / "model.onnx"
    cfg = StreamConfig(keyword_minutes=1.5, background_minutes=1.5, snr_db=10.0, seed=0)
    result = eval_stream(onnx, trained_model.dataset, tmp_path / "eval", cfg=cfg, target_fa_per_hour=60.0,
                         write_calibration=True, num_threads=1)
    assert result.keywords == list(KEYWORDS) and result.hours == pytest.approx(3 / 60)
    assert result.events >= 10
    miss, fa = np.array(result.miss_rate), np.array(result.fa_per_hour)
    assert miss.min() < 0.7, "the tiny model finds some held-out keywords in speech at 10 dB SNR"
    assert fa[0] > fa[-1] == 0.0  # the lowest threshold accepts plenty, the highest nothing
    assert [p.target_fa_per_hour for p in result.operating_points] == [60.0, 1.0, 0.1]
    p60 = result.point(60.0)
    assert p60.resolved and p60.fa_per_hour <= 60.0 and not result.point(1.0).resolved

    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["calibrated"] == result.calibrated and report["events"] == result.events
    assert (tmp_path / "eval" / "det.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "0.05 h for false accepts" in (tmp_path / "eval" / "report.md").read_text()

    # The calibrated thresholds are in the sidecar, where the runtime reads them.
    meta = ArtifactMeta.load(tmp_path / "export" / "model.json")
    assert meta.thresholds == result.calibrated
    assert StreamingDetector(open_backend(onnx)).thresholds == result.calibrated
    with pytest.raises(StreamEvalError, match="not keywords of this model"):
        write_thresholds(onnx, {"_silence_": 0.5})
    with pytest.raises(StreamEvalError, match="export it"):
        write_thresholds(trained_model.checkpoint, {"yes": 0.5})
