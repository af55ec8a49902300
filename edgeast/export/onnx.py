"""KeywordModel -> ONNX model, fp32 or int8 (static QDQ), front end inside.

fp32: `torch.onnx.export(dynamo=True)` at opset 18 with one input `wave`
`[1, window_samples]` and one output `logits` `[1, classes]`.

int8: ONNX Runtime static quantization in QDQ format (per-channel int8
weights, activations calibrated on clips from the training data) after
`quant_pre_process` (symbolic shape inference + graph optimization).
`quantize_dynamic` fails on a dynamo-exported transformer (shape inference),
which is why the static path is used. Every node that computes the features
is excluded, so log-mel stays float. Those nodes are found from the names the
dynamo exporter records (`pkg.torch.onnx.name_scopes` metadata: module path
`frontend`); the optimizer drops that metadata and adds nodes, so the
exclusion list is everything upstream of the tensors where the front end
hands over to the classifier.

The sidecar's JSON rides in the model too, as `metadata_props["edgeast"]`.
"""

from __future__ import annotations

import ast
import json
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

OPSET = 18
INPUT_NAME = "wave"
OUTPUT_NAME = "logits"
META_KEY = "edgeast"
FRONTEND_SCOPE = "frontend"
# Ops with weights, which carry the model's size and time. Attention's
# activation x activation MatMuls stay float (quantized, they cost accuracy and
# saved no time; `MatMulConstBOnly` does not apply to QDQ), as do norms,
# softmax and element-wise ops.
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    window_samples: int,
    meta_json: str,
    int8: bool = False,
    calib_waves: Tensor | None = None,
) -> None:
    """Write `model` as a checked ONNX file to `path`, with `meta_json` embedded."""
    import onnx

    path = Path(path)
    if int8 and calib_waves is None:
        raise ValueError("int8 export needs calibration clips (calib_waves); pass clips from the training data")
    with tempfile.TemporaryDirectory(prefix=".onnx-work-", dir=path.parent) as work:
        fp32_path = Path(work) / "fp32.onnx"
        _export_fp32(model, fp32_path, window_samples)
        proto = _quantize(fp32_path, Path(work), calib_waves) if int8 else onnx.load(fp32_path)
        del proto.metadata_props[:]
        proto.metadata_props.add(key=META_KEY, value=meta_json)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, path)


def read_embedded_meta(path: str | Path) -> dict:
    """The sidecar JSON stored in an ONNX file by `export_onnx`."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == META_KEY:
            return json.loads(prop.value)
    raise ValueError(f"{path}: no '{META_KEY}' metadata in this ONNX file; export it with `edgeast export`")


def frontend_node_names(fp32_proto, optimized_proto) -> list[str]:
    """Names of the nodes of `optimized_proto` that compute the front end's output."""
    scoped = [node for node in fp32_proto.graph.node if _is_frontend(node)]
    if not scoped:
        raise ValueError("the exported ONNX graph has no nodes from the `frontend` submodule; is it a KeywordModel?")
    frontend_outputs = {name for node in scoped for name in node.output}
    handover = {
        name for node in fp32_proto.graph.node if not _is_frontend(node)
        for name in node.input if name in frontend_outputs
    }
    producer = {name: node for node in optimized_proto.graph.node for name in node.output}
    missing = sorted(handover - set(producer))
    if missing:
        raise ValueError(f"ONNX pre-processing renamed the front end's output tensors {missing}; cannot keep it float")
    names: set[str] = set()
    pending = list(handover)
    while pending:
        node = producer.get(pending.pop())
        if node is not None and node.name not in names:
            names.add(node.name)
            pending.extend(node.input)
    return sorted(names)


def _activation_matmuls(proto) -> list[str]:
    """MatMul nodes with no constant operand (attention's q @ k^T and weights @ v)."""
    constants = {init.name for init in proto.graph.initializer}
    constants |= {out for node in proto.graph.node if node.op_type == "Constant" for out in node.output}
    return [node.name for node in proto.graph.node
            if node.op_type == "MatMul" and not any(name in constants for name in node.input)]


def _is_frontend(node) -> bool:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)  # a Python list literal of module paths
            return len(scopes) > 1 and scopes[1] == FRONTEND_SCOPE
    return False


def _export_fp32(model: nn.Module, path: Path, window_samples: int) -> None:
    example = torch.zeros(1, window_samples)
    program = torch.onnx.export(
        model, (example,), dynamo=True, opset_version=OPSET,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
    )
    program.save(str(path), external_data=False)


def _quantize(fp32_path: Path, work: Path, calib_waves: Tensor):
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgeast.export.calibration import ClipReader

    prepared, quantized = work / "prepared.onnx", work / "int8.onnx"
    quant_pre_process(str(fp32_path), str(prepared))
    prepared_proto = onnx.load(prepared)
    excluded = frontend_node_names(onnx.load(fp32_path), prepared_proto) + _activation_matmuls(prepared_proto)
    quantize_static(
        str(prepared), str(quantized), ClipReader(calib_waves, INPUT_NAME),
        quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=excluded,
    )
    return onnx.load(quantized)
