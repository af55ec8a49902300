"""KeywordModel -> ONNX model, fp32 or int8 (dynamic), front end inside.

fp32: `torch.onnx.export(dynamo=True)` at opset 18 with one input `wave`
`[1, window_samples]` and one output `logits` `[1, classes]`. The exporter's
per-node debug metadata (module scopes, stack traces) and intermediate
`value_info` are dropped from the written file: a runtime needs neither, and
they were 24 % of a 64x4 student's fp32 file.

int8: ONNX Runtime dynamic quantization after `quant_pre_process` (symbolic
shape inference + graph optimization; without it `quantize_dynamic` fails on a
dynamo-exported transformer): the weight of every MatMul/Gemm with a constant
weight outside the front end is int8 per output channel, and ONNX Runtime
quantizes each such MatMul's input per call (one fused DynamicQuantizeMatMul
kernel). Measured side by side against static QDQ with calibrated activations:
a 64x4 student ran 0.88-0.90x its fp32 time at 1 and 2 threads where static
QDQ ran 1.03-1.09x (its Quantize/Dequantize nodes cost more than int8 GEMMs
on 64-wide matrices save), and the 192x12 teacher 0.48-0.51x (QDQ 0.59x);
the largest logit error vs fp32 was also smaller (student 0.004 vs 0.007,
teacher 0.009 vs 0.074). Attention's activation x activation
MatMuls, norms, softmax and the patch-embedding Conv stay float (as
ConvInteger it was slower than the float Conv). Every node that computes the
features is excluded too, so log-mel stays float. Those nodes are found from
the names the dynamo exporter records (`pkg.torch.onnx.name_scopes` metadata:
module path `frontend`); the optimizer drops that metadata and adds nodes, so
the exclusion list is everything upstream of the tensors where the front end
hands over to the classifier.

The sidecar's JSON rides in the model too, as `metadata_props["edgeast"]`.
"""

from __future__ import annotations

import ast
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

OPSET = 18
INPUT_NAME = "wave"
OUTPUT_NAME = "logits"
META_KEY = "edgeast"
FRONTEND_SCOPE = "frontend"
QUANTIZED_OPS = ("MatMul", "Gemm")  # only those with a constant weight (`MatMulConstBOnly`, on by default)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    window_samples: int,
    meta_json: str,
    int8: bool = False,
) -> None:
    """Write `model` as a checked ONNX file to `path`, with `meta_json` embedded."""
    import onnx

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=".onnx-work-", dir=path.parent) as work:
        fp32_path = Path(work) / "fp32.onnx"
        _export_fp32(model, fp32_path, window_samples)
        proto = _quantize(fp32_path, Path(work)) if int8 else onnx.load(fp32_path)
        _drop_debug_info(proto)
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


def _drop_debug_info(proto) -> None:
    """Remove per-node metadata and doc strings and intermediate shape records, in place."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.value_info[:]


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


def _quantize(fp32_path: Path, work: Path):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared, quantized = work / "prepared.onnx", work / "int8.onnx"
    quant_pre_process(str(fp32_path), str(prepared))
    excluded = frontend_node_names(onnx.load(fp32_path), onnx.load(prepared))
    quantize_dynamic(
        str(prepared), str(quantized), per_channel=True, weight_type=QuantType.QInt8,
        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=excluded,
    )
    return onnx.load(quantized)
