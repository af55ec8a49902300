"""The C++ runtime (export/cpp, ExecuTorch's C++ API) against the Python runtime, same `.pte`, one thread.

Both stream the same audio at a 100 ms hop through 1 s windows: per-window
model latency (mean ms of the `.pte` forward) and real-time factor (RTF =
processing time / audio time, the whole detector: chunking, model, softmax,
smoothing, decision). Each runtime warms up on one window first. The runs
alternate for `--rounds` rounds and the median is reported, so a busy shared
machine skews both alike. Python runs in its own process so each side has
ExecuTorch's process-wide thread pool to itself at one thread.

    python bench/cpp_runtime_bench.py                         # random-init tiny student, exported here
    python bench/cpp_runtime_bench.py --artifact-dir runs/x/export/int8 --seconds 120
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from edgeast.audio.frontend import FrontendConfig, LogMelFrontend
from edgeast.export.calibration import probe_clips
from edgeast.export.exporter import export_model
from edgeast.export.metadata import ArtifactMeta
from edgeast.models.ast import ASTClassifier, ast_config
from edgeast.models.keyword import KeywordModel

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_unknown_", "_silence_"]

PYTHON_RUN = """
import json, sys, time
import soundfile as sf
from edgeast.runtime.detector import StreamingDetector
audio, _ = sf.read(sys.argv[2], dtype="float32")
detector = StreamingDetector(sys.argv[1], num_threads=1)
detector.push(audio[:detector.window_samples]); detector.reset()  # warm-up, as kws_stream --stats does
start = time.perf_counter()
for pos in range(0, len(audio), detector.hop_samples):
    detector.push(audio[pos:pos + detector.hop_samples])
seconds = time.perf_counter() - start
print(json.dumps({"mean_infer_ms": detector.stats.mean_infer_ms, "rtf": seconds / (len(audio) / detector.sample_rate),
                  "windows_run": detector.stats.windows_run}))
"""


def build(build_dir: Path) -> Path:
    import executorch

    prefix = list(executorch.__path__)[0]
    subprocess.run(["cmake", "-S", str(ROOT / "export" / "cpp"), "-B", str(build_dir), f"-DCMAKE_PREFIX_PATH={prefix}",
                    "-DCMAKE_BUILD_TYPE=Release"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build_dir), "-j2"], check=True, capture_output=True)
    return build_dir / "kws_stream"


def random_export(out: Path, size: str, int8: bool) -> Path:
    """A random-init student: for cost, not accuracy."""
    torch.manual_seed(0)
    model = KeywordModel(LogMelFrontend(FrontendConfig()), ASTClassifier(ast_config(size, num_classes=len(LABELS))),
                         LABELS).eval()
    report = export_model(model, out, formats=("pte",), int8=int8, calib_waves=probe_clips(32), force=True,
                          source=f"random-init {size}")
    return Path(report.out_dir) / "model.pte"


def run_cpp(binary: Path, pte: Path, wav: Path) -> dict:
    done = subprocess.run([str(binary), str(pte), str(wav), "--threads", "1", "--stats"], capture_output=True,
                          text=True, check=True)
    return next(json.loads(line)["stats"] for line in done.stderr.splitlines() if line.startswith('{"stats"'))


def run_python(pte: Path, wav: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PYTHON_RUN, str(pte), str(wav)], capture_output=True, text=True,
                          check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact-dir", type=Path, action="append", default=[],
                        help="a folder with model.pte + model.json (repeatable); default: export a random student")
    parser.add_argument("--size", default="tiny", help="student size for the random export")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio streamed per run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        binary = build(tmp / "build")
        ptes = [d / "model.pte" for d in args.artifact_dir] or [
            random_export(tmp / name, args.size, name == "int8") for name in ("fp32", "int8")]
        audio = (np.random.default_rng(0).standard_normal(int(args.seconds * 16000)) * 0.05).astype(np.float32)
        wav = tmp / "noise.wav"
        sf.write(wav, audio, 16000, subtype="FLOAT")

        rows = []
        for pte in ptes:
            meta = ArtifactMeta.load(pte)
            runs = {"C++": [], "Python": []}
            for _ in range(args.rounds):
                runs["C++"].append(run_cpp(binary, pte, wav))
                runs["Python"].append(run_python(pte, wav))
            for runtime, results in runs.items():
                rows.append((f"{pte.parent.name} ({'int8' if meta.int8 else 'fp32'})", runtime,
                             statistics.median(r["mean_infer_ms"] for r in results),
                             statistics.median(r["rtf"] for r in results), results[0]["windows_run"]))

    print(f"\n`{shlex.join([Path(sys.executable).name, *sys.argv])}` "
          f"({args.seconds:g} s stream, 100 ms hop, 1 thread, median of {args.rounds} rounds, "
          f"{time.strftime('%Y-%m-%d')})\n")
    print("| model | runtime | model ms / window | RTF | windows |")
    print("|---|---|---|---|---|")
    for model, runtime, ms, rtf, windows in rows:
        print(f"| {model} | {runtime} | {ms:.3f} | {rtf:.4f} | {windows} |")


if __name__ == "__main__":
    main()
