"""KeywordModel -> ExecuTorch program (`.pte`) delegated to XNNPACK, fp32 or int8.

The whole model, front end included, is one `torch.export` graph that takes a
raw PCM window `[1, window_samples]` and returns logits `[1, classes]`.

int8 uses the PT2E flow: ExecuTorch's `XNNPACKQuantizer` annotates every
Linear and Conv outside the `frontend` submodule (symmetric int8, per-channel
weights), the graph is observed on calibration clips and converted to
quantize/dequantize pairs that the XNNPACK partitioner fuses into int8
kernels. The front end's DFT and mel matmuls stay in float: log-mel
precision matters more than their cost. Residual adds, norms and attention
stay float too: quantizing the adds as well (the quantizer's global config)
tripled the mean logit error and saved no time.

The lowered program is one XNNPACK delegate call with no portable-op
fallbacks. XNNPACK's partitioner has no layer norm, squeeze, expand or mean
over a 3-D tensor, and each op it leaves out splits the graph: a 64x4 student
was 24 delegate calls around 42 portable ops. So before lowering, those ops
are rewritten from ones it takes (`XNNPACK_DECOMPOSITIONS`: a mean is a matmul
with a constant `1/n` row, attention a batched matmul of 3-D views, unbind
step-1 slices), and constant propagation folds what depends on weights only
(class token + position, the `1/n` rows) into constants; quantize/dequantize
ops are left alone so int8 weights stay int8. That made the int8 student's
file 4 % smaller and its window about 25 % faster. Attention is lowered as
plain `softmax(q k^T * scale) v`: the default decomposition of
`scaled_dot_product_attention` guards fully masked rows with
any/where/logical_not ops that XNNPACK does not run.

Why a filter rather than `set_module_name("classifier", ...)`: that filter
is also applied to a conv's weight node, a `get_attr` that carries no module
stack, so the classifier's patch-embedding conv would silently stay float.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
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
    q3, k3, v3 = (t.reshape(-1, t.shape[-2], t.shape[-1]) for t in (q, k, v))  # bmm needs no expand
    weights = torch.softmax(torch.bmm(q3 * scale, k3.transpose(1, 2)), dim=-1)
    return torch.bmm(weights, v3).reshape(*q.shape[:-1], v.shape[-1])


def _mean_of_last(x: Tensor) -> Tensor:
    """Mean over the last dim as a matmul with a constant row (folded to a weight before lowering)."""
    return F.linear(x, torch.full((1, x.shape[-1]), 1.0 / x.shape[-1], dtype=x.dtype))


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    if len(normalized_shape) != 1:
        raise ValueError(f"the .pte export lowers layer norm over the last dim only, not {list(normalized_shape)}")
    centered = x - _mean_of_last(x)
    out = centered * torch.rsqrt(_mean_of_last(centered * centered) + eps)
    out = out if weight is None else out * weight
    return out if bias is None else out + bias


def _mean(x, dim=None, keepdim=False, dtype=None):
    x = x if dtype is None else x.to(dtype)
    reduced = sorted(d % x.dim() for d in (range(x.dim()) if dim is None else dim))
    kept = [d for d in range(x.dim()) if d not in reduced]
    rows = x.permute(*kept, *reduced).reshape(*[x.shape[d] for d in kept], -1)
    shape = [1 if d in reduced else x.shape[d] for d in range(x.dim())] if keepdim else [x.shape[d] for d in kept]
    return _mean_of_last(rows).reshape(shape)


def _unbind(x, dim=0):
    dim = dim % x.dim()
    shape = [size for d, size in enumerate(x.shape) if d != dim]
    return [x.narrow(dim, i, 1).reshape(shape) for i in range(x.shape[dim])]


def _unsqueeze(x, dim):
    dim = dim % (x.dim() + 1)
    return x.reshape(*x.shape[:dim], 1, *x.shape[dim:])


XNNPACK_DECOMPOSITIONS = {
    torch.ops.aten.scaled_dot_product_attention.default: _plain_attention,
    torch.ops.aten.layer_norm.default: _layer_norm,
    torch.ops.aten.mean.dim: _mean,
    torch.ops.aten.unbind.int: _unbind,
    torch.ops.aten.unsqueeze.default: _unsqueeze,
}


def lower_to_xnnpack(model: nn.Module, example: Tensor, constant_methods: dict | None = None):
    """`model` (float, or int8 from `quantize_classifier`) as an `EdgeProgramManager` lowered to XNNPACK.

    It is exported, rewritten with `XNNPACK_DECOMPOSITIONS` and constant-folded
    (quantize/dequantize ops excepted) before the partitioner runs.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    program = torch.export.export(model, (example,), strict=False).run_decompositions(XNNPACK_DECOMPOSITIONS)
    quant_ops = {
        node.target for node in program.graph.nodes
        if node.op == "call_function" and getattr(node.target, "namespace", "") in ("quantized_decomposed", "torchao")
    }
    program = constant_prop_pass(program, custom_skip_targets=quant_ops)
    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], constant_methods=constant_methods)


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
    example = torch.zeros(1, window_samples)
    if int8:
        if calib_waves is None:
            raise ValueError("int8 export needs calibration clips (calib_waves); pass clips from the training data")
        model = quantize_classifier(model, example, calib_waves)
    constants = dict(
        sample_rate=sample_rate, window_samples=window_samples, num_classes=num_classes,
        format_version=format_version,
    )
    Path(path).write_bytes(lower_to_xnnpack(model, example, constants).to_executorch().buffer)
