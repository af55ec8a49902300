"""Wake-word metrics on long streams: misses at a fixed false-alarm rate.

Clip accuracy says little about an always-on detector. On the benchmark
streams of `benchmark_stream.py`, a detection counts as a hit from the
keyword's start to 0.5 s after its end, and the miss rate is read off at a
fixed false-alarm rate (1 per 10 hours, 1 per hour).

`score_stream` runs the real streaming detector once and keeps the smoothed
score of every hop; every threshold is then evaluated offline by replaying
the detector's decision rule (threshold, best keyword, refractory period) on
those scores, which gives exactly the detections a live detector with that
threshold would make, without running the model again. `sweep` gives the
miss rate against false accepts per hour (the DET curve), `calibrate`
per-keyword thresholds for a target rate, and `eval_stream` does it all.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeast.export.metadata import ArtifactMeta
from edgeast.runtime.benchmark_stream import KeywordEvent, StreamConfig, StreamEvalError, build_test_streams
from edgeast.runtime.detector import Backend, StreamingDetector
from edgeast.runtime.files import stream_audio

HIT_TOLERANCE_S = 0.5  # a detection up to this long after the keyword's end still counts
TARGETS_FA_PER_HOUR = (1.0, 0.1)
THRESHOLDS = np.unique(np.concatenate([np.linspace(0.02, 0.98, 49), 1.0 - np.logspace(-1.7, -5, 12)]))


@dataclass
class ScoreTrack:
    """The smoothed keyword scores of every hop of one stream, as the live detector saw them."""

    keywords: list[str]
    ends: np.ndarray  # [hops] int: stream sample at which each hop's window ends
    scores: np.ndarray  # [hops, keywords] float32 smoothed posteriors
    sample_rate: int
    num_samples: int
    refractory_samples: int

    @property
    def hours(self) -> float:
        return self.num_samples / self.sample_rate / 3600


def score_stream(detector: StreamingDetector, audio: np.ndarray, chunk_s: float = 0.5) -> ScoreTrack:
    """Run `detector` over `audio` once (from a reset) and keep every hop's smoothed keyword scores."""
    if len(audio) < detector.window_samples:
        raise StreamEvalError(f"a test stream of {len(audio)} samples is shorter than one window; make it longer")
    detector.reset()
    total = len(audio) + detector.smoothing_hops * detector.hop_samples  # what stream_audio pushes
    hops = (total - detector.window_samples) // detector.hop_samples + 1
    ends = np.zeros(hops, np.int64)
    scores = np.zeros((hops, len(detector.keyword_ids)), np.float32)
    count = 0

    def keep(end_s: float, smoothed: np.ndarray) -> None:
        nonlocal count
        ends[count] = round(end_s * detector.sample_rate)
        scores[count] = smoothed[detector.keyword_ids]
        count += 1

    stream_audio(detector, audio, chunk_s=chunk_s, on_window=keep)
    return ScoreTrack([detector.labels[i] for i in detector.keyword_ids], ends[:count], scores[:count],
                      detector.sample_rate, len(audio), detector.refractory_samples)


def replay(track: ScoreTrack, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The detections (hop indices, keyword indices) a live detector with `thresholds` [keywords] makes.

    The rule is the detector's: at a hop outside the refractory period, among
    the keywords at or above their threshold and armed (not fired since their
    score was last below it), the one with the largest margin fires.
    """
    margin = track.scores - np.asarray(thresholds, np.float64)[None, :]
    above = margin >= 0
    hops, k = above.shape
    # next_below[h, j]: the first hop >= h at which keyword j is below its threshold (hops if none).
    below_at = np.where(~above, np.arange(hops)[:, None], hops)
    next_below = np.vstack([np.minimum.accumulate(below_at[::-1], axis=0)[::-1], np.full((1, k), hops)])
    candidates = np.flatnonzero(above.any(axis=1))
    candidate_ends = track.ends[candidates]
    last_fire = np.full(k, -1)
    fired_hops, fired_kws = [], []
    i = 0
    while i < len(candidates):
        hop = candidates[i]
        rearmed = next_below[last_fire + 1, np.arange(k)] < hop
        eligible = above[hop] & ((last_fire < 0) | rearmed)
        if not eligible.any():
            i += 1
            continue
        best = int(np.argmax(np.where(eligible, margin[hop], -np.inf)))
        fired_hops.append(hop)
        fired_kws.append(best)
        last_fire[best] = hop
        i = int(np.searchsorted(candidate_ends, track.ends[hop] + track.refractory_samples, side="left"))
    return np.array(fired_hops, np.int64), np.array(fired_kws, np.int64)


def match(track: ScoreTrack, hops: np.ndarray, kws: np.ndarray, events: list[KeywordEvent],
          tolerance_s: float = HIT_TOLERANCE_S) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(hit per event [events] bool, false accepts per keyword [keywords], latencies of the hits in s).

    A detection at time t (its window's end) hits a not yet hit event of the
    same keyword with start <= t <= end + tolerance; any other detection is a
    false accept. Latency is t minus the keyword's end. `events` are in time order.
    """
    starts = np.array([e.start_s for e in events])
    ends = np.array([e.end_s for e in events])
    longest = float((ends - starts).max()) if events else 0.0
    hit = np.zeros(len(events), bool)
    false = np.zeros(len(track.keywords), np.int64)
    latencies: list[float] = []
    for hop, k in zip(hops, kws):
        t = track.ends[hop] / track.sample_rate
        j = int(np.searchsorted(starts, t, side="right")) - 1  # the last event that started by t
        while j >= 0 and starts[j] >= t - longest - tolerance_s:
            if not hit[j] and events[j].keyword == track.keywords[k] and t <= ends[j] + tolerance_s:
                hit[j] = True
                latencies.append(t - ends[j])
                break
            j -= 1
        else:
            false[k] += 1
    return hit, false, latencies


@dataclass
class OperatingPoint:
    target_fa_per_hour: float
    threshold: float
    miss_rate: float
    fa_per_hour: float
    false_accepts: int
    latency_median_s: float  # detection time minus keyword end, over the hits
    resolved: bool  # the audio is long enough to observe one false accept at the target rate


@dataclass
class StreamEval:
    keywords: list[str]
    keyword_stream_s: float
    background_stream_s: float
    events: int
    thresholds: list[float]
    miss_rate: list[float]  # per threshold
    fa_per_hour: list[float]  # per threshold, false accepts in both streams per hour of both
    operating_points: list[OperatingPoint]
    calibrated: dict[str, float] = field(default_factory=dict)  # per-keyword thresholds for target_fa_per_hour
    target_fa_per_hour: float = 1.0

    @property
    def hours(self) -> float:
        return (self.keyword_stream_s + self.background_stream_s) / 3600

    def point(self, target_fa_per_hour: float) -> OperatingPoint:
        return next(p for p in self.operating_points if p.target_fa_per_hour == target_fa_per_hour)

    def to_markdown(self) -> str:
        lines = [f"keywords {', '.join(self.keywords)}: {self.events} keyword events in "
                 f"{self.keyword_stream_s / 60:.1f} min of speech, plus {self.background_stream_s / 60:.1f} min "
                 f"without keywords ({self.hours:.2f} h for false accepts)", "",
                 "| target FA/h | threshold | miss rate | FA/h seen | FA | latency median | resolved |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for p in self.operating_points:
            latency = "n/a" if math.isnan(p.latency_median_s) else f"{p.latency_median_s * 1000:.0f} ms"
            lines.append(f"| {p.target_fa_per_hour:g} | {p.threshold:.4f} | {p.miss_rate:.1%} | "
                         f"{p.fa_per_hour:.2f} | {p.false_accepts} | {latency} | {'yes' if p.resolved else 'no'} |")
        if not all(p.resolved for p in self.operating_points):
            lines += ["", f"Rows marked 'no': {self.hours:.2f} h of audio cannot show such a low rate (one false "
                          "accept would already exceed it); they give the miss rate at the lowest threshold with "
                          "no false accept at all, an optimistic bound. Longer streams resolve them."]
        if self.calibrated:
            lines += ["", f"calibrated thresholds for {self.target_fa_per_hour:g} FA/h: "
                          + ", ".join(f"{k} {v:.4f}" for k, v in self.calibrated.items())]
        return "\n".join(lines)


def sweep(keyword_track: ScoreTrack, background_track: ScoreTrack, events: list[KeywordEvent],
          thresholds: np.ndarray = THRESHOLDS, targets: tuple[float, ...] = TARGETS_FA_PER_HOUR) -> StreamEval:
    """Miss rate and false accepts per hour at every threshold (one threshold for all keywords)."""
    hours = keyword_track.hours + background_track.hours
    k = len(keyword_track.keywords)
    miss, fa, counts, latencies = [], [], [], []
    for theta in thresholds:
        hit, false_kw, lat = match(keyword_track, *replay(keyword_track, np.full(k, theta)), events)
        _, false_bg, _ = match(background_track, *replay(background_track, np.full(k, theta)), [])
        counts.append(int(false_kw.sum() + false_bg.sum()))
        miss.append(float(1.0 - hit.mean()) if events else 0.0)
        fa.append(counts[-1] / hours)
        latencies.append(float(np.median(lat)) if lat else math.nan)
    points = []
    for target in targets:
        i = next((i for i, rate in enumerate(fa) if rate <= target), len(thresholds) - 1)
        points.append(OperatingPoint(target, float(thresholds[i]), miss[i], fa[i], counts[i], latencies[i],
                                     resolved=hours * target >= 1.0))
    return StreamEval(list(keyword_track.keywords), keyword_track.num_samples / keyword_track.sample_rate,
                      background_track.num_samples / background_track.sample_rate, len(events),
                      [float(t) for t in thresholds], miss, fa, points)


def calibrate(keyword_track: ScoreTrack, background_track: ScoreTrack, events: list[KeywordEvent],
              target_fa_per_hour: float, thresholds: np.ndarray = THRESHOLDS) -> dict[str, float]:
    """Per-keyword thresholds that keep all keywords together within `target_fa_per_hour`.

    Each keyword, replayed alone (the others off), gets the lowest threshold at
    which its own false accepts stay within target / keywords per hour; if
    none does, the highest threshold tried.
    """
    hours = keyword_track.hours + background_track.hours
    k = len(keyword_track.keywords)
    chosen = {}
    for j, keyword in enumerate(keyword_track.keywords):
        chosen[keyword] = float(thresholds[-1])
        for theta in thresholds:
            only = np.full(k, np.inf, np.float32)
            only[j] = theta
            false = (match(keyword_track, *replay(keyword_track, only), events)[1][j]
                     + match(background_track, *replay(background_track, only), [])[1][j])
            if false / hours <= target_fa_per_hour / k:
                chosen[keyword] = float(theta)
                break
    return chosen


def plot_det(result: StreamEval, path: str | Path) -> None:
    """DET curve: miss rate against false accepts per hour, the operating points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(result.fa_per_hour, np.array(result.miss_rate) * 100, "-o", ms=2.5, lw=1.2, label="all keywords")
    for p in result.operating_points:
        ax.plot([p.fa_per_hour], [p.miss_rate * 100], "s", ms=7, mfc="none",
                label=f"{p.target_fa_per_hour:g} FA/h target: miss {p.miss_rate:.1%}" + ("" if p.resolved else " (unresolved)"))
    ax.set_xscale("symlog", linthresh=1.0 / max(result.hours, 1e-9))
    ax.set_xlim(left=0)
    ax.set_xlabel("false accepts per hour")
    ax.set_ylabel("miss rate (%)")
    ax.set_title(f"DET, {result.events} keywords, {result.hours:.2f} h of audio", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sidecar_path(artifact: str | Path) -> Path:
    """The `model.json` that `open_backend` reads for a `.pte`/`.onnx` file."""
    path = Path(artifact)
    if path.is_dir():
        raise StreamEvalError(f"{path}: a checkpoint has no sidecar to hold thresholds; export it "
                              "(`edgeast export`) and calibrate the exported model")
    for candidate in (path.with_suffix(".json"), path.parent / "model.json"):
        if candidate.is_file():
            return candidate
    raise StreamEvalError(f"{path}: no metadata sidecar beside it (model.json); re-export the model")


def write_thresholds(artifact: str | Path, thresholds: dict[str, float]) -> Path:
    """Store per-keyword thresholds in the artifact's sidecar; returns the sidecar's path."""
    path = sidecar_path(artifact)
    meta = ArtifactMeta.load(path)
    unknown = sorted(set(thresholds) - set(meta.keywords()))
    if unknown:
        raise StreamEvalError(f"{path}: {unknown} are not keywords of this model ({meta.keywords()})")
    meta.thresholds = {**meta.thresholds, **thresholds}
    meta.save(path)
    return path


def eval_stream(
    artifact: str | Path | Backend,
    dataset: str | Path,
    out_dir: str | Path,
    *,
    cfg: StreamConfig = StreamConfig(),
    background: str | Path | None = None,
    target_fa_per_hour: float = 1.0,
    write_calibration: bool = False,
    vad_threshold_db: float | None = None,
    save_streams: bool = False,
    num_threads: int | None = None,
) -> StreamEval:
    """The whole evaluation: build streams, score them once, sweep, calibrate, write the report.

    Writes `out_dir/report.json`, `report.md`, `det.png` (and the two streams as
    wav + events json with `save_streams`). With `write_calibration`, the
    thresholds for `target_fa_per_hour` go into the artifact's sidecar.
    """
    if write_calibration:
        sidecar_path(artifact if isinstance(artifact, (str, Path)) else artifact.path)  # fail before the long run
    detector = StreamingDetector(artifact, vad_threshold_db=vad_threshold_db, num_threads=num_threads)
    keywords = [detector.labels[i] for i in detector.keyword_ids]
    keyword_stream, background_stream = build_test_streams(dataset, keywords, cfg, sample_rate=detector.sample_rate,
                                                           background=background)
    keyword_track = score_stream(detector, keyword_stream.audio)
    background_track = score_stream(detector, background_stream.audio)
    targets = tuple(sorted({*TARGETS_FA_PER_HOUR, target_fa_per_hour}, reverse=True))
    result = sweep(keyword_track, background_track, keyword_stream.events, targets=targets)
    result.target_fa_per_hour = target_fa_per_hour
    result.calibrated = calibrate(keyword_track, background_track, keyword_stream.events, target_fa_per_hour)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(asdict(result), indent=1))
    (out / "report.md").write_text(result.to_markdown() + "\n")
    plot_det(result, out / "det.png")
    if save_streams:
        keyword_stream.save(out / "keyword_stream.wav")
        background_stream.save(out / "background_stream.wav")
    if write_calibration:
        write_thresholds(artifact if isinstance(artifact, (str, Path)) else artifact.path, result.calibrated)
    return result
