"""The C++ runtime (export/cpp) against the Python one, on the same exported model and stream.

The library is built with CMake against the ExecuTorch C++ runtime that the
pip wheel ships, once per session; `kws_stream` (the C ABI's sample program)
streams a WAV file and prints JSON lines, which must name the same keywords
as `StreamingDetector` at the same times (within one hop) for the same samples.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgeast.export.exporter import export_model
from edgeast.models.checkpoint import load_model
from edgeast.runtime.detector import Detection, DetectorStats, StreamingDetector
from conftest import SR, THRESHOLDS, keyword_stream, matches

CPP_DIR = Path(__file__).resolve().parents[1] / "export" / "cpp"


def build_kws(build_dir: Path) -> Path:
    """Configure and build export/cpp against the installed executorch wheel; returns the kws_stream binary."""
    import executorch

    prefix = list(executorch.__path__)[0]
    for cmd in (["cmake", "-S", str(CPP_DIR), "-B", str(build_dir), f"-DCMAKE_PREFIX_PATH={prefix}",
                 "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(build_dir), "-j2"]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return build_dir / "kws_stream"


@pytest.fixture(scope="session")
def kws_stream_bin(tmp_path_factory) -> Path:
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"building the C++ runtime needs {' and '.join(missing)} on PATH (e.g. apt-get install cmake g++)")
    return build_kws(tmp_path_factory.mktemp("kws_build"))


@pytest.fixture(scope="module")
def pte(trained_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cpp_export") / "fp32"
    export_model(load_model(trained_model.checkpoint).eval(), out, formats=("pte",), source="tiny")
    return out / "model.pte"


def run_cpp(binary: Path, model: Path, wav: Path, *options: str) -> tuple[list[dict], dict]:
    """Detections (JSON lines on stdout) and the --stats line (stderr) of one kws_stream run."""
    thresholds = [arg for k, v in THRESHOLDS.items() for arg in ("--threshold", f"{k}={v}")]
    done = subprocess.run([str(binary), str(model), str(wav), "--threads", "1", "--stats", *thresholds, *options],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    stats = next(json.loads(line)["stats"] for line in done.stderr.splitlines() if line.startswith('{"stats"'))
    return [json.loads(line) for line in done.stdout.splitlines()], stats


def run_python(model: Path, audio: np.ndarray, **options) -> tuple[list[Detection], DetectorStats]:
    """The Python runtime on the same samples, pushed one hop at a time."""
    detector = StreamingDetector(model, thresholds=THRESHOLDS, **options)
    found = [d for pos in range(0, len(audio), 1600) for d in detector.push(audio[pos:pos + 1600])]
    return found, detector.stats


def assert_same_detections(cpp: list[dict], python: list, hop_s: float) -> None:
    assert [d["keyword"] for d in cpp] == [d.keyword for d in python], (cpp, python)
    for c, p in zip(cpp, python):
        assert abs(c["end_s"] - p.end_s) <= hop_s + 1e-6 and abs(c["start_s"] - p.start_s) <= hop_s + 1e-6
        assert c["score"] == pytest.approx(p.score, abs=1e-3)  # measured: equal to 1e-6


def test_cpp_detections_equal_the_python_runtime(kws_stream_bin, trained_model, pte, tmp_path):
    audio, truth = keyword_stream(trained_model, 11.0, [1.0, 3.5, 6.0, 8.5], seed=7)
    wav = tmp_path / "stream_f32.wav"
    sf.write(wav, audio, SR, subtype="FLOAT")

    python, py_stats = run_python(pte, audio)
    cpp, stats = run_cpp(kws_stream_bin, pte, wav, "--chunk", "1000")  # chunking differs, detections must not

    assert sum(any(matches(d, t) for d in python) for t in truth) >= 3  # the comparison is not vacuous
    assert_same_detections(cpp, python, 0.1)
    assert stats["windows_run"] == py_stats.windows_run == (len(audio) - SR) // 1600 + 1
    assert stats["audio_s"] == pytest.approx(11.0)


def test_cpp_int16_pcm_and_energy_gate_match_python(kws_stream_bin, trained_model, pte, tmp_path):
    audio, truth = keyword_stream(trained_model, 8.0, [1.0, 4.5], seed=8, noise_db=-70.0)
    wav = tmp_path / "stream_i16.wav"
    sf.write(wav, audio, SR, subtype="PCM_16")
    pcm16, _ = sf.read(wav, dtype="int16")  # exactly the samples the C++ reader gets

    python, py_stats = run_python(pte, pcm16, vad_threshold_db=-50.0)
    cpp, stats = run_cpp(kws_stream_bin, pte, wav, "--vad-db", "-50")

    assert sum(any(matches(d, t) for d in python) for t in truth) >= 1
    assert_same_detections(cpp, python, 0.1)
    assert py_stats.windows_skipped > 5  # the gate really skipped the silent stretches
    assert (stats["windows_run"], stats["windows_skipped"]) == (py_stats.windows_run, py_stats.windows_skipped)


def test_cpp_errors_are_one_clear_line(kws_stream_bin, pte, tmp_path):
    lone = tmp_path / "lone" / "model.pte"
    lone.parent.mkdir()
    shutil.copy(pte, lone)
    sf.write(tmp_path / "8k.wav", np.zeros(8000, np.float32), 8000, subtype="PCM_16")
    sf.write(tmp_path / "ok.wav", np.zeros(SR, np.float32), SR, subtype="PCM_16")
    cases = [
        ((lone, tmp_path / "ok.wav"), "no metadata sidecar found"),
        ((pte, tmp_path / "8k.wav"), "8000 Hz; the model takes 16000 Hz"),
        ((pte, tmp_path / "ok.wav", "--threshold", "maybe=0.5"), "'maybe': not a keyword of this model"),
        ((pte, tmp_path / "ok.wav", "--threshold", "yes=1.5"), "must be a probability in [0, 1]"),
        ((tmp_path / "ok.wav", tmp_path / "ok.wav"), "ExecuTorch cannot load"),
    ]
    (tmp_path / "ok.json").write_text((pte.parent / "model.json").read_text())  # a sidecar for the non-.pte case
    for args, message in cases:
        done = subprocess.run([str(kws_stream_bin), *map(str, args)], capture_output=True, text=True, timeout=60)
        last = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 1 and message in last and last.startswith("kws_stream: "), done.stderr
