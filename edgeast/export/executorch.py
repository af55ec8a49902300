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
tripled the mean logit error and saved no time. Activations are quantized
statically: dynamic (per-call) quantization made the 64x4 frame-token
student's file 5 % smaller (no int32 biases, fewer converts) but its window
50 % slower, no faster than fp32.

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

Small models pay for every graph node: XNNPACK serializes each node (~50
bytes), each tensor (~60) and each constant's 64-character key (~100, and
again in the program). So the model is first rewritten by `lean_for_xnnpack`
(same logits to float rounding): attention as q/k/v row blocks of one tensor
with the softmax scale folded into q's weights, norms that feed a Linear with
their scale and shift folded into it, the norm's `eps` as the bias of its
variance matmul. That cut the 64x4 frame-token student's int8 graph from 311
to 264 nodes (its files: fp32 7 KB, int8 6 KB smaller) and its int8 window
from 0.54 to 0.46 ms. Not possible with this ExecuTorch: constants stored as
float16 (the partitioner takes no dtype conversion), and equal constants
shared by one placeholder (the program crashes at load).

Why a filter rather than `set_module_name("classifier", ...)`: that filter
is also applied to a conv's weight node, a `get_attr` that carries no module
stack, so the classifier's patch-embedding conv would silently stay float.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeast.models.ast import ASTClassifier, Attention, Block


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


def _softmax_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q k^T) v`` of 3-D ``[batch, tokens, dim]`` tensors, q already scaled (bmm needs no expand)."""
    return torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1), v)


def _plain_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if attn_mask is not None or is_causal or dropout_p or enable_gqa:
        raise ValueError("the .pte export lowers unmasked attention only (no mask, causal, dropout or GQA)")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q3, k3, v3 = (t.reshape(-1, t.shape[-2], t.shape[-1]) for t in (q, k, v))
    return _softmax_attention(q3 * scale, k3, v3).reshape(*q.shape[:-1], v.shape[-1])


def _mean_of_last(x: Tensor, plus: float = 0.0) -> Tensor:
    """Mean over the last dim (``+ plus``): a matmul with a constant row (and bias), folded before lowering."""
    row = torch.full((1, x.shape[-1]), 1.0 / x.shape[-1], dtype=x.dtype)
    return F.linear(x, row, torch.full((1,), plus, dtype=x.dtype) if plus else None)


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    if len(normalized_shape) != 1:
        raise ValueError(f"the .pte export lowers layer norm over the last dim only, not {list(normalized_shape)}")
    centered = x - _mean_of_last(x)
    out = centered * torch.rsqrt(_mean_of_last(centered * centered, plus=eps))  # eps rides as the bias
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


class _LeanAttention(nn.Module):
    """`Attention` in fewer graph nodes, for export: the softmax scale is folded into q's weights, and
    the heads of all three projections are row blocks of one ``[3 H B, N, D/H]`` tensor, so q, k and v
    are step-1 slices that feed the batched matmuls as they are: 5 nodes per layer where the model's
    split, the scaling and `_plain_attention`'s 3-D views were 11."""

    def __init__(self, attn: Attention):
        super().__init__()
        self.num_heads, self.qkv, self.proj = attn.num_heads, attn.qkv, attn.proj
        dim = attn.proj.in_features
        with torch.no_grad():
            self.qkv.weight[:dim] *= (dim // self.num_heads) ** -0.5
            if self.qkv.bias is not None:
                self.qkv.bias[:dim] *= (dim // self.num_heads) ** -0.5

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        rows = self.num_heads * B
        heads = self.qkv(x).reshape(B, N, 3 * self.num_heads, -1).permute(2, 0, 1, 3).reshape(3 * rows, N, -1)
        out = _softmax_attention(heads[:rows], heads[rows : 2 * rows], heads[2 * rows :])  # [H B, N, D/H]
        return self.proj(out.reshape(self.num_heads, B, N, -1).permute(1, 2, 0, 3).reshape(B, N, D))


def _fold_norm_affine(norm: nn.LayerNorm, linear: nn.Linear) -> None:
    """``linear(norm(x))`` unchanged with the norm's scale and shift moved into the Linear's weight and bias."""
    with torch.no_grad():
        if norm.bias is not None:
            shift = linear.weight @ norm.bias
            linear.bias = nn.Parameter(shift if linear.bias is None else linear.bias + shift)
        if norm.weight is not None:
            linear.weight.mul_(norm.weight)
    norm.weight = norm.bias = None


def lean_for_xnnpack(model: nn.Module) -> nn.Module:
    """A copy of `model` with the same logits (to float rounding) in a smaller XNNPACK graph.

    Attention becomes `_LeanAttention`, and the layer norms that only feed a Linear (pre-LN blocks'
    and the heads') lose their scale and shift to that Linear: fewer nodes, and fewer parameters
    that reach the delegate as inputs, each also a tensor of the program.
    """
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        if isinstance(module, Block):
            if not module.post_norm:
                _fold_norm_affine(module.norm1, module.attn.qkv)
                _fold_norm_affine(module.norm2, module.mlp.fc1)
            module.attn = _LeanAttention(module.attn)
        elif isinstance(module, ASTClassifier):
            for head in (module.head, module.head_dist):
                if isinstance(head, nn.Sequential):
                    _fold_norm_affine(*head)
    return model


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
    model = lean_for_xnnpack(model)
    if int8:
        if calib_waves is None:
            raise ValueError("int8 export needs calibration clips (calib_waves); pass clips from the training data")
        model = quantize_classifier(model, example, calib_waves)
    constants = dict(
        sample_rate=sample_rate, window_samples=window_samples, num_classes=num_classes,
        format_version=format_version,
    )
    Path(path).write_bytes(lower_to_xnnpack(model, example, constants).to_executorch().buffer)
