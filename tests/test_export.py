"""int8/fp32 export to ExecuTorch and ONNX: parity with eager, metadata, atomic writes, float front end."""

import json
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeast.audio.frontend import FrontendConfig, LogMelFrontend
from edgeast.audio.io import save_audio
from edgeast.export import executorch as et_export
from edgeast.export.calibration import labelled_clips, probe_clips
from edgeast.export.exporter import (
    ExportError, ExportExistsError, ExportParityError, export_checkpoint, export_model,
)
from edgeast.export.metadata import ArtifactMeta
from edgeast.export.onnx import read_embedded_meta
from edgeast.models.ast import ASTClassifier, ASTConfig, Attention
from edgeast.models.checkpoint import save_model
from edgeast.models.keyword import KeywordModel
from edgeast.runtime.backends import open_backend

BANDS_HZ = [(200, 400), (700, 1200), (2000, 3000), (4500, 6500)]
LABELS = ["low", "mid", "high", "_unknown_"]  # one per band; the last stands in for a filler class


def tone_set(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tones of random pitch within each class's band, at -6 to -36 dBFS, over faint noise."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(16000) / 16000
    targets = torch.arange(count) % len(BANDS_HZ)
    waves = []
    for target in targets.tolist():
        low, high = BANDS_HZ[target]
        pitch, level, phase = torch.rand(3, generator=gen).tolist()
        tone = torch.sin(2 * math.pi * (low + (high - low) * pitch) * t + 2 * math.pi * phase)
        waves.append(10 ** (-(6 + 30 * level) / 20) * tone + 0.003 * torch.randn(16000, generator=gen))
    return torch.stack(waves), targets


@pytest.fixture(scope="module")
def model() -> KeywordModel:
    """A tiny AST trained for a few seconds on the tone bands, so its logits carry clear margins."""
    torch.manual_seed(0)
    cfg = ASTConfig(embed_dim=64, depth=2, num_heads=2, patch_f=16, patch_t=16, num_frames=100, num_classes=4)
    model = KeywordModel(LogMelFrontend(FrontendConfig()), ASTClassifier(cfg), LABELS)
    waves, targets = tone_set(96, seed=1)
    with torch.no_grad():
        features = model.frontend(waves)
    optimizer = torch.optim.AdamW(model.classifier.parameters(), lr=5e-3)
    for _ in range(60):
        batch = torch.randint(0, len(waves), (24,))
        loss = torch.nn.functional.cross_entropy(model.classifier(features[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def heldout():
    return tone_set(48, seed=2)


@pytest.fixture(scope="module")
def fp32_export(model, heldout, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32")
    return out, export_model(model, out, heldout=heldout, source="tiny")


@pytest.fixture(scope="module")
def int8_export(model, heldout, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8")
    calib, _ = tone_set(64, seed=3)
    return out, export_model(model, out, int8=True, calib_waves=calib, heldout=heldout, min_agreement=0.95)


def eager(model, waves):
    with torch.no_grad():
        return model(waves).numpy()


@pytest.mark.parametrize("name", ["model.pte", "model.onnx"])
def test_fp32_export_matches_eager(model, fp32_export, name):
    out, report = fp32_export
    waves = probe_clips(24, seed=4)  # tones, chirps, noise bursts, near-silence
    logits = open_backend(out / name).infer_batch(waves.numpy())
    assert logits.shape == (24, 4) and logits.dtype == np.float32
    assert np.abs(logits - eager(model, waves)).max() <= 1e-3
    result = next(r for r in report.results if r.file == name)
    assert result.agreement == 1.0 and result.max_abs_diff <= 1e-3 and result.passed


@pytest.mark.parametrize("name", ["model.pte", "model.onnx"])
def test_int8_export_agrees_with_eager(model, int8_export, heldout, name):
    out, report = int8_export
    waves, _ = tone_set(48, seed=5)
    reference = eager(model, waves)
    backend = open_backend(out / name)
    logits = backend.infer_batch(waves.numpy())
    agreement = (logits.argmax(1) == reference.argmax(1)).mean()
    assert agreement >= 0.95, f"{name}: int8 top-1 agreement {agreement:.1%}"
    assert np.corrcoef(logits.ravel(), reference.ravel())[0, 1] >= 0.98
    assert 0 < np.abs(logits - reference).max() < 1.0  # quantized (not identical), yet close
    result = next(r for r in report.results if r.file == name)
    heldout_waves, heldout_targets = heldout
    accuracy = (backend.infer_batch(heldout_waves.numpy()).argmax(1) == heldout_targets.numpy()).mean()
    assert result.passed and result.agreement >= 0.95 and result.accuracy == pytest.approx(accuracy)


@pytest.mark.parametrize("name", ["model.pte", "model.onnx"])
def test_int8_files_are_smaller(fp32_export, int8_export, name):
    fp32_size = (fp32_export[0] / name).stat().st_size
    int8_size = (int8_export[0] / name).stat().st_size
    assert int8_size < 0.5 * fp32_size  # 0.41 (.pte) and 0.47 (.onnx) for this 2-block model


def test_metadata_round_trip(model, fp32_export, int8_export):
    for out, int8 in ((fp32_export[0], False), (int8_export[0], True)):
        meta = ArtifactMeta.load(out / "model.pte")
        assert meta.labels == LABELS and meta.int8 is int8 and meta.format == "pte,onnx"
        assert (meta.sample_rate, meta.window_samples) == (16000, 16000)
        assert meta.thresholds == {"low": 0.8, "mid": 0.8, "high": 0.8}  # keywords only
        assert meta.normalization == {"mean": model.frontend.cfg.mean, "std": model.frontend.cfg.std}
        assert {r["file"] for r in meta.parity["results"]} == {"model.pte", "model.onnx"}
        assert meta.parity["clips"] == 48 and meta.parity["clip_source"] == "heldout"
        embedded = read_embedded_meta(out / "model.onnx")
        assert embedded["labels"] == LABELS and embedded["int8"] is int8 and embedded["format"] == "onnx"
        graph = onnx.load(out / "model.onnx").graph  # the exporter's per-node debug records are not shipped
        assert not any(node.metadata_props for node in graph.node) and not graph.value_info
        assert open_backend(out / "model.onnx").meta.format == "onnx"
    assert fp32_export[1].table().count("| model.") == 2


def test_pte_carries_its_settings(fp32_export):
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(fp32_export[0] / "model.pte")
    settings = {name: program.load_method(name).execute([])[0] for name in ("sample_rate", "window_samples", "num_classes")}
    assert settings == {"sample_rate": 16000, "window_samples": 16000, "num_classes": 4}


def test_refuses_existing_export(model, fp32_export):
    out = fp32_export[0]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(ExportExistsError, match="already holds an export.*--overwrite"):
        export_model(model, out, formats=["onnx"])
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_failed_export_leaves_no_model_file(model, tmp_path, monkeypatch):
    import executorch.exir

    def broken_lowering(*args, **kwargs):
        raise RuntimeError("simulated lowering failure")

    monkeypatch.setattr(executorch.exir, "to_edge_transform_and_lower", broken_lowering)
    with pytest.raises(RuntimeError, match="simulated"):
        export_model(model, tmp_path / "out", formats=["onnx", "pte"])  # ONNX is written first, then pte fails
    assert list((tmp_path / "out").iterdir()) == []


def test_failed_parity_ships_nothing_unless_forced(model, heldout, tmp_path):
    with pytest.raises(ExportParityError, match="model.onnx agrees with PyTorch on 100.00%.*--force"):
        export_model(model, tmp_path / "strict", formats=["onnx"], heldout=heldout, min_agreement=1.01)
    assert list((tmp_path / "strict").iterdir()) == []
    report = export_model(model, tmp_path / "forced", formats=["onnx"], heldout=heldout, min_agreement=1.01, force=True)
    assert report.forced and not report.passed
    assert sorted(p.name for p in (tmp_path / "forced").iterdir()) == ["model.json", "model.onnx"]
    assert json.loads((tmp_path / "forced" / "model.json").read_text())["parity"]["forced"] is True
    assert export_model(model, tmp_path / "forced", formats=["onnx"], heldout=heldout, overwrite=True).passed
    assert json.loads((tmp_path / "forced" / "model.json").read_text())["parity"]["forced"] is False


def test_onnx_int8_keeps_front_end_float(model, int8_export):
    graph = onnx.load(int8_export[0] / "model.onnx").graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producer = {name: node for node in graph.node for name in node.output}
    cast_to = {node.input[0]: node.output[0] for node in graph.node if node.op_type == "Cast"}
    frontend = model.frontend
    # the DFT's weights are float32; the mel weights are stored float16 and cast back to float32
    weights = {name: buffer.numpy().astype(np.float16 if name.startswith("mel_block") else np.float32)
               for name, buffer in frontend.named_buffers() if name.startswith(("stage", "mel_block"))}
    assert len(weights) == 4 + len(frontend.mel_spans)
    for name, array in weights.items():
        copies = [cast_to.get(key, key) for key, value in initializers.items() if value.dtype == array.dtype
                  and (np.array_equal(value, array) or np.array_equal(value, array.T))]
        nodes = [node for node in graph.node if set(node.input) & set(copies)]
        assert nodes and {node.op_type for node in nodes} == {"MatMul"}, f"{name} is not a float MatMul weight"
        for node in nodes:  # float input too: nothing quantized upstream of the DFT and mel matmuls
            assert not {producer[i].op_type for i in node.input if i in producer} & {
                "DynamicQuantizeLinear", "DequantizeLinear"}, f"{node.name} reads quantized input"
    int8_size = sum(v.size for v in initializers.values() if v.dtype == np.int8)
    linears = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)]
    assert int8_size >= sum(m.weight.numel() for m in linears)  # while the classifier's Linear weights are int8
    # every Linear and the patch embedding (non-overlapping patches: a matmul too) run as int8 matmuls
    assert sum(node.op_type == "MatMulInteger" for node in graph.node) == len(linears) + 1


def test_non_overlapping_patches_embed_as_the_conv_does():
    for overrides in (dict(patch_f=128, patch_t=2, stride_f=128, stride_t=2), {},  # frame tokens, 16x16 patches
                      dict(num_frames=103, input_norm="batchnorm")):  # a remainder the conv leaves out
        torch.manual_seed(0)
        encoder = ASTClassifier(ASTConfig(embed_dim=64, depth=1, num_heads=2, num_classes=2, **overrides)).encoder
        features = torch.randn(3, encoder.cfg.num_frames, 128)
        conv = encoder.patch_embed(encoder._normalize_input(features)).flatten(2).transpose(1, 2)
        assert torch.allclose(encoder.embed_patches(features), conv, atol=1e-5)


def test_lean_graph_model_computes_the_same_logits():
    waves = probe_clips(3, seed=7)
    for overrides in (dict(qkv_bias=False), dict(block="post", prefix_tokens=2, dist_head=True, pool="cls")):
        torch.manual_seed(0)
        cfg = ASTConfig(embed_dim=64, depth=2, num_heads=2, patch_f=128, patch_t=2, stride_f=128, stride_t=2,
                        num_frames=100, num_classes=4, **overrides)
        model = KeywordModel(LogMelFrontend(FrontendConfig()), ASTClassifier(cfg), LABELS).eval()
        for param in model.parameters():  # no unit norms or zero biases, which would hide a wrong fold
            torch.nn.init.normal_(param, std=0.3)
        lean = et_export.lean_for_xnnpack(model)
        assert lean is not model and not any(isinstance(m, Attention) for m in lean.modules())
        with torch.no_grad():
            assert torch.allclose(lean(waves), model(waves), atol=1e-5)


def test_pte_int8_keeps_front_end_float(model):
    calib, _ = tone_set(8, seed=3)
    graph = et_export.quantize_classifier(model, torch.zeros(1, 16000), calib).graph
    dequantize = {n for n in graph.nodes if "dequantize" in str(n.target)}
    frontend_ops, classifier_ops = [], []
    for node in graph.nodes:
        if node.op == "call_function" and any(op in str(node.target) for op in ("conv2d", "linear", "matmul")):
            paths = [path for path, _ in node.meta["nn_module_stack"].values()]
            reads_quantized = any(arg in dequantize for arg in node.args[:2])
            (frontend_ops if "frontend" in paths else classifier_ops).append(reads_quantized)
    # two matmuls per DFT stage (real, imaginary) and one per block of mel bins, all float
    assert len(frontend_ops) == 4 + len(model.frontend.mel_spans) and not any(frontend_ops)
    assert classifier_ops and all(classifier_ops)  # patch conv and every Linear are int8


@pytest.mark.parametrize("int8", [False, True])
def test_pte_lowers_to_one_xnnpack_call(model, int8):
    example = torch.zeros(1, 16000)
    lean = et_export.lean_for_xnnpack(model)
    graph_model = et_export.quantize_classifier(lean, example, tone_set(8, seed=3)[0]) if int8 else lean
    graph = et_export.lower_to_xnnpack(graph_model, example).exported_program().graph
    calls = [str(node.target) for node in graph.nodes if node.op == "call_function"]
    # no portable-op fallback anywhere: front end, patch embedding, norms, attention and pooling all run in XNNPACK
    assert [call for call in calls if "getitem" not in call] == ["executorch_call_delegate"]


def test_int8_onnx_needs_no_calibration_clips_but_int8_pte_does(model, heldout, tmp_path):
    with pytest.raises(ExportError, match=r"int8 \.pte export needs calibration clips"):
        export_model(model, tmp_path / "pte", int8=True, heldout=heldout)
    report = export_model(model, tmp_path / "onnx", formats=["onnx"], int8=True, heldout=heldout, min_agreement=0.95)
    assert report.passed and ArtifactMeta.load(tmp_path / "onnx" / "model.onnx").int8


def test_calibration_clips_are_balanced_and_in_model_label_order(tmp_path):
    levels = {"go": 0.1, "stop": 0.2, "yes": 0.3}  # each class's files hold a constant at its own level
    for label, level in levels.items():
        for speaker in range(12):
            save_audio(tmp_path / label / f"s{speaker}_nohash_0.wav", np.full(8000 + 800 * speaker, level, np.float32), 16000)
    labels = ["stop", "go", "yes"]
    waves, targets = labelled_clips(tmp_path, labels, "train", count=6)
    assert waves.shape == (6, 16000) and sorted(targets.tolist()) == [0, 0, 1, 1, 2, 2]
    for wave, target in zip(waves, targets):
        assert wave[0].item() == pytest.approx(levels[labels[target]], abs=1e-3)  # padded at the end to 1 s


def test_export_checkpoint_calibrates_and_checks_on_its_dataset(model, tmp_path):
    labels = ["low", "mid", "high", "top"]  # folder names (a folder dataset has no filler classes)
    waves, targets = tone_set(80, seed=6)
    for i, (wave, target) in enumerate(zip(waves, targets.tolist())):
        save_audio(tmp_path / "data" / labels[target] / f"s{i}_nohash_0.wav", wave.numpy(), 16000)
    save_model(model, tmp_path / "checkpoint", labels=labels)
    report = export_checkpoint(tmp_path / "checkpoint", tmp_path / "out", data=tmp_path / "data", int8=True,
                               formats=["onnx"], min_agreement=0.9)
    assert report.clip_source == "heldout" and 0 < report.clips < 40  # the test split only
    assert report.reference_accuracy is not None and report.results[0].accuracy is not None
    meta = ArtifactMeta.load(tmp_path / "out" / "model.onnx")
    assert meta.labels == labels and meta.int8 and meta.source == str(tmp_path / "checkpoint")
