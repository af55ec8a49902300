"""The streaming detector over audio files, as fast as possible or paced in real time.

Each file is its own stream (the detector is reset between files, times are
seconds from the file's start). The file is pushed in small chunks exactly as
a microphone would deliver it, then followed by a little silence so a keyword
at the very end still gets its full smoothing. A file that cannot be read is
skipped, counted and named on stderr; the run goes on.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, TextIO

import numpy as np

from edgeast.audio.io import AudioError, load_audio
from edgeast.runtime.detector import Backend, Detection, DetectorStats, StreamingDetector, WindowHook
from edgeast.runtime.detector_options import DetectorOptions

SILENCE_RMS = 2.0 ** -15  # one 16-bit step


@dataclass
class StreamReport:
    detections: dict[str, list[Detection]] = field(default_factory=dict)  # file -> detections, input order
    skipped: list[str] = field(default_factory=list)  # files that could not be read
    audio_s: float = 0.0
    processing_s: float = 0.0
    windows_run: int = 0
    windows_skipped: int = 0

    @property
    def real_time_factor(self) -> float:
        """Processing time per second of audio (below 1: faster than real time)."""
        return self.processing_s / self.audio_s if self.audio_s else 0.0

    def all_detections(self) -> list[Detection]:
        return [d for dets in self.detections.values() for d in dets]


def stream_audio(
    detector: StreamingDetector,
    audio: np.ndarray,
    *,
    chunk_s: float = 0.1,
    realtime: bool = False,
    tail_s: float | None = None,
    on_detection: Callable[[Detection], None] | None = None,
    on_window: WindowHook | None = None,
) -> list[Detection]:
    """Push one waveform through `detector` (from its current state) chunk by chunk.

    A waveform shorter than one window is centred in a window of silence (a
    keyword clip sits mid-window in training too) and its detections are
    reported on its own timeline; then `tail_s` of silence follow (default:
    the smoothing span) so a keyword at the very end gets its full smoothing.
    The silence is noise at the level of one 16-bit step, not digital zeros:
    no microphone gives exact zeros, and a model that never heard them can
    call them anything. With `realtime`, each chunk is pushed no earlier than
    its time in the stream.
    """
    sr = detector.sample_rate
    lead = max(0, detector.window_samples - len(audio)) // 2
    tail = detector.smoothing_hops * detector.hop_samples if tail_s is None else round(tail_s * sr)
    padded = max(len(audio), detector.window_samples)
    total = padded + tail
    chunk = max(1, round(chunk_s * sr))
    silence = (np.random.default_rng(0).standard_normal(chunk) * SILENCE_RMS).astype(np.float32)
    scratch = np.empty(chunk, dtype=np.float32)  # the chunks that run past the audio into silence
    found: list[Detection] = []
    start = time.monotonic()
    for pos in range(0, total, chunk):
        n = min(chunk, total - pos)
        if lead == 0 and pos + n <= len(audio):
            piece = audio[pos:pos + n]
        else:  # audio[i] sits at stream sample lead + i
            scratch[:] = silence
            lo, hi = max(pos, lead), min(pos + n, lead + len(audio))
            if lo < hi:
                scratch[lo - pos:hi - pos] = audio[lo - lead:hi - lead]
            piece = scratch[:n]
        if realtime:
            delay = start + (pos + n) / sr - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        for det in detector.push(piece, on_window=on_window):
            if lead:
                det = replace(det, start_s=det.start_s - lead / sr, end_s=det.end_s - lead / sr)
            found.append(det)
            if on_detection is not None:
                on_detection(det)
    return found


def stream_files(
    artifact: str | Path | Backend,
    files: Iterable[str | Path],
    *,
    realtime: bool = False,
    json_lines: bool = False,
    out: TextIO = sys.stdout,
    options: DetectorOptions = DetectorOptions(),
    chunk_s: float = 0.1,
) -> StreamReport:
    """Run a detector with `options` over each file; with `json_lines`, print one JSON object per detection.

    A line is `{"file": ..., "keyword": ..., "score": ..., "start_s": ..., "end_s": ...}`;
    without `json_lines` a readable line per detection is printed instead.
    """
    detector = options.build(artifact)
    report = StreamReport()
    for path in map(str, files):
        try:
            audio = load_audio(path, detector.sample_rate).numpy()
        except AudioError as err:
            report.skipped.append(path)
            print(f"skipped: {err}", file=sys.stderr)
            continue

        def emit(det: Detection, path: str = path) -> None:
            if json_lines:
                out.write(json.dumps({"file": path, **det.to_dict()}) + "\n")
            else:
                out.write(f"{path}  {det.start_s:8.2f}-{det.end_s:.2f} s  {det.keyword}  {det.score:.2f}\n")
            out.flush()

        detector.reset()
        t0 = time.perf_counter()
        report.detections[path] = stream_audio(detector, audio, chunk_s=chunk_s, realtime=realtime, on_detection=emit)
        report.processing_s += time.perf_counter() - t0
        report.audio_s += len(audio) / detector.sample_rate
        stats: DetectorStats = detector.stats
        report.windows_run += stats.windows_run
        report.windows_skipped += stats.windows_skipped
    return report
