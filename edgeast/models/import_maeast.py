"""Import MAE-AST checkpoints (AlanBaade/MAE-AST-Public, fairseq ``.pt``).

What that encoder computes on fbank ``[B, T, F]`` (povey window, no fixed length):
``BatchNorm2d(1, affine=False)`` on ``[B, 1, T, F]`` times 0.5; ``Unfold`` with
kernel (time, freq), so tokens are time-major (``t * n_f + f``) and values
inside a patch are time-major (``dt * k_f + df``); ``post_extract_proj`` (Linear
k_t*k_f -> D); plus a 1-D sinusoidal table indexed by token position;
``encoder.layer_norm`` *before* block 0; post-LN fairseq layers (separate
q/k/v projections, LayerNorm eps 1e-5, GELU); no cls token, no final norm.

Mapping: the Linear becomes our Conv2d by reordering its input columns to
frequency-major; our tokens are frequency-major, and ``ASTConfig.pos_embed =
"sincos"`` gives each of them the table row of its time-major index. Attention
and the per-token layers do not care about token order, so the encoder output
is MAE-AST's, permuted to frequency-major order.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgeast.audio.frontend import FrontendConfig
from edgeast.models.ast import ASTConfig, sincos_pos_embed
from edgeast.models.checkpoint import CheckpointError
from edgeast.models.importers import Converted, ForeignWeights, block_sources, fill_state, read_torch_file

LAYER_NORM_EPS = 1e-5  # fairseq LayerNorm default
LAYER_KEYS = {  # ours -> fairseq TransformerSentenceEncoderLayer
    "norm1": "self_attn_layer_norm",
    "attn.proj": "self_attn.out_proj",
    "norm2": "final_layer_norm",
    "mlp.fc1": "fc1",
    "mlp.fc2": "fc2",
}
PRETRAIN_PARTS = ("encoder_mask_emb", "decoder_mask_emb", "decoder.", "final_proj_", "post_enc_proj.")
IGNORED = (
    "layer_norm.",  # built over feature_dim but never called in forward
    "enc_sine_pos_embed.",  # fixed table, recomputed (and checked below)
    "dec_sine_pos_embed.",
)


def convert(
    src: Path,
    *,
    num_frames: int = 100,
    num_heads: int | None = None,
    labels: list[str] | None = None,
) -> Converted:
    """fairseq MAE-AST ``.pt`` -> ``Converted`` (an encoder; ``num_classes`` 0).

    MAE-AST has no fixed input length (fixed sinusoidal positions), so
    ``num_frames`` only sets the length this checkpoint is built for.
    """
    ckpt = read_torch_file(src)
    if not isinstance(ckpt.get("model"), dict):
        raise ForeignWeights(ckpt, src, "maeast").unknown_layout("a 'model' entry holding the state dict")
    model_cfg = (ckpt.get("cfg") or {}).get("model") or {}
    task_cfg = (ckpt.get("cfg") or {}).get("task") or {}
    w = ForeignWeights(ckpt["model"], src, "maeast")
    if "post_extract_proj.weight" not in w or "encoder.layers.0.fc1.weight" not in w:
        raise w.unknown_layout("post_extract_proj.* and encoder.layers.*")
    if model_cfg.get("enc_conv_pos") or "enc_conv_pos_embed.pos_conv.0.bias" in w:
        raise CheckpointError(f"{src}: convolutional positions (enc_conv_pos) are not supported; use an enc_sine_pos model")
    if model_cfg.get("enc_sine_pos") is False:
        raise CheckpointError(f"{src}: this MAE-AST encoder has no positional encoding (enc_sine_pos=false); not supported")

    proj = w.take("post_extract_proj.weight")
    dim, patch_values = proj.shape
    k_t = int(model_cfg.get("ast_kernel_size_time", 16))
    k_f = int(model_cfg.get("ast_kernel_size_chan", 16))
    if k_t * k_f != patch_values:
        raise CheckpointError(
            f"{src}: post_extract_proj.weight has shape {tuple(proj.shape)}, expected ({dim}, {k_t * k_f}) "
            f"for {k_t}x{k_f} (time x freq) patches"
        )
    pre_ln = bool(model_cfg.get("layer_norm_first", False))
    num_heads = num_heads or model_cfg.get("encoder_attention_heads") or max(1, dim // 64)
    cfg = ASTConfig(
        embed_dim=dim,
        depth=w.count("encoder.layers."),
        num_heads=int(num_heads),
        mlp_ratio=w.take("encoder.layers.0.fc1.weight").shape[0] / dim,
        num_mel_bins=int(task_cfg.get("feature_dim", 128)),
        num_frames=num_frames,
        patch_f=k_f,
        patch_t=k_t,
        stride_f=int(model_cfg.get("ast_kernel_stride_chan", k_f)),
        stride_t=int(model_cfg.get("ast_kernel_stride_time", k_t)),
        prefix_tokens=0,
        pos_embed="sincos",
        pool="mean",
        block="pre" if pre_ln else "post",
        norm_position="final" if pre_ln else "pre_blocks",
        norm_eps=LAYER_NORM_EPS,
        input_norm="batchnorm",
        num_classes=0,
    )
    _check_sine_table(w, cfg)

    sources = {
        "encoder.input_norm.running_mean": "batch_norm.running_mean",
        "encoder.input_norm.running_var": "batch_norm.running_var",
        "encoder.input_norm.num_batches_tracked": "batch_norm.num_batches_tracked",
        "encoder.norm.weight": "encoder.layer_norm.weight",
        "encoder.norm.bias": "encoder.layer_norm.bias",
        **block_sources(
            cfg.depth, {f"{o}.{n}": f"{t}.{n}" for o, t in LAYER_KEYS.items() for n in ("weight", "bias")},
            "encoder.layers.",
        ),
    }
    state = fill_state(cfg, w, sources)
    # Linear over time-major patch values (dt * k_f + df) -> Conv2d kernel [D, 1, k_f, k_t]
    state["encoder.patch_embed.weight"] = proj.float().reshape(dim, k_t, k_f).transpose(1, 2).unsqueeze(1).contiguous()
    state["encoder.patch_embed.bias"] = w.take("post_extract_proj.bias", (dim,)).float()
    for i in range(cfg.depth):
        qkv = [f"encoder.layers.{i}.self_attn.{n}_proj" for n in "qkv"]
        state[f"encoder.blocks.{i}.attn.qkv.weight"] = torch.cat([w.take(f"{k}.weight", (dim, dim)) for k in qkv]).float()
        state[f"encoder.blocks.{i}.attn.qkv.bias"] = torch.cat([w.take(f"{k}.bias", (dim,)) for k in qkv]).float()

    extra = {f"pretrain.{k}": w.take(k).float() for k in list(w.state) if k.startswith(PRETRAIN_PARTS)}
    w.check_all_used(ignored_prefixes=IGNORED)

    # kaldi.fbank defaults (povey, no mean subtraction); the BatchNorm normalizes, so the
    # front end passes fbank through unchanged: (x - 0) / (2 * 0.5)
    frontend = FrontendConfig(
        num_mel_bins=cfg.num_mel_bins, num_frames=num_frames, window="povey",
        subtract_wave_mean=False, mean=0.0, std=0.5,
    )
    return Converted(cfg, frontend, state, list(labels or []), extra, provenance={"format": "maeast"})


def _check_sine_table(w: ForeignWeights, cfg: ASTConfig) -> None:
    """If the file carries its positional table, it must be the one we recompute."""
    key = "enc_sine_pos_embed.pe"
    if key not in w:
        return
    table = w.state[key].float()[0]  # [max_len, D], rows by time-major token index
    n_f, n_t = cfg.grid
    if table.shape[0] < n_f * n_t or table.shape[1] != cfg.embed_dim:
        raise CheckpointError(
            f"{w.source}: {key} has shape {tuple(w.state[key].shape)}, expected (1, >= {n_f * n_t}, {cfg.embed_dim})"
        )
    time_major = torch.arange(n_f * n_t).reshape(n_f, n_t).T.reshape(-1)  # our index of each time-major token
    ours = sincos_pos_embed(cfg.grid, cfg.embed_dim)[time_major]
    if not torch.allclose(table[: n_f * n_t], ours, atol=1e-4):
        raise CheckpointError(f"{w.source}: {key} is not the MAE-AST sinusoidal table edgeast recomputes")
