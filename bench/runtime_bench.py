"""The streaming runtime's CPU cost and wake-word accuracy, ExecuTorch and ONNX side by side.

Real-time factor (RTF) = processing time / audio time for the whole runtime:
chunking, the model file (front end + encoder, inside the export), softmax,
smoothing and the decision, at a 100 ms hop with 1 s windows, on one thread.
Files are measured in interleaved rounds and the median round is reported,
so a busy shared machine skews them alike.

With `--dataset` (Speech Commands layout with a test split, e.g. from
`edgeast data synth`), every model is also scored on one synthetic benchmark
stream (held-out keywords in background speech, noise at 10 dB SNR): miss rate
at 1 false accept per hour, and the median time from keyword end to detection.

    python bench/runtime_bench.py                      # random-init student, exported here: RTF only
    python bench/runtime_bench.py --artifact-dir runs/x/export/fp32 --artifact-dir runs/x/export/int8 \\
        --dataset data/synth --minutes 30
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeast.audio.frontend import FrontendConfig, LogMelFrontend
from edgeast.export.calibration import probe_clips
from edgeast.export.exporter import export_model
from edgeast.export.metadata import ArtifactMeta
from edgeast.models.ast import ASTClassifier, ast_config
from edgeast.models.keyword import KeywordModel
from edgeast.runtime.detector import StreamingDetector
from edgeast.runtime.files import stream_audio
from edgeast.runtime.benchmark_stream import StreamConfig, build_test_streams
from edgeast.runtime.wakeword_metrics import score_stream, sweep

RUNTIMES = {".pte": "ExecuTorch/XNNPACK", ".onnx": "ONNX Runtime"}
TARGETS = (1.0, 10.0)  # false accepts per hour at which miss rate and latency are reported


def random_exports(out: Path, size: str) -> list[Path]:
    """A random-init student exported fp32 (.pte + .onnx) and int8 (.pte + .onnx): for cost, not accuracy."""
    torch.manual_seed(0)
    labels = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_unknown_", "_silence_"]
    model = KeywordModel(LogMelFrontend(FrontendConfig()), ASTClassifier(ast_config(size, num_classes=len(labels))),
                         labels).eval()
    calib = probe_clips(32)
    dirs = []
    for int8 in (False, True):
        report = export_model(model, out / ("int8" if int8 else "fp32"), int8=int8, calib_waves=calib, force=True,
                              source=f"random-init {size}")
        dirs.append(Path(report.out_dir))
    return dirs


def model_files(dirs: list[Path]) -> list[Path]:
    files = [p for d in dirs for p in sorted(d.iterdir()) if p.suffix in RUNTIMES]
    if not files:
        sys.exit(f"no model.pte / model.onnx in {', '.join(map(str, dirs))}: give folders written by `edgeast export`")
    return files


def label(path: Path) -> str:
    meta = ArtifactMeta.load(path)
    return f"{RUNTIMES[path.suffix]} {'int8' if meta.int8 else 'fp32'}"


def real_time_factor(path: Path, audio: np.ndarray) -> tuple[float, float]:
    """(RTF, mean model ms per window) of streaming `audio` through a fresh one-thread detector."""
    detector = StreamingDetector(path, num_threads=1)
    stream_audio(detector, audio[:32000])  # warm-up
    detector.reset()
    start = time.perf_counter()
    stream_audio(detector, audio, chunk_s=0.1, tail_s=0)
    seconds = time.perf_counter() - start
    return seconds / (len(audio) / detector.sample_rate), detector.stats.mean_infer_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact-dir", action="append", type=Path, default=[],
                        help="folder from `edgeast export` (repeat for fp32 and int8)")
    parser.add_argument("--dataset", type=Path, help="dataset with a test split, for miss rate and latency")
    parser.add_argument("--minutes", type=float, default=10.0, help="keyword stream and keyword-free stream, each")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio streamed per RTF round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="student-64x4", help="AST size of the random model (no --artifact-dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        dirs = args.artifact_dir or random_exports(Path(tmp), args.size)
        files = model_files(dirs)
        names = {f: label(f) for f in files}
        rng = np.random.default_rng(0)
        audio = (rng.standard_normal(int(args.seconds * 16000)) * 0.03).astype(np.float32)
        rounds: dict[Path, list[tuple[float, float]]] = {f: [] for f in files}
        for round_index in range(args.rounds):
            for f in files if round_index % 2 == 0 else files[::-1]:  # no file always in the same slot
                rounds[f].append(real_time_factor(f, audio))
        rtf = {f: statistics.median(r[0] for r in rounds[f]) for f in files}
        infer = {f: statistics.median(r[1] for r in rounds[f]) for f in files}

        accuracy = {}
        if args.dataset:
            meta = ArtifactMeta.load(files[0])
            cfg = StreamConfig(keyword_minutes=args.minutes, background_minutes=args.minutes)
            keyword_stream, background = build_test_streams(args.dataset, meta.keywords(), cfg,
                                                            sample_rate=meta.sample_rate)
            for f in files:
                detector = StreamingDetector(f, num_threads=1)
                result = sweep(score_stream(detector, keyword_stream.audio), score_stream(detector, background.audio),
                               keyword_stream.events, targets=TARGETS)
                accuracy[f] = ([result.point(t) for t in TARGETS], result.hours, result.events)

    print(f"command: {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"machine: {torch.get_num_threads()} torch thread(s); every runtime on 1 thread; 1 s window, 100 ms hop; "
          f"RTF over {args.seconds:g} s of audio, median of {args.rounds} interleaved rounds")
    if not args.artifact_dir:
        print(f"models: random-init {args.size} exported here (cost only: a random model has no accuracy)")
    print()
    at = " / ".join(f"{t:g}" for t in TARGETS)
    print(f"| model | file | RTF (1 thread) | model ms / window | runtime overhead | miss @ {at} FA/h "
          f"| latency median @ {at} FA/h |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for f in files:
        hop_s = 0.1
        overhead = rtf[f] * hop_s * 1000 - infer[f]  # ms per hop outside the model call
        miss = latency = "n/a"
        if f in accuracy:
            points, hours, events = accuracy[f]
            miss = " / ".join(f"{p.miss_rate:.1%}" + ("" if p.resolved else " (unresolved)") for p in points)
            latency = " / ".join("n/a" if np.isnan(p.latency_median_s) else f"{p.latency_median_s * 1000:.0f} ms"
                                 for p in points)
        print(f"| {names[f]} | {f.parent.name}/{f.name} | {rtf[f]:.4f} | {infer[f]:.2f} | {overhead:.2f} ms/hop "
              f"| {miss} | {latency} |")
    if accuracy:
        _, hours, events = next(iter(accuracy.values()))
        print(f"\nbenchmark stream: {events} keywords in {args.minutes:g} min of speech + {args.minutes:g} min "
              f"without keywords ({hours:.2f} h), noise at 10 dB SNR; a detection hits from keyword start to "
              "end + 0.5 s. Fewer than 1 h cannot resolve 1 FA/h: such rows give the miss rate at zero false accepts.")


if __name__ == "__main__":
    main()
