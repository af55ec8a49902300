"""open_backend over .pte, .onnx and checkpoint directories: same logits, clear errors, thread counts."""

import shutil

import numpy as np
import pytest
import torch

from edgeast.audio.frontend import FrontendConfig, LogMelFrontend
from edgeast.export.calibration import probe_clips
from edgeast.export.exporter import export_model
from edgeast.models.ast import ASTClassifier, ASTConfig
from edgeast.models.checkpoint import save_model
from edgeast.models.keyword import KeywordModel
from edgeast.runtime.backends import BackendError, open_backend

LABELS = ["yes", "no", "_unknown_", "_silence_"]


@pytest.fixture(scope="module")
def model() -> KeywordModel:
    torch.manual_seed(0)
    cfg = ASTConfig(embed_dim=64, depth=1, num_heads=2, num_classes=len(LABELS))  # one block: lowering is slow
    model = KeywordModel(LogMelFrontend(FrontendConfig()), ASTClassifier(cfg), LABELS).eval()
    with torch.no_grad():
        model.classifier.head[1].weight.mul_(50)  # random-init logits are tiny; spread them out
    return model


@pytest.fixture(scope="module")
def paths(model, tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("backends")
    save_model(model, root / "checkpoint")
    export_model(model, root / "export")
    return {"checkpoint": root / "checkpoint", "pte": root / "export" / "model.pte", "onnx": root / "export" / "model.onnx"}


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    return probe_clips(6, seed=7).numpy()


@pytest.mark.parametrize("kind", ["checkpoint", "pte", "onnx"])
def test_backend_matches_eager(model, paths, windows, kind):
    backend = open_backend(paths[kind], num_threads=1)
    with torch.no_grad():
        reference = model(torch.from_numpy(windows)).numpy()
    single = backend.infer(windows[0])
    assert single.shape == (4,) and single.dtype == np.float32
    np.testing.assert_allclose(single, reference[0], atol=1e-4)
    batch = backend.infer_batch(windows)
    assert batch.shape == (6, 4)
    np.testing.assert_allclose(batch, reference, atol=1e-4)
    assert backend.meta.labels == LABELS and backend.meta.format == kind
    assert backend.meta.window_samples == 16000 and backend.meta.sample_rate == 16000


def test_results_are_not_overwritten_by_the_next_call(paths, windows):
    backend = open_backend(paths["pte"])
    first = backend.infer(windows[0])
    kept = first.copy()
    backend.infer(windows[1])
    np.testing.assert_array_equal(first, kept)


def test_checkpoint_meta(model, paths):
    meta = open_backend(paths["checkpoint"]).meta
    assert meta.keywords() == ["yes", "no"] and meta.thresholds == {"yes": 0.8, "no": 0.8}
    assert meta.normalization == {"mean": model.frontend.cfg.mean, "std": model.frontend.cfg.std}
    assert meta.source == str(paths["checkpoint"]) and meta.hop_samples == 1600


def test_thread_counts(paths, windows):
    from executorch.extension.pybindings import portable_lib

    results = {}
    for threads in (1, 2):  # one live .pte backend at a time: ExecuTorch's pool is process-wide
        backend = open_backend(paths["pte"], num_threads=threads)
        assert portable_lib._threadpool_get_thread_count() == threads == backend.num_threads
        results[threads] = backend.infer_batch(windows)
        with pytest.raises(BackendError, match=f"process-wide pool of {threads}"):
            open_backend(paths["pte"], num_threads=3 - threads)
        del backend
    np.testing.assert_allclose(results[1], results[2], atol=1e-5)
    onnx = [open_backend(paths["onnx"], num_threads=t).infer_batch(windows) for t in (1, 2)]
    np.testing.assert_allclose(onnx[0], onnx[1], atol=1e-5)


def test_clear_errors(paths, tmp_path):
    with pytest.raises(BackendError, match="no such model file"):
        open_backend(tmp_path / "missing.pte")
    (tmp_path / "model.tflite").write_bytes(b"\0")
    with pytest.raises(BackendError, match="unknown model type '.tflite'"):
        open_backend(tmp_path / "model.tflite")
    shutil.copy(paths["onnx"], tmp_path / "lonely.onnx")
    with pytest.raises(BackendError, match="no metadata sidecar"):
        open_backend(tmp_path / "lonely.onnx")
    (tmp_path / "model.json").write_text('{"labels": ["yes", "no"]}')
    for name, runtime in (("model.pte", "ExecuTorch"), ("model.onnx", "ONNX Runtime")):
        (tmp_path / name).write_bytes(b"not a model")
        with pytest.raises(BackendError, match=f"{runtime} cannot load"):
            open_backend(tmp_path / name)
    with pytest.raises(BackendError, match="num_threads=0"):
        open_backend(paths["onnx"], num_threads=0)
    backend = open_backend(paths["onnx"])
    with pytest.raises(BackendError, match=r"shape \(8000,\).*samples = 16000"):
        backend.infer(np.zeros(8000, np.float32))
    with pytest.raises(BackendError, match=r"\[windows, samples\]"):
        backend.infer_batch(np.zeros(16000, np.float32))
