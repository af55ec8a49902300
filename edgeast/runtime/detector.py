"""Streaming keyword detection over an unbounded PCM stream.

The model classifies one fixed window (1 s by default). A stream is covered by
sliding that window forward one hop (100 ms by default) at a time: each hop
runs the model once, the softmax posteriors of the last few hops are averaged
(smoothing removes one-window spikes), and a keyword fires when its smoothed
score reaches its threshold. One utterance gives one detection: after a
detection no keyword fires for a refractory period, and the keyword that
fired stays disarmed until its score has dropped below its threshold again
(a word stays in the sliding window for up to a second).

Everything the detector keeps is preallocated when it is built (the window
buffer, the posterior history), so memory stays flat however long it runs.
`DetectorThread` moves inference off an audio callback: the callback only
copies a chunk into a bounded queue and never waits.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from edgeast.export.metadata import ArtifactMeta


class DetectorError(ValueError):
    """A detector setting or an input chunk that cannot be used."""


class Backend(Protocol):
    """What the detector needs from a model: its metadata and one window in, logits out."""

    meta: ArtifactMeta

    def infer(self, window: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Detection:
    """A keyword found in the window [start_s, end_s] of the stream (seconds from its first sample)."""

    keyword: str
    score: float
    start_s: float
    end_s: float

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class DetectorStats:
    windows_run: int
    windows_skipped: int  # silent windows the energy gate kept from the model
    mean_infer_ms: float
    samples_seen: int


WindowHook = Callable[[float, np.ndarray], None]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max())
    return (z / z.sum()).astype(np.float32)


class StreamingDetector:
    """Push PCM chunks of any size; get back the keywords detected in them.

    `artifact` is a `.pte`/`.onnx` file, a checkpoint directory, or an already
    opened backend. Unset options come from the artifact's metadata.
    `vad_threshold_db` (dBFS of the window's RMS, e.g. -50) skips the model on
    windows quieter than that; a skipped window counts as all-zero posteriors.
    """

    def __init__(
        self,
        artifact: str | Path | Backend,
        *,
        window_s: float | None = None,
        hop_s: float | None = None,
        thresholds: dict[str, float] | None = None,
        smoothing_hops: int | None = None,
        refractory_s: float | None = None,
        vad_threshold_db: float | None = None,
        num_threads: int | None = None,
    ) -> None:
        if isinstance(artifact, (str, Path)):
            from edgeast.runtime.backends import open_backend

            artifact = open_backend(artifact, num_threads=num_threads)
        self.backend = artifact
        meta: ArtifactMeta = artifact.meta
        self.meta = meta
        self.labels: list[str] = list(meta.labels)
        self.sample_rate = int(meta.sample_rate)
        self.window_samples = meta.window_samples if window_s is None else round(window_s * self.sample_rate)
        self.hop_samples = meta.hop_samples if hop_s is None else round(hop_s * self.sample_rate)
        if self.window_samples != meta.window_samples:
            raise DetectorError(
                f"window_s={window_s}: this model takes fixed {meta.window_samples / self.sample_rate:g} s windows "
                f"({meta.window_samples} samples); re-export it for another window length"
            )
        if not 0 < self.hop_samples <= self.window_samples:
            raise DetectorError(f"hop_s={hop_s}: the hop must be positive and at most the window "
                                f"({self.window_samples / self.sample_rate:g} s)")
        self.smoothing_hops = meta.smoothing_hops if smoothing_hops is None else int(smoothing_hops)
        if self.smoothing_hops < 1:
            raise DetectorError(f"smoothing_hops={smoothing_hops}: must be at least 1")
        self.refractory_samples = round((meta.refractory_s if refractory_s is None else refractory_s) * self.sample_rate)
        self.vad_threshold_db = vad_threshold_db

        # Keywords are the labels that may fire; filler classes (_unknown_, _silence_) never do.
        self.keyword_ids = np.array([self.labels.index(k) for k in meta.keywords()], dtype=np.int64)
        self._thresholds = np.array([meta.threshold(self.labels[i]) for i in self.keyword_ids], dtype=np.float64)
        self._lock = threading.Lock()
        for label, value in (thresholds or {}).items():
            self.set_threshold(label, value)

        self._window = np.zeros(self.window_samples, dtype=np.float32)
        self._history = np.zeros((self.smoothing_hops, len(self.labels)), dtype=np.float32)
        self.smoothed = np.zeros(len(self.labels), dtype=np.float32)  # latest smoothed posteriors
        self.reset()

    # -- thresholds -------------------------------------------------------
    def set_threshold(self, label: str, value: float) -> None:
        """Change one keyword's threshold; safe to call from another thread while streaming."""
        keywords = [self.labels[i] for i in self.keyword_ids]
        if label not in keywords:
            raise DetectorError(f"threshold for {label!r}: not a keyword of this model (keywords: {keywords})")
        if not 0.0 <= float(value) <= 1.0:
            raise DetectorError(f"threshold {label}={value}: must be a probability in [0, 1]")
        with self._lock:
            self._thresholds[keywords.index(label)] = float(value)

    @property
    def thresholds(self) -> dict[str, float]:
        with self._lock:
            return {self.labels[i]: float(t) for i, t in zip(self.keyword_ids, self._thresholds)}

    # -- streaming --------------------------------------------------------
    def reset(self) -> None:
        """Forget the stream: empty window, no history, time back to zero, counters cleared."""
        self._window[:] = 0.0
        self._history[:] = 0.0
        self.smoothed[:] = 0.0
        self._history_len = 0
        self._history_pos = 0
        self._samples_seen = 0
        self._since_hop = 0
        self._quiet_until = 0  # sample index before which the refractory period holds
        self._armed = np.ones(len(self.keyword_ids), dtype=bool)  # fired keywords re-arm below threshold
        self._windows_run = 0
        self._windows_skipped = 0
        self._infer_seconds = 0.0

    @property
    def stats(self) -> DetectorStats:
        mean_ms = 1000.0 * self._infer_seconds / self._windows_run if self._windows_run else 0.0
        return DetectorStats(self._windows_run, self._windows_skipped, mean_ms, self._samples_seen)

    @property
    def time_s(self) -> float:
        """Stream time: seconds of audio pushed since the start (or the last reset)."""
        return self._samples_seen / self.sample_rate

    def push(self, chunk: np.ndarray, on_window: WindowHook | None = None) -> list[Detection]:
        """Feed PCM (float32 in [-1, 1] or int16, shape [n] or [n, 1]); return the detections it completes.

        `on_window(end_s, smoothed)` is called after every hop with the smoothed
        posteriors (a view into the detector: copy it to keep it).
        """
        chunk = np.asarray(chunk)
        if chunk.ndim == 2 and chunk.shape[1] == 1:
            chunk = chunk[:, 0]
        if chunk.ndim != 1:
            raise DetectorError(f"audio chunk of shape {chunk.shape}: expected mono [samples] or [samples, 1]")
        if chunk.dtype == np.int16:
            scale = 1.0 / 32768.0
        elif chunk.dtype in (np.float32, np.float64):
            scale = 1.0
        else:
            raise DetectorError(f"audio chunk of dtype {chunk.dtype}: expected float32 or int16 PCM")

        detections: list[Detection] = []
        pos = 0
        while pos < len(chunk):
            n = min(len(chunk) - pos, self.hop_samples - self._since_hop)
            self._window[:-n] = self._window[n:]
            np.multiply(chunk[pos:pos + n], scale, out=self._window[-n:], casting="unsafe")
            pos += n
            self._samples_seen += n
            self._since_hop += n
            if self._since_hop == self.hop_samples:
                self._since_hop = 0
                if self._samples_seen >= self.window_samples:
                    found = self._step()
                    if on_window is not None:
                        on_window(self._samples_seen / self.sample_rate, self.smoothed)
                    if found is not None:
                        detections.append(found)
        return detections

    def _step(self) -> Detection | None:
        """One hop: score the current window, smooth, and decide."""
        if self.vad_threshold_db is not None and _rms_db(self._window) < self.vad_threshold_db:
            self._windows_skipped += 1
            self._history[self._history_pos] = 0.0
        else:
            t0 = time.perf_counter()
            logits = self.backend.infer(self._window)
            self._infer_seconds += time.perf_counter() - t0
            self._windows_run += 1
            self._history[self._history_pos] = softmax(logits)
        self._history_pos = (self._history_pos + 1) % self.smoothing_hops
        self._history_len = min(self._history_len + 1, self.smoothing_hops)
        np.mean(self._history[: self._history_len] if self._history_len < self.smoothing_hops else self._history,
                axis=0, out=self.smoothed)

        with self._lock:
            margin = self.smoothed[self.keyword_ids] - self._thresholds
        above = margin >= 0
        self._armed |= ~above
        if self._samples_seen < self._quiet_until or not (above & self._armed).any():
            return None
        best = int(np.argmax(np.where(above & self._armed, margin, -np.inf)))
        self._armed[best] = False
        self._quiet_until = self._samples_seen + self.refractory_samples
        label_id = int(self.keyword_ids[best])
        end = self._samples_seen
        return Detection(self.labels[label_id], float(self.smoothed[label_id]),
                         (end - self.window_samples) / self.sample_rate, end / self.sample_rate)


def _rms_db(x: np.ndarray) -> float:
    energy = float(np.dot(x, x)) / len(x)
    return 10.0 * math.log10(energy) if energy > 0 else -math.inf


class DetectorThread:
    """Runs a detector on its own thread, fed from an audio callback through a bounded queue.

    `submit()` is what the callback calls: it copies the chunk and puts it
    without waiting; when inference falls behind and the queue is full, the
    chunk is dropped and counted (`dropped`) rather than stalling the audio
    driver. `on_detection` and `on_window` run on the detector thread.
    `transform` (e.g. a resampler) is applied to each chunk on that thread.
    """

    def __init__(
        self,
        detector: StreamingDetector,
        *,
        max_chunks: int = 64,
        on_detection: Callable[[Detection], None] | None = None,
        on_window: WindowHook | None = None,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.detector = detector
        self.on_detection = on_detection
        self.on_window = on_window
        self.transform = transform
        self.dropped = 0
        self.error: BaseException | None = None
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=max_chunks)
        self._thread = threading.Thread(target=self._run, name="edgeast-detector", daemon=True)

    def submit(self, chunk: np.ndarray) -> bool:
        """Hand a chunk over without blocking; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(np.array(chunk, dtype=chunk.dtype, copy=True))
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def start(self) -> "DetectorThread":
        self._thread.start()
        return self

    def stop(self, drain: bool = True, timeout: float = 10.0) -> None:
        """Stop the thread; with `drain`, chunks already queued are processed first."""
        if not drain:
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
        self._queue.put(None)  # blocks only if full, and the thread is draining it
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                return
            if self.error is not None:
                continue  # keep draining so producers never block; the error is reported by the owner
            try:
                if self.transform is not None:
                    chunk = self.transform(chunk)
                for det in self.detector.push(chunk, on_window=self.on_window):
                    if self.on_detection is not None:
                        self.on_detection(det)
            except Exception as e:  # surfaced to the owner, which decides how to stop
                self.error = e
