"""KeywordModel -> ExecuTorch program (`.pte`) delegated to XNNPACK, fp32 or int8.

The whole model, front end included, is one `torch.export` graph that takes a
raw PCM window `[1, window_samples]` and returns logits `[1, classes]`.

int8 uses the PT2E flow: ExecuTorch's `XNNPACKQuantizer` annotates every
Linear and Conv outside the `frontend` submodule (symmetric int8, per-channel
weights), the graph is observed on calibration clips and converted to
quantize/dequantize pairs that the XNNPACK partitioner fuses into int8
kernels. The DFT conv and the mel matmul stay in float: log-mel precision
matters more than their cost. Residual adds, norms and attention stay float
too: quantizing the adds as well (the quantizer's global config) tripled the
mean logit error and saved no time.

Attention is lowered as plain `softmax(q k^T * scale) v`: the default
decomposition of `scaled_dot_product_attention` guards fully masked rows with
any/where/logical_not ops that XNNPACK does not run, which split every block
into several delegate calls (plain attention measured 20-24 % faster for a
64x4 student, fp32 and int8, and lowers faster).

Why a filter rather than `set_module_name("classifier", ...)`: that filter
is also applied to a conv's weight node, a `get_attr` that carries no module
stack, so the classifier's patch-embedding conv would silently stay float.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn


def quantize_classifier(model: nn.Module, example: Tensor, calib_waves: Tensor) -> torch.fx.GraphModule:
    """The model as a PT2E graph with int8 quantize/dequantize around each Linear and Conv outside the front end.

    `calib_waves` `[N, S]` are run one window at a time through the observed
    graph, exactly as the app will call it.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calib_waves.dim() != 2 or calib_waves.shape[1] != example.shape[1] or len(calib_waves) == 0:
        raise ValueError(
            f"calibration clips have shape {tuple(calib_waves.shape)}; expected [N > 0, {example.shape[1]}]"
        )
    config = get_symmetric_quantization_config(is_per_channel=True)
    quantizer = XNNPACKQuantizer().set_filter_function(_outside_frontend)
    for op in (torch.ops.aten.linear.default, torch.ops.aten.conv2d.default):
        quantizer.set_operator_type(op, config)
    graph = torch.export.export(model, (example,), strict=False).module()
    observed = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for wave in calib_waves.float():
            observed(wave[None])
    return convert_pt2e(observed)


def _outside_frontend(node: torch.fx.Node) -> bool:
    paths = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
    return not any(path == "frontend" or path.startswith("frontend.") for path in paths)


def _plain_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if attn_mask is not None or is_causal or dropout_p or enable_gqa:
        raise ValueError("the .pte export lowers unmasked attention only (no mask, causal, dropout or GQA)")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1) @ v


def export_pte(
    model: nn.Module,
    path: str | Path,
    *,
    window_samples: int,
    sample_rate: int,
    num_classes: int,
    format_version: int,
    int8: bool = False,
    calib_waves: Tensor | None = None,
) -> None:
    """Write `model` as an XNNPACK-delegated ExecuTorch program to `path`.

    The scalars are also stored as constant methods of the program (an app can
    `load_method("sample_rate")` without the sidecar); labels live in the sidecar.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    example = torch.zeros(1, window_samples)
    if int8:
        if calib_waves is None:
            raise ValueError("int8 export needs calibration clips (calib_waves); pass clips from the training data")
        model = quantize_classifier(model, example, calib_waves)
    program = torch.export.export(model, (example,), strict=False).run_decompositions(
        {torch.ops.aten.scaled_dot_product_attention.default: _plain_attention}
    )
    constants = dict(
        sample_rate=sample_rate, window_samples=window_samples, num_classes=num_classes,
        format_version=format_version,
    )
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], constant_methods=constants)
    Path(path).write_bytes(edge.to_executorch().buffer)
