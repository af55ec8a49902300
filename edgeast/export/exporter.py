"""Export a KeywordModel to `.pte` / `.onnx`, then prove the files match it.

After writing, every file is loaded in its real runtime and run on held-out
clips: top-1 agreement with the PyTorch fp32 model, accuracy, size, latency.
A file that agrees on fewer than `min_agreement` of the clips is not shipped.

Writing is all-or-nothing: everything is built in a staging folder inside the
output folder and renamed into place only after parity passes, so a failed
export (an exception, a failed parity check) leaves no model file behind.
"""

from __future__ import annotations

import copy
import importlib.metadata
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from edgeast.export.calibration import labelled_clips, probe_clips
from edgeast.export.executorch import export_pte
from edgeast.export.metadata import FORMAT_VERSION, ArtifactMeta
from edgeast.export.onnx import export_onnx
from edgeast.runtime.backends import Backend, ExecuTorchBackend, OnnxBackend

MODEL_FILES = {"pte": "model.pte", "onnx": "model.onnx"}
SIDECAR = "model.json"
PROBE_CLIPS = 64  # parity clips when neither held-out nor calibration clips are given
CALIB_CLIPS = 128  # from the training split, class balanced
HELDOUT_CLIPS = 400  # from the test split, class balanced


class ExportError(ValueError):
    """An export that cannot run as asked."""


class ExportExistsError(ExportError):
    """The output folder already holds an export."""


class ExportParityError(ExportError):
    """An exported file disagrees with the PyTorch model; nothing was shipped."""


@dataclass
class FormatParity:
    """How one exported file compares with the PyTorch fp32 model on the parity clips."""

    format: str
    file: str
    size_bytes: int
    agreement: float  # top-1 agreement with PyTorch fp32
    max_abs_diff: float  # largest logit difference
    accuracy: float | None  # None without targets
    latency_ms: float  # mean per window, one thread
    passed: bool


@dataclass
class ExportReport:
    out_dir: str
    int8: bool
    clips: int
    clip_source: str  # "heldout" | "calibration" | "probe" (synthetic)
    min_agreement: float
    reference_accuracy: float | None  # PyTorch fp32 on the same clips
    results: list[FormatParity] = field(default_factory=list)
    forced: bool = False

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """A markdown table, one row per file."""
        precision = "int8" if self.int8 else "fp32"
        head = (
            f"parity on {self.clips} {self.clip_source} clips (PyTorch fp32 accuracy: "
            f"{_percent(self.reference_accuracy)}; agreement needed: {self.min_agreement:.1%})\n\n"
            "| file | precision | size | top-1 agreement | max logit diff | accuracy | latency / window (1 thread) | parity |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
        )
        rows = [
            f"| {r.file} | {precision} | {r.size_bytes / 1e6:.2f} MB | {r.agreement:.1%} | {r.max_abs_diff:.2e} "
            f"| {_percent(r.accuracy)} | {r.latency_ms:.2f} ms | {'ok' if r.passed else 'FAILED'} |"
            for r in self.results
        ]
        return head + "\n".join(rows)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def export_model(
    model: nn.Module,
    out_dir: str | Path,
    *,
    formats: tuple[str, ...] | list[str] = ("pte", "onnx"),
    int8: bool = False,
    calib_waves: Tensor | None = None,
    heldout: tuple[Tensor, Tensor | None] | None = None,
    window_samples: int = 16000,
    min_agreement: float = 0.99,
    force: bool = False,
    overwrite: bool = False,
    source: str = "",
) -> ExportReport:
    """Write `model.pte` / `model.onnx` + `model.json` to `out_dir` and check them against `model`.

    `calib_waves` `[N, S]` (needed for an int8 `.pte`; int8 ONNX quantizes
    activations per call) are clips from the training data;
    `heldout` `(waves [N, S], targets [N] or None)` are the parity clips
    (default: the calibration clips, else synthetic probes). Raises
    `ExportParityError` when a file agrees with the model on fewer than
    `min_agreement` of the clips, unless `force` (then the files are kept and
    the report says so). `model` itself is not modified.
    """
    formats = _check_formats(formats)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    if int8 and calib_waves is None and "pte" in formats:
        raise ExportError("int8 .pte export needs calibration clips from the training data (--calib DATA)")
    for name, clips in (("calibration", calib_waves), ("held-out", None if heldout is None else heldout[0])):
        if clips is not None and (clips.dim() != 2 or clips.shape[1] != window_samples or len(clips) == 0):
            raise ExportError(f"{name} clips have shape {tuple(clips.shape)}; expected [N > 0, {window_samples}]")
    model = copy.deepcopy(model).cpu().float().eval()
    meta = artifact_meta(model, window_samples=window_samples, int8=int8, formats=formats, source=source)

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        staged = {fmt: staging / MODEL_FILES[fmt] for fmt in formats}
        for fmt, path in staged.items():
            if fmt == "pte":
                export_pte(
                    model, path, window_samples=window_samples, sample_rate=meta.sample_rate,
                    num_classes=len(meta.labels), format_version=FORMAT_VERSION, int8=int8, calib_waves=calib_waves,
                )
            else:
                export_onnx(model, path, window_samples=window_samples, meta_json=replace(meta, format=fmt).to_json(),
                            int8=int8)
        report = _parity(model, staged, meta, out_dir, calib_waves, heldout, min_agreement, window_samples)
        report.forced = force and not report.passed
        if not report.passed and not force:
            failed = "; ".join(
                f"{r.file} agrees with PyTorch on {r.agreement:.2%}" for r in report.results if not r.passed
            )
            raise ExportParityError(
                f"{'int8' if int8 else 'fp32'} export failed parity on {report.clips} {report.clip_source} clips "
                f"({failed}; need {min_agreement:.2%}): nothing was written to {out_dir}; "
                "check the calibration clips, or pass --force to keep the files"
            )
        meta.parity = {k: v for k, v in report.to_dict().items() if k != "out_dir"}  # the folder may move
        meta.save(staging / SIDECAR)
        _publish(staging, out_dir, [MODEL_FILES[fmt] for fmt in formats])
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    data=None,
    int8: bool = False,
    calib_clips: int = CALIB_CLIPS,
    heldout_clips: int = HELDOUT_CLIPS,
    **options,
) -> ExportReport:
    """`export_model` of a checkpoint directory, with clips from its dataset.

    `data` is the dataset folder (or a recipe's `DataConfig`, by its `root`):
    calibration clips come from its train split, parity clips from its test
    split. Without `data`, parity runs on synthetic probes and int8 is refused.
    `options` go to `export_model` (formats, window_samples, min_agreement, force, overwrite).
    """
    from edgeast.models.checkpoint import load_model

    model = load_model(checkpoint)
    calib = heldout = None
    if data is not None:
        root = data if isinstance(data, (str, Path)) else data.root
        window = options.get("window_samples", 16000)
        sample_rate = model.frontend.cfg.sample_rate
        clips = dict(window_samples=window, sample_rate=sample_rate)
        calib, _ = labelled_clips(root, model.labels, "train", calib_clips, **clips)
        heldout = labelled_clips(root, model.labels, "test", heldout_clips, seed=1, **clips)
    return export_model(model, out_dir, int8=int8, calib_waves=calib, heldout=heldout, source=str(checkpoint), **options)


def artifact_meta(model: nn.Module, *, window_samples: int, int8: bool, formats: list[str], source: str) -> ArtifactMeta:
    """The sidecar of an export of `model` (parity figures are added after the check)."""
    fcfg = model.frontend.cfg
    meta = ArtifactMeta(
        labels=list(model.labels),
        sample_rate=fcfg.sample_rate,
        window_samples=window_samples,
        hop_samples=fcfg.sample_rate // 10,
        normalization={"mean": fcfg.mean, "std": fcfg.std},
        format=",".join(formats),  # one sidecar serves every file of the export
        int8=int8,
        edgeast_version=_edgeast_version(),
        source=str(source),
    )
    meta.thresholds = {label: meta.default_threshold for label in meta.keywords()}
    return meta


def mean_latency_ms(backend: Backend, windows: np.ndarray, warmup: int = 2) -> float:
    """Mean wall time of `backend.infer` per window, after `warmup` untimed calls."""
    for window in windows[:warmup]:
        backend.infer(window)
    start = time.perf_counter()
    for window in windows:
        backend.infer(window)
    return (time.perf_counter() - start) * 1000 / len(windows)


def _parity(model, staged, meta, out_dir, calib_waves, heldout, min_agreement, window_samples) -> ExportReport:
    if heldout is not None:
        waves, targets, source = heldout[0], heldout[1], "heldout"
    elif calib_waves is not None:
        waves, targets, source = calib_waves, None, "calibration"
    else:
        waves, targets, source = probe_clips(PROBE_CLIPS, window_samples, meta.sample_rate), None, "probe"
    waves = waves.float()
    with torch.no_grad():
        reference = torch.cat([model(batch) for batch in waves.split(32)]).numpy()
    targets = None if targets is None else np.asarray(targets)
    report = ExportReport(
        out_dir=str(out_dir), int8=meta.int8, clips=len(waves), clip_source=source, min_agreement=min_agreement,
        reference_accuracy=_accuracy(reference, targets),
    )
    windows = waves.numpy()
    for fmt, path in staged.items():
        backend_cls = ExecuTorchBackend if fmt == "pte" else OnnxBackend
        backend = backend_cls(path, replace(meta, format=fmt), num_threads=1)
        logits = backend.infer_batch(windows)
        agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
        report.results.append(FormatParity(
            format=fmt, file=MODEL_FILES[fmt], size_bytes=path.stat().st_size, agreement=agreement,
            max_abs_diff=float(np.abs(logits - reference).max()), accuracy=_accuracy(logits, targets),
            latency_ms=mean_latency_ms(backend, windows[:32]), passed=agreement >= min_agreement,
        ))
    return report


def _accuracy(logits: np.ndarray, targets: np.ndarray | None) -> float | None:
    return None if targets is None else float((logits.argmax(1) == targets).mean())


def _check_formats(formats) -> list[str]:
    formats = list(dict.fromkeys(formats))
    unknown = [fmt for fmt in formats if fmt not in MODEL_FILES]
    if unknown or not formats:
        raise ExportError(f"export formats {unknown or formats}: choose from {', '.join(MODEL_FILES)}")
    return formats


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportExistsError(f"{out_dir} is a file; give a folder for the export")
    existing = [name for name in (*MODEL_FILES.values(), SIDECAR) if (out_dir / name).exists()]
    if existing and not overwrite:
        raise ExportExistsError(
            f"{out_dir} already holds an export ({', '.join(existing)}); pass --overwrite to replace it "
            "or choose another --out"
        )


def _publish(staging: Path, out_dir: Path, model_files: list[str]) -> None:
    """Rename the staged files into `out_dir`; model files of formats not in this export are removed."""
    for name in MODEL_FILES.values():
        if name not in model_files:
            (out_dir / name).unlink(missing_ok=True)
    for name in [*model_files, SIDECAR]:
        (staging / name).replace(out_dir / name)


def _edgeast_version() -> str:
    try:
        return importlib.metadata.version("edgeast")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return ""
