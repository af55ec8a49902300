"""KeywordModel -> ONNX model, fp32 or int8 (dynamic), front end inside.

fp32: `torch.onnx.export(dynamo=True)` at opset 18 with one input `wave`
`[1, window_samples]` and one output `logits` `[1, classes]`. The exporter's
per-node debug metadata (module scopes, stack traces) and intermediate
`value_info` are dropped from the written file: a runtime needs neither, and
they were 24 % of a 64x4 student's fp32 file. Tensors get short ids for names
and nodes none, in either precision (`_shorten_names`).

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
MatMuls, norms, softmax and a patch-embedding Conv (overlapping patches) stay
float (as ConvInteger it was slower than the float Conv); non-overlapping
patches (frame tokens) are embedded by a MatMul, which is quantized. Every
node that computes the features is excluded too, so log-mel stays float. Those nodes are found from
the names the dynamo exporter records (`pkg.torch.onnx.name_scopes` metadata:
module path `frontend`); the optimizer drops that metadata and adds nodes, so
the exclusion list is everything upstream of the tensors where the front end
hands over to the classifier. The int8 file then leaves out the weights' zero
points (all zero) and stores its remaining float32 initializers as float16,
cast back in-graph (`_store_as_float16`), except the front end's DFT
constants and window: with the short names that took a 64x4 frame-token
student's int8 file from 40 % of its fp32 file to 29 %.

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
        if int8:
            proto, frontend_nodes = _quantize(fp32_path, Path(work))
            _drop_zero_weight_zero_points(proto)
            _store_as_float16(proto, _float16_names(proto, frontend_nodes, model.frontend.mel_weights()))
        else:
            proto = onnx.load(fp32_path)
        _drop_debug_info(proto)
        _shorten_names(proto)
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


def _drop_zero_weight_zero_points(proto) -> None:
    """Leave out MatMulInteger's weight zero points where they are all zero (symmetric int8: every one), in place.

    The input is optional and zero by default; the explicit zeros were one int8 per output channel.
    """
    from onnx import numpy_helper

    initializers = {init.name: init for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "MatMulInteger" and len(node.input) == 4 and node.input[3] in initializers:
            if not numpy_helper.to_array(initializers[node.input[3]]).any():
                node.input.pop()
    _drop_unused_initializers(proto)


def _float16_names(proto, frontend_nodes: list[str], mel_weights: list) -> set[str]:
    """The float32 initializers of more than one value that the int8 file stores as float16.

    All of them but the front end's, and of the front end's only the mel weights (found by value,
    as stored or transposed): its DFT constants and window stay float32. A tensor whose values
    float16 would not keep to 2^-10 relative or 2^-20 absolute (overflow, tiny scales) stays too.
    """
    import numpy as np
    from onnx import TensorProto, numpy_helper

    frontend_nodes = set(frontend_nodes)
    frontend = {name for node in proto.graph.node if node.name in frontend_nodes for name in node.input}
    mel = {(a.shape, a.tobytes()) for w in mel_weights for a in (w.numpy(), np.ascontiguousarray(w.numpy().T))}
    names = set()
    for init in proto.graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < 2:
            continue
        array = numpy_helper.to_array(init)
        half = array.astype(np.float16).astype(np.float32)
        kept = np.isfinite(half).all() and (np.abs(half - array) <= np.maximum(np.abs(array) * 2**-10, 2**-20)).all()
        if kept and (init.name not in frontend or (array.shape, array.tobytes()) in mel):
            names.add(init.name)
    return names


def _store_as_float16(proto, names: set[str]) -> None:
    """Store the float32 initializers `names` as float16, cast back to float32 in-graph, in place.

    ONNX Runtime folds the Casts when it loads the model, so they cost no time and the arithmetic
    stays float32. For the int8 file: its weight scales, biases, norms and positions round by 5e-4
    relative, a tenth of an int8 weight step; its mel weights move log-mel by < 5e-4 (a relative
    error of each mel energy, whose terms are all positive: inside the float32 front end's own
    distance from Kaldi). The DFT constants and window stay float32: the DFT's terms cancel, and
    float16 would raise its noise floor to ~-66 dB, moving the log of quiet bins by nats.
    """
    from onnx import TensorProto, helper, numpy_helper

    casts = []
    for init in proto.graph.initializer:
        if init.name in names:
            name = init.name
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype("float16"), f"{name}_fp16"))
            casts.append(helper.make_node("Cast", [init.name], [name], to=TensorProto.FLOAT))
    nodes = casts + list(proto.graph.node)  # before every reader: the graph stays topologically sorted
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def _drop_unused_initializers(proto) -> None:
    used = {name for node in proto.graph.node for name in node.input}
    kept = [init for init in proto.graph.initializer if init.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)


def _shorten_names(proto) -> None:
    """Rename every tensor but the graph's input and output to a short id and drop node names, in place.

    The exporter's and quantizer's names (``..._MatMul_output_quantized_cast_output``), each written
    once per node that reads the tensor, were 10 % of a 64x4 student's int8 file; a runtime needs none.
    """
    import numpy as np

    graph = proto.graph
    kept = {value.name for value in (*graph.input, *graph.output)}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in kept:
            return name
        if name not in short:
            short[name] = np.base_repr(len(short), 36)  # upper case: never "wave" or "logits"
        return short[name]

    for init in graph.initializer:
        init.name = rename(init.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]


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


def _quantize(fp32_path: Path, work: Path) -> tuple:
    """The int8 model and the names of its front end's (float) nodes."""
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
    return onnx.load(quantized), excluded
