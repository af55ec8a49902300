"""Live keyword detection from a microphone (PortAudio through sounddevice).

The audio callback does almost nothing: it counts overflows, measures the
input level and hands a copy of the block to a `DetectorThread`, so a slow
inference step can drop blocks (counted) but never stall the audio driver.
Everything else (resampling when the device will not record at the model's
rate, saving detection audio, the model) runs on that thread; the main thread
only draws the live view and reports detections.

sounddevice is imported on first use: it needs the PortAudio shared library,
which a machine that never opens a microphone does not have to install.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

import numpy as np

from edgeast.audio.io import save_audio
from edgeast.runtime.detector import Backend, Detection, DetectorStats, DetectorThread
from edgeast.runtime.detector_options import DetectorOptions

PORTAUDIO_MISSING = (
    "PortAudio library not found: install it (Debian/Ubuntu: sudo apt-get install libportaudio2; "
    "macOS: brew install portaudio); on a machine without a sound card, `bash .ci/setup-audio.sh` "
    "sets up a virtual microphone"
)
NO_INPUT = (
    "no audio input device{what}: connect a microphone or pick one from `edgeast devices`; on a machine "
    "without a sound card, `bash .ci/setup-audio.sh` sets up a virtual microphone ({reason})"
)


class MicrophoneError(ValueError):
    """No PortAudio, no usable input device, or a device setting it refuses."""


def _sounddevice():
    try:
        import sounddevice
    except OSError:  # sounddevice raises OSError when it cannot load libportaudio
        raise MicrophoneError(PORTAUDIO_MISSING) from None
    return sounddevice


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    host_api: str
    channels: int
    default_rate: float
    is_default: bool

    def __str__(self) -> str:
        mark = "*" if self.is_default else " "
        return f"{mark} {self.index:3d}  {self.name}  ({self.host_api}, {self.channels} ch, {self.default_rate:.0f} Hz)"


def list_devices() -> list[InputDevice]:
    """The input devices PortAudio sees; `is_default` marks the one `listen` opens without `device`."""
    sd = _sounddevice()
    try:
        default = sd.default.device[0]
        apis = sd.query_hostapis()
        devices = sd.query_devices()
    except sd.PortAudioError as err:
        raise MicrophoneError(NO_INPUT.format(what="", reason=err)) from None
    return [InputDevice(d["index"], d["name"], apis[d["hostapi"]]["name"], d["max_input_channels"],
                        d["default_samplerate"], d["index"] == default)
            for d in devices if d["max_input_channels"] > 0]


class StreamResampler:
    """Polyphase resampling (Kaiser-windowed sinc) of a stream that arrives in blocks of any size.

    Block boundaries do not matter: the output equals that of resampling the
    whole stream at once, and output sample k is the input at time k * in/out
    (no delay in the timeline; each output waits for `half_taps` input samples
    after it to arrive).
    """

    def __init__(self, in_rate: int, out_rate: int, zero_crossings: int = 32, rolloff: float = 0.96,
                 kaiser_beta: float = 8.0):
        g = math.gcd(int(in_rate), int(out_rate))
        self.up, self.down = int(out_rate) // g, int(in_rate) // g
        cutoff = 0.5 * rolloff * min(1.0, self.up / self.down)  # cycles per input sample
        self.half_taps = math.ceil(zero_crossings / (2 * cutoff))
        offsets = np.arange(-self.half_taps + 1, self.half_taps + 1)  # input samples around the output time
        x = offsets[None, :] - np.arange(self.up)[:, None] / self.up  # [phase, tap]
        taper = np.i0(kaiser_beta * np.sqrt(np.clip(1 - (x / self.half_taps) ** 2, 0, None))) / np.i0(kaiser_beta)
        kernel = 2 * cutoff * np.sinc(2 * cutoff * x) * taper  # flat to 0.9 x Nyquist, -85 dB from 1.04 x
        self.kernel = (kernel / kernel.sum(axis=1, keepdims=True)).astype(np.float32)
        self._buf = np.zeros(self.half_taps - 1, dtype=np.float32)  # history before the first sample: silence
        self._t = 0  # next output time in 1/up input samples, counted from _buf[half_taps - 1]

    def __call__(self, block: np.ndarray) -> np.ndarray:
        buf = np.concatenate([self._buf, np.asarray(block, dtype=np.float32).ravel()])
        lead = self.half_taps - 1
        # Output at time t reads buf[lead + floor(t / up) + j] for j in (-half_taps, half_taps].
        last = len(buf) - 1 - self.half_taps - lead  # the largest floor(t / up) whose taps have all arrived
        count = max(0, ((last + 1) * self.up - 1 - self._t) // self.down + 1) if last >= 0 else 0
        times = self._t + self.down * np.arange(count)
        base, phase = times // self.up, times % self.up
        index = base[:, None] + lead + np.arange(-self.half_taps + 1, self.half_taps + 1)[None, :]
        out = np.einsum("ij,ij->i", buf[index], self.kernel[phase]) if count else np.zeros(0, np.float32)
        self._t += self.down * count
        drop = self._t // self.up  # input samples no longer needed
        self._buf = buf[drop:]
        self._t -= drop * self.up
        return out.astype(np.float32)


class ClipSaver:
    """Writes the audio of each detection (its window plus `context_s` on both sides) as a wav.

    Runs on the detector thread: `feed` keeps the last seconds of the stream in
    a fixed ring, `add` queues a detection; a clip is written once the context
    after it has arrived.
    """

    def __init__(self, out_dir: str | Path, sample_rate: int, window_samples: int, context_s: float = 0.5):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.sample_rate = sample_rate
        self.context = round(context_s * sample_rate)
        self._ring = np.zeros(window_samples + 2 * self.context + 2 * sample_rate, dtype=np.float32)
        self._total = 0
        self._pending: deque[Detection] = deque(maxlen=16)
        self.saved: deque[Path] = deque(maxlen=1000)
        self.count = 0

    def add(self, det: Detection) -> None:
        self._pending.append(det)

    def feed(self, chunk: np.ndarray) -> np.ndarray:
        chunk = chunk[-len(self._ring):]
        pos = self._total % len(self._ring)
        first = min(len(chunk), len(self._ring) - pos)
        self._ring[pos:pos + first] = chunk[:first]
        self._ring[:len(chunk) - first] = chunk[first:]
        self._total += len(chunk)
        while self._pending and round(self._pending[0].end_s * self.sample_rate) + self.context <= self._total:
            self._write(self._pending.popleft())
        return chunk

    def close(self) -> None:
        """Write the clips still waiting for their context, with the audio there is."""
        while self._pending:
            self._write(self._pending.popleft())

    def _write(self, det: Detection) -> None:
        end = min(round(det.end_s * self.sample_rate) + self.context, self._total)
        start = max(0, round(det.start_s * self.sample_rate) - self.context, self._total - len(self._ring))
        idx = np.arange(start, end) % len(self._ring)
        self.count += 1
        path = self.out_dir / f"{self.count:04d}_{det.keyword}_{det.start_s:08.2f}s.wav"
        save_audio(path, self._ring[idx], self.sample_rate)
        self.saved.append(path)


@dataclass
class ListenReport:
    detections: list[Detection]
    audio_s: float  # audio captured
    overflows: int  # input overflows PortAudio reported (audio lost by the driver)
    dropped_chunks: int  # blocks dropped because inference fell behind
    stats: DetectorStats
    device: str
    capture_rate: int
    origin_monotonic: float  # time.monotonic() at which the stream's first sample was captured (upper bound)
    clips_saved: list[Path] = field(default_factory=list)


class _Capture:
    """State the audio callback writes and the main thread reads (plain attributes: GIL-atomic)."""

    def __init__(self, rate: int, worker: DetectorThread):
        self.rate = rate
        self.worker = worker
        self.frames = 0
        self.overflows = 0
        self.level_db = -math.inf
        self.origin = math.inf

    def callback(self, indata, frames, time_info, status) -> None:
        now = time.monotonic()
        if status.input_overflow:
            self.overflows += 1
        self.frames += frames
        # The block's last sample was captured no later than now.
        self.origin = min(self.origin, now - self.frames / self.rate)
        peak = float(np.max(np.abs(indata))) if frames else 0.0
        self.level_db = 20 * math.log10(peak) if peak > 0 else -math.inf
        self.worker.submit(indata[:, 0])


def listen(
    artifact: str | Path | Backend,
    *,
    device: int | str | None = None,
    save_detections: str | Path | None = None,
    record: str | Path | None = None,
    duration_s: float | None = None,
    json_lines: bool = False,
    live: bool | None = None,
    on_detection: Callable[[Detection], None] | None = None,
    out: TextIO = sys.stdout,
    options: DetectorOptions = DetectorOptions(),
    capture_rate: int | None = None,
    block_s: float = 0.05,
) -> ListenReport:
    """Detect keywords from a microphone, with a detector set up by `options`, until Ctrl-C or `duration_s` s.

    Opens `device` (index or name; default input when None) at the model's rate,
    or at the device's default rate with resampling when it refuses that one
    (`capture_rate` forces a rate). `save_detections` is a folder for the audio of
    each detection; `record` a wav file for all the audio the detector saw (float
    samples at the model's rate: streaming it through `stream_files` reproduces
    the session's detections). `live` (default: when `out` is a terminal and
    not `json_lines`) draws a level meter, the top class scores and recent
    detections; otherwise each detection is printed as a line, as JSON with
    `json_lines`. `on_detection` is called on the calling thread.
    """
    sd = _sounddevice()
    try:
        info = sd.query_devices(device, kind="input")
    except (ValueError, sd.PortAudioError) as err:
        raise MicrophoneError(NO_INPUT.format(what="" if device is None else f" {device!r}", reason=err)) from None
    detector = options.build(artifact)
    rate = int(capture_rate or detector.sample_rate)
    try:
        sd.check_input_settings(info["index"], channels=1, dtype="float32", samplerate=rate)
    except (ValueError, sd.PortAudioError):
        if capture_rate is not None:
            raise MicrophoneError(f"input device {info['name']!r} cannot record at {capture_rate} Hz; "
                                  f"leave the rate unset (it uses {info['default_samplerate']:g} Hz)") from None
        rate = int(info["default_samplerate"])

    found: deque[Detection] = deque()  # detector thread -> main thread (appends/pops are thread-safe)
    saver = (ClipSaver(save_detections, detector.sample_rate, detector.window_samples)
             if save_detections is not None else None)
    resample = StreamResampler(rate, detector.sample_rate) if rate != detector.sample_rate else None
    recording = None  # a soundfile.SoundFile once the device has opened

    def transform(chunk: np.ndarray) -> np.ndarray:
        chunk = resample(chunk) if resample is not None else chunk
        if recording is not None:
            recording.write(chunk)
        return saver.feed(chunk) if saver is not None else chunk

    def detected(det: Detection) -> None:
        if saver is not None:
            saver.add(det)
        found.append(det)

    worker = DetectorThread(detector, on_detection=detected, transform=transform)
    capture = _Capture(rate, worker)
    recent: deque[tuple[float, Detection]] = deque(maxlen=10_000)  # (wall clock when reported, detection)
    show_live = (out.isatty() and not json_lines) if live is None else live

    def report_new() -> None:
        while found:
            det = found.popleft()
            recent.append((time.time(), det))
            if on_detection is not None:
                on_detection(det)
            if json_lines:
                out.write(json.dumps(det.to_dict()) + "\n")
                out.flush()
            elif not show_live:
                out.write(f"{det.end_s:8.2f} s  {det.keyword}  {det.score:.2f}\n")
                out.flush()

    try:
        stream = sd.InputStream(device=info["index"], channels=1, dtype="float32", samplerate=rate,
                                blocksize=max(1, round(block_s * rate)), callback=capture.callback)
    except sd.PortAudioError as err:
        raise MicrophoneError(f"cannot open input device {info['name']!r} at {rate} Hz: {err}") from None
    if record is not None:
        import soundfile

        Path(record).parent.mkdir(parents=True, exist_ok=True)
        recording = soundfile.SoundFile(str(record), "w", samplerate=detector.sample_rate, channels=1,
                                        subtype="FLOAT", format="WAV")

    deadline = None if duration_s is None else time.monotonic() + duration_s
    view = _LiveView(detector, info["name"], rate, capture, worker, recent) if show_live else None
    worker.start()
    try:
        try:
            stream.start()
        except sd.PortAudioError as err:
            raise MicrophoneError(f"cannot start recording from {info['name']!r} at {rate} Hz: {err}") from None
        if view is None:
            while not _done(deadline, worker):
                report_new()
        else:
            from rich.console import Console
            from rich.live import Live

            with Live(view.render(), console=Console(file=out), refresh_per_second=10) as live_view:
                while not _done(deadline, worker):
                    report_new()
                    live_view.update(view.render())
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a live session ends
    finally:
        stream.close()
        worker.stop(drain=worker.error is None)
        if saver is not None:
            saver.close()
        if recording is not None:
            recording.close()
    if worker.error is not None:
        raise worker.error
    report_new()
    return ListenReport(
        detections=[det for _, det in recent], audio_s=capture.frames / rate, overflows=capture.overflows,
        dropped_chunks=worker.dropped, stats=detector.stats, device=info["name"], capture_rate=rate,
        origin_monotonic=capture.origin, clips_saved=list(saver.saved) if saver is not None else [],
    )


def _done(deadline: float | None, worker: DetectorThread) -> bool:
    time.sleep(0.05)
    return worker.error is not None or (deadline is not None and time.monotonic() >= deadline)


class _LiveView:
    """The terminal view: input level, top class scores, recent detections, counters."""

    def __init__(self, detector, device_name, rate, capture, worker, recent):
        self.detector, self.device_name, self.rate = detector, device_name, rate
        self.capture, self.worker, self.recent = capture, worker, recent
        self.started = time.monotonic()

    def render(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        level = self.capture.level_db
        filled = 0 if not math.isfinite(level) else int(max(0.0, min(1.0, (level + 60) / 60)) * 40)
        meter = Text("level  ")
        meter.append("#" * filled, style="green" if level < -6 else "red")
        meter.append("." * (40 - filled), style="dim")
        meter.append(f"  {level:6.1f} dBFS" if math.isfinite(level) else "   -inf dBFS")

        scores = self.detector.smoothed.copy()
        thresholds = self.detector.thresholds
        top = Table(title="top scores (smoothed)", show_edge=False, expand=False)
        for name in ("class", "score", "", "threshold"):
            top.add_column(name)
        for i in np.argsort(scores)[::-1][:5]:
            label = self.detector.labels[i]
            bar = "#" * int(scores[i] * 20)
            top.add_row(label, f"{scores[i]:.2f}", bar,
                        f"{thresholds[label]:.2f}" if label in thresholds else "-")

        dets = Table(title="detections", show_edge=False)
        for name in ("clock", "stream s", "keyword", "score"):
            dets.add_column(name)
        for wall, det in list(self.recent)[-8:]:
            dets.add_row(time.strftime("%H:%M:%S", time.localtime(wall)), f"{det.end_s:.1f}", det.keyword, f"{det.score:.2f}")

        stats = self.detector.stats
        footer = Text(
            f"{self.device_name} @ {self.rate} Hz   {time.monotonic() - self.started:6.0f} s   "
            f"windows {stats.windows_run} (+{stats.windows_skipped} silent)   infer {stats.mean_infer_ms:.1f} ms   "
            f"overflows {self.capture.overflows}   dropped {self.worker.dropped}   Ctrl-C to stop",
            style="dim")
        return Group(meter, top, dets, footer)
