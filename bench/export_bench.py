"""fp32 vs int8 exports side by side: size, agreement, accuracy, latency per 1 s window.

For each model: export fp32 and int8 to ExecuTorch (.pte, XNNPACK) and ONNX,
then time one window at a time in each runtime with 1 and 2 threads, PyTorch
eager for reference. Runtimes are measured in interleaved rounds (every
other round in reverse order) and the median round is reported, so a busy
shared machine skews them alike.

    python bench/export_bench.py                                   # the quickstart's teacher + student, random init
    python bench/export_bench.py --checkpoint runs/teacher --checkpoint runs/student --data data/synth
    python bench/export_bench.py --sizes student=student-64x4:frame --breakdown   # what fills each file

Random-init models give meaningful size and latency but not agreement or
accuracy; give trained checkpoints and their data for those. (A random-init
model's biases are all zero and its norms all one, so the exporters store
each of those once: its files are a few KB smaller than a trained model's.)
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeast.audio.frontend import FrontendConfig, LogMelFrontend
from edgeast.config import load_config
from edgeast.export.calibration import labelled_clips, probe_clips
from edgeast.export.executorch import lean_for_xnnpack
from edgeast.export.exporter import MODEL_FILES, ExportReport, export_model, mean_latency_ms
from edgeast.models.ast import TOKENIZERS, ASTClassifier, ast_config
from edgeast.models.checkpoint import load_model
from edgeast.models.keyword import KeywordModel
from edgeast.runtime.backends import open_backend
from edgeast.stages.recipe import Recipe

LABELS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_unknown_", "_silence_"]


def recipe_sizes(path: str) -> dict[str, tuple[str, dict]]:
    """name -> (size, overrides) of the recipe's teacher and student: the bench follows the recipe."""
    recipe = load_config(Recipe, path)
    student = recipe.distill.student_model()
    return {"teacher": (recipe.teacher.size, recipe.teacher.overrides), "student": (student.size, student.overrides)}


def build_models(args) -> dict[str, KeywordModel]:
    if args.checkpoint:
        return {Path(path).name: load_model(path) for path in args.checkpoint}
    torch.manual_seed(0)
    if args.sizes:  # name=size[:tokenizer] (edgeast.models.ast.SIZES, TOKENIZERS)
        specs, sizes = args.sizes, {}
        for name, spec in specs.items():
            size, _, tokenizer = spec.partition(":")
            sizes[name] = (size, TOKENIZERS[tokenizer] if tokenizer else {})
    else:
        sizes = recipe_sizes(args.recipe)
        specs = {name: f"{size} {overrides}" if overrides else size for name, (size, overrides) in sizes.items()}
    models = {}
    for name, (size, overrides) in sizes.items():
        config = ast_config(size, num_classes=len(LABELS), **overrides)
        models[f"{name} ({specs[name]}, random init)"] = KeywordModel(
            LogMelFrontend(FrontendConfig()), ASTClassifier(config), LABELS
        ).eval()
    return models


def clips(args, model: KeywordModel):
    if args.data:
        calib, _ = labelled_clips(args.data, model.labels, "train", args.calib)
        return calib, labelled_clips(args.data, model.labels, "test", args.heldout, seed=1)
    return probe_clips(args.calib), (probe_clips(args.heldout, seed=1), None)


def eager_latency(model: KeywordModel, windows: torch.Tensor, threads: int) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for window in windows[:2]:
                model(window[None])
            start = time.perf_counter()
            for window in windows:
                model(window[None])
            return (time.perf_counter() - start) * 1000 / len(windows)
    finally:
        torch.set_num_threads(previous)


def file_latency(path: Path, windows: np.ndarray, threads: int) -> float:
    backend = open_backend(path, num_threads=threads)  # dropped on return: ExecuTorch's pool may be resized next
    return mean_latency_ms(backend, windows)


def bench_model(name: str, model: KeywordModel, args, out: Path) -> tuple[list[dict], dict[bool, ExportReport]]:
    calib, heldout = clips(args, model)
    reports: dict[bool, ExportReport] = {}
    for int8 in (False, True):
        reports[int8] = export_model(
            model, out / name.split()[0] / ("int8" if int8 else "fp32"), formats=args.formats, int8=int8,
            calib_waves=calib, heldout=heldout, force=True, overwrite=True, source=name,
        )
    windows = probe_clips(args.windows, seed=2)
    timings: dict[tuple, list[float]] = {}
    files = [(fmt, int8) for fmt in args.formats for int8 in (False, True)]
    for round_index in range(args.rounds):
        for threads in args.threads:
            timings.setdefault(("pytorch", False, threads), []).append(eager_latency(model, windows, threads))
            # Every other round in reverse, so that no file always runs in the same slot of a busy machine.
            for fmt, int8 in files if round_index % 2 == 0 else files[::-1]:
                path = Path(reports[int8].out_dir) / MODEL_FILES[fmt]
                timings.setdefault((fmt, int8, threads), []).append(file_latency(path, windows.numpy(), threads))
    latency = {key: statistics.median(values) for key, values in timings.items()}

    rows = [dict(model=name, runtime="pytorch", precision="fp32", size=None, size_ratio=None, agreement=None,
                 accuracy=reports[False].reference_accuracy,
                 **{f"ms_{t}": latency[("pytorch", False, t)] for t in args.threads}, ratio={})]
    for fmt in args.formats:
        fp32 = next(r for r in reports[False].results if r.format == fmt)
        for int8 in (False, True):
            result = next(r for r in reports[int8].results if r.format == fmt)
            rows.append(dict(
                model=name, runtime={"pte": "ExecuTorch/XNNPACK", "onnx": "ONNX Runtime"}[fmt],
                precision="int8" if int8 else "fp32", size=result.size_bytes,
                size_ratio=result.size_bytes / fp32.size_bytes if int8 else None,
                agreement=result.agreement, accuracy=result.accuracy,
                **{f"ms_{t}": latency[(fmt, int8, t)] for t in args.threads},
                ratio={t: latency[(fmt, True, t)] / latency[(fmt, False, t)] for t in args.threads} if int8 else {},
            ))
    return rows, reports


def _tensor_roles(model: KeywordModel) -> tuple[dict[bytes, str], set[int]]:
    """Float32 bytes of every known tensor -> its role, and the sizes of the classifier's matmul weights.

    Tensors are also known rounded to float16 (the int8 ONNX file stores most of its floats so).
    """
    roles: dict[bytes, str] = {}

    def add(tensor, role):  # as stored and transposed (ONNX keeps a MatMul weight as [in, out]), exact and rounded
        tensor = tensor.detach().float()
        for variant in [tensor, tensor.reshape(tensor.shape[0], -1).T] if tensor.dim() > 1 else [tensor]:
            for rounded in (variant, variant.half().float()):
                roles.setdefault(rounded.contiguous().numpy().tobytes(), role)

    for buffer in model.frontend.buffers():
        add(buffer, "front end constants")
    weights = [module.weight for module in model.classifier.modules() if isinstance(module, (nn.Linear, nn.Conv2d))]
    for tensor in model.classifier.parameters():
        add(tensor, "matmul/conv weights (float)" if any(tensor is w for w in weights) else "biases, norms, positions")
    encoder = model.classifier.encoder
    add(encoder.pos_embed[:, encoder.num_prefix:], "biases, norms, positions")  # folded out of the class token's
    return roles, {w.numel() for w in weights}


def _role(blob: bytes, roles: dict[bytes, str], weight_sizes: set[int], int8: bool) -> str:
    if blob in roles:
        return roles[blob]
    if int8 and len(blob) in weight_sizes and not _reads_as_scales(blob):
        return "matmul/conv weights (int8)"
    return "scales, int32 biases, other"


def _reads_as_scales(blob: bytes) -> bool:
    """Per-channel scales read as float32 are all finite, non-negative and small; int8 weights are not."""
    if len(blob) % 4:
        return False
    values = np.frombuffer(blob, dtype=np.float32)
    return bool(np.isfinite(values).all() and (values >= 0).all() and (values < 1e3).all())


def pte_breakdown(path: Path, model: KeywordModel, int8: bool) -> Counter:
    """Bytes of a `.pte` by what they hold, read from the file (ExecuTorch's own, private, reader)."""
    from executorch.exir._serialize._program import _get_extended_header, deserialize_pte_binary

    data = path.read_bytes()
    pte = deserialize_pte_binary(data)
    roles, weight_sizes = _tensor_roles(lean_for_xnnpack(model))  # the weights as the .pte holds them
    parts = Counter({"program flatbuffer": _get_extended_header(data).program_size,
                     "XNNPACK graph": sum(len(d.data) for d in pte.program.backend_delegate_data)})
    blobs = [pte.named_data.buffers[entry.buffer_index] for entry in pte.named_data.pte_data.values()]
    blobs += [bytes(buffer.storage) for buffer in pte.program.constant_buffer]
    for blob in blobs:
        parts[_role(blob, roles, weight_sizes, int8)] += len(blob)
    parts["alignment padding"] = len(data) - sum(parts.values())
    return parts


def onnx_breakdown(path: Path, model: KeywordModel, int8: bool) -> Counter:
    """Bytes of an `.onnx` by what they hold: initializers by role, the rest is the graph."""
    import onnx
    from onnx import numpy_helper

    roles, weight_sizes = _tensor_roles(model)
    parts = Counter()
    for init in onnx.load(path).graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.int8:
            role = "matmul/conv weights (int8)"
        elif array.dtype in (np.float32, np.float16):  # unknown float16: the int8 weights' scales
            unknown = "biases, norms, positions" if array.dtype == np.float32 else "scales, int32 biases, other"
            role = roles.get(array.astype(np.float32).tobytes(), unknown)
        else:
            role = "scales, int32 biases, other"
        parts[role] += array.nbytes
    parts["graph (nodes, names)"] = path.stat().st_size - sum(parts.values())
    return parts


def breakdown_table(name: str, model: KeywordModel, reports: dict[bool, ExportReport], formats: list[str]) -> str:
    readers = {"pte": pte_breakdown, "onnx": onnx_breakdown}
    columns = {f"{fmt} {'int8' if int8 else 'fp32'}": readers[fmt](Path(reports[int8].out_dir) / MODEL_FILES[fmt],
                                                                    model, int8)
               for fmt in formats for int8 in (False, True)}
    roles = list(dict.fromkeys(role for parts in columns.values() for role in parts))
    lines = [f"bytes in each file of {name}:", "", "| part | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for role in roles:
        lines.append(f"| {role} | " + " | ".join(f"{parts.get(role, 0):,}" for parts in columns.values()) + " |")
    lines.append("| total | " + " | ".join(f"{sum(parts.values()):,}" for parts in columns.values()) + " |")
    return "\n".join(lines)


def markdown(rows: list[dict], threads: list[int]) -> str:
    def pct(value):
        return "" if value is None else f"{value:.1%}"

    head = ["model", "runtime", "precision", "size", "int8/fp32 size", "agreement", "accuracy"]
    head += [f"ms/window, {t} thread{'s' if t > 1 else ''}" for t in threads]
    head += [f"int8/fp32 time, {t}T" for t in threads]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [row["model"], row["runtime"], row["precision"],
                 "" if row["size"] is None else f"{row['size'] / 1e6:.2f} MB",
                 "" if row["size_ratio"] is None else f"{row['size_ratio']:.0%}",
                 pct(row["agreement"]), pct(row["accuracy"])]
        cells += [f"{row[f'ms_{t}']:.2f}" for t in threads]
        cells += [f"{row['ratio'][t]:.2f}" if t in row["ratio"] else "" for t in threads]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", help="trained checkpoint directory (repeatable)")
    parser.add_argument("--data", help="the checkpoints' dataset: calibration from train, parity on test")
    parser.add_argument("--recipe", default="train/recipes/quickstart.yaml",
                        help="random-init models: this recipe's teacher and student (unless --sizes)")
    parser.add_argument("--sizes", help="random-init models to build instead, name=size[:tokenizer],... "
                        "(tokenizer: patch or frame)", type=lambda s: dict(item.split("=") for item in s.split(",")))
    parser.add_argument("--formats", default="pte,onnx", type=lambda s: s.split(","))
    parser.add_argument("--threads", default="1,2", type=lambda s: [int(t) for t in s.split(",")])
    parser.add_argument("--calib", type=int, default=128, help="calibration clips")
    parser.add_argument("--heldout", type=int, default=200, help="parity clips")
    parser.add_argument("--windows", type=int, default=20, help="windows timed per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median reported)")
    parser.add_argument("--out", help="where the exports go (default: a temporary folder)")
    parser.add_argument("--breakdown", action="store_true", help="also print what fills each file, by part")
    args = parser.parse_args(argv)
    if args.data and not args.checkpoint:
        parser.error("--data needs --checkpoint (random-init models have no labels to match)")

    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        out = Path(args.out or tmp)
        rows, breakdowns = [], []
        for name, model in build_models(args).items():
            model_rows, reports = bench_model(name, model, args, out)
            rows += model_rows
            if args.breakdown:
                breakdowns.append(breakdown_table(name, model, reports, args.formats))
    print(markdown(rows, args.threads))
    for table in breakdowns:
        print("\n" + table)
    print(f"\ntorch {torch.__version__}, intra-op threads as listed; median of {args.rounds} interleaved rounds "
          f"of {args.windows} windows; agreement = top-1 vs PyTorch fp32 on "
          f"{args.heldout} {'held-out' if args.data else 'synthetic probe'} clips")
    print("command: python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))


if __name__ == "__main__":
    main()
