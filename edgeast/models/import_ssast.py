"""Import SSAST checkpoints (YuanGongND/ssast ``.pth``, saved from ``DataParallel``).

Layout: ``module.v.*`` is a timm DeiT (cls + dist tokens, fused qkv, LayerNorm
eps 1e-6) whose patch embedding is a Conv2d on ``[B, 1, F, T]`` and whose
``pos_embed`` covers the prefix tokens and the frequency-major patches, i.e.
exactly ``ASTEncoder``. Pretraining files add ``module.cpredlayer`` /
``module.gpredlayer`` (Linear D->D, ReLU, Linear D->256), ``module.mask_embed``
and the pretraining input shape ``module.p_input_fdim`` / ``p_input_tdim``;
those heads are kept as ``pretrain.*`` tensors so pretraining can continue.
Fine-tuned files add ``module.mlp_head.{0: LayerNorm, 1: Linear}``.
"""

from __future__ import annotations

from pathlib import Path

from edgeast.audio.frontend import FrontendConfig
from edgeast.models.ast import ASTConfig
from edgeast.models.checkpoint import CheckpointError
from edgeast.models.importers import Converted, ForeignWeights, block_sources, fill_state, read_torch_file

AUDIOSET_LIBRISPEECH_STATS = (-4.2677393, 4.5689974)  # SSAST pretraining normalization
HEADS_BY_DIM = {192: 3, 384: 6, 768: 12}  # SSAST tiny / small / base
BLOCK_KEYS = [
    f"{module}.{param}"
    for module in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    for param in ("weight", "bias")
]
PRETRAIN_HEADS = ("cpredlayer.", "gpredlayer.", "mask_embed")


def convert(
    src: Path,
    *,
    num_frames: int | None = None,
    num_mel_bins: int | None = None,
    stride: int | tuple[int, int] | None = None,
    num_heads: int | None = None,
    pool: str = "mean",
    labels: list[str] | None = None,
) -> Converted:
    """SSAST ``.pth`` -> ``Converted``.

    Input shape defaults to the pretraining one stored in the file and stride to
    the patch size (SSAST pretraining never overlaps). A fine-tuned file was
    run with its own length/stride: pass ``num_frames`` / ``stride`` to match.
    """
    state = read_torch_file(src)
    p = "module." if any(k.startswith("module.v.") for k in state) else ""
    w = ForeignWeights(state, src, "ssast")
    if f"{p}v.patch_embed.proj.weight" not in w:
        raise w.unknown_layout("module.v.patch_embed.proj.weight")

    proj = w.take(f"{p}v.patch_embed.proj.weight")
    if proj.dim() != 4 or proj.shape[1] != 1:
        raise CheckpointError(f"{src}: {p}v.patch_embed.proj.weight has shape {tuple(proj.shape)}, expected (D, 1, f, t)")
    dim, _, patch_f, patch_t = proj.shape
    stride_f, stride_t = (stride, stride) if isinstance(stride, int) else (stride or (patch_f, patch_t))
    if num_frames is None:
        num_frames = int(w.take(f"{p}p_input_tdim")) if f"{p}p_input_tdim" in w else 1024
    if num_mel_bins is None:
        num_mel_bins = int(w.take(f"{p}p_input_fdim")) if f"{p}p_input_fdim" in w else 128
    for key in (f"{p}p_input_tdim", f"{p}p_input_fdim"):
        if key in w:
            w.take(key)
    if num_heads is None:
        if dim not in HEADS_BY_DIM:
            raise CheckpointError(f"{src}: embedding width {dim} is not an SSAST size; pass num_heads=")
        num_heads = HEADS_BY_DIM[dim]
    has_head = f"{p}mlp_head.1.weight" in w
    cfg = ASTConfig(
        embed_dim=dim,
        depth=w.count(f"{p}v.blocks."),
        num_heads=num_heads,
        mlp_ratio=w.take(f"{p}v.blocks.0.mlp.fc1.weight").shape[0] / dim,
        num_mel_bins=num_mel_bins,
        num_frames=num_frames,
        patch_f=patch_f,
        patch_t=patch_t,
        stride_f=stride_f,
        stride_t=stride_t,
        prefix_tokens=2 if f"{p}v.dist_token" in w else 1,
        pool=pool,
        qkv_bias=f"{p}v.blocks.0.attn.qkv.bias" in w,
        num_classes=w.take(f"{p}mlp_head.1.weight").shape[0] if has_head else 0,
    )
    pos = w.take(f"{p}v.pos_embed")
    expected = (1, cfg.prefix_tokens + cfg.grid[0] * cfg.grid[1], dim)
    if tuple(pos.shape) != expected:
        raise CheckpointError(
            f"{src}: {p}v.pos_embed has shape {tuple(pos.shape)}, expected {expected} for "
            f"{num_mel_bins} mel x {num_frames} frames at stride {stride_f}x{stride_t}; "
            "pass num_frames= and stride= as used when the file was trained"
        )

    sources = {
        "encoder.cls_token": f"{p}v.cls_token",
        "encoder.pos_embed": f"{p}v.pos_embed",
        "encoder.patch_embed.weight": f"{p}v.patch_embed.proj.weight",
        "encoder.patch_embed.bias": f"{p}v.patch_embed.proj.bias",
        "encoder.norm.weight": f"{p}v.norm.weight",
        "encoder.norm.bias": f"{p}v.norm.bias",
        **block_sources(cfg.depth, {k: k for k in BLOCK_KEYS if cfg.qkv_bias or k != "attn.qkv.bias"}, f"{p}v.blocks."),
    }
    if cfg.prefix_tokens == 2:
        sources["encoder.dist_token"] = f"{p}v.dist_token"
    if has_head:
        sources.update({f"head.{i}.{n}": f"{p}mlp_head.{i}.{n}" for i in (0, 1) for n in ("weight", "bias")})
    out = fill_state(cfg, w, sources)

    extra = {}
    for key in list(w.state):
        name = key.removeprefix(p)
        if name.startswith(PRETRAIN_HEADS):
            extra[f"pretrain.{name}"] = w.take(key).float()
    # timm's ImageNet heads (v.head, v.head_dist) are never used by SSAST
    w.check_all_used(ignored_prefixes=(f"{p}v.head.", f"{p}v.head_dist."))

    mean, std = AUDIOSET_LIBRISPEECH_STATS
    frontend = FrontendConfig(num_mel_bins=num_mel_bins, num_frames=num_frames, mean=mean, std=std)
    labels = list(labels) if labels is not None else [str(i) for i in range(cfg.num_classes)]
    return Converted(cfg, frontend, out, labels, extra, provenance={"format": "ssast"})
