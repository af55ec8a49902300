"""Import Hugging Face ``ASTForAudioClassification`` / ``ASTModel`` weights.

HF's AST is SSAST's architecture: input ``[B, T, F]`` is unsqueezed and
transposed to ``[B, 1, F, T]`` before a Conv2d with strides
(frequency_stride, time_stride), tokens frequency-major, cls + distillation
tokens, pre-LN layers (eps ``layer_norm_eps``, default 1e-12), a final
``layernorm`` and a head ``classifier.{layernorm, dense}`` over
``(x[:, 0] + x[:, 1]) / 2`` (our ``pool="prefix"``).

Layer names: transformers 4.x (and 5.x ``save_pretrained``, which writes the
legacy names) use ``encoder.layer.{i}.attention.attention.{query,key,value}``,
``attention.output.dense``, ``intermediate.dense``, ``output.dense``; the 5.x
modules are ``layers.{i}.attention.{q,k,v,o}_proj`` and ``mlp.fc1/fc2``. Both are read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from edgeast.audio.frontend import FrontendConfig
from edgeast.models.ast import ASTConfig
from edgeast.models.checkpoint import CheckpointError
from edgeast.models.importers import Converted, ForeignWeights, block_sources, fill_state, read_torch_file

LEGACY = {  # transformers 4.x: ours -> theirs, under encoder.layer.{i}.
    "norm1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
LEGACY_QKV = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
CURRENT = {  # transformers 5.x: ours -> theirs, under layers.{i}.
    "norm1": "layernorm_before",
    "attn.proj": "attention.o_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
CURRENT_QKV = ("attention.q_proj", "attention.k_proj", "attention.v_proj")
AUDIOSET_STATS = (-4.2677393, 4.5689974)  # ASTFeatureExtractor defaults


def convert(src: Path, *, labels: list[str] | None = None) -> Converted:
    """A model directory (or its weights file with ``config.json`` beside it) -> ``Converted``."""
    folder = src if src.is_dir() else src.parent
    hf = _read_json(folder / "config.json", required=True)
    state = _read_weights(src)
    prefix = "audio_spectrogram_transformer." if any(k.startswith("audio_spectrogram_transformer.") for k in state) else ""
    w = ForeignWeights(state, src, "hf")
    emb = f"{prefix}embeddings."
    if f"{emb}patch_embeddings.projection.weight" not in w:
        raise w.unknown_layout("audio_spectrogram_transformer.embeddings.patch_embeddings.projection.weight")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{folder / 'config.json'}: hidden_act={hf['hidden_act']!r}; edgeast blocks use gelu")
    if f"{prefix}encoder.layer.0.layernorm_before.weight" in w:
        layers, names, qkv_names = f"{prefix}encoder.layer.", LEGACY, LEGACY_QKV
    else:
        layers, names, qkv_names = f"{prefix}layers.", CURRENT, CURRENT_QKV

    proj = w.take(f"{emb}patch_embeddings.projection.weight")
    dim, _, patch_f, patch_t = proj.shape
    eps = float(hf.get("layer_norm_eps", 1e-12))
    has_head = "classifier.dense.weight" in w
    cfg = ASTConfig(
        embed_dim=dim,
        depth=w.count(layers),
        num_heads=int(hf.get("num_attention_heads", 12)),
        mlp_ratio=int(hf.get("intermediate_size", 4 * dim)) / dim,
        num_mel_bins=int(hf.get("num_mel_bins", 128)),
        num_frames=int(hf.get("max_length", 1024)),
        patch_f=patch_f,
        patch_t=patch_t,
        stride_f=int(hf.get("frequency_stride", 10)),
        stride_t=int(hf.get("time_stride", 10)),
        prefix_tokens=2,
        pool="prefix",
        norm_eps=eps,
        head_norm_eps=eps,
        qkv_bias=bool(hf.get("qkv_bias", True)),
        num_classes=w.take("classifier.dense.weight").shape[0] if has_head else 0,
    )
    params = ("weight", "bias") if cfg.qkv_bias else ("weight",)
    sources = {
        "encoder.cls_token": f"{emb}cls_token",
        "encoder.dist_token": f"{emb}distillation_token",
        "encoder.pos_embed": f"{emb}position_embeddings",
        "encoder.patch_embed.weight": f"{emb}patch_embeddings.projection.weight",
        "encoder.patch_embed.bias": f"{emb}patch_embeddings.projection.bias",
        "encoder.norm.weight": f"{prefix}layernorm.weight",
        "encoder.norm.bias": f"{prefix}layernorm.bias",
        **block_sources(cfg.depth, {f"{o}.{n}": f"{t}.{n}" for o, t in names.items() for n in ("weight", "bias")}, layers),
    }
    if has_head:
        sources.update({f"head.{i}.{n}": f"classifier.{m}.{n}" for i, m in ((0, "layernorm"), (1, "dense")) for n in ("weight", "bias")})
    out = fill_state(cfg, w, sources)
    for i in range(cfg.depth):
        for n in params:
            parts = [w.take(f"{layers}{i}.{q}.{n}", (dim, dim) if n == "weight" else (dim,)) for q in qkv_names]
            out[f"encoder.blocks.{i}.attn.qkv.{n}"] = torch.cat(parts).float()
    w.check_all_used()

    if labels is None:
        id2label = hf.get("id2label") or {}
        labels = [id2label.get(str(i), id2label.get(i, str(i))) for i in range(cfg.num_classes)]
    pre = _read_json(folder / "preprocessor_config.json", required=False)
    mean, std = (pre.get("mean", AUDIOSET_STATS[0]), pre.get("std", AUDIOSET_STATS[1]))
    if pre.get("do_normalize") is False:
        mean, std = 0.0, 0.5  # (x - 0) / (2 * 0.5): no normalization
    # ASTFeatureExtractor: kaldi.fbank with a hanning window, no waveform mean subtraction
    frontend = FrontendConfig(
        num_mel_bins=cfg.num_mel_bins, num_frames=cfg.num_frames, window="hanning",
        subtract_wave_mean=False, mean=float(mean), std=float(std),
    )
    return Converted(cfg, frontend, out, list(labels), provenance={"format": "hf", "model_type": hf.get("model_type")})


def _read_json(path: Path, required: bool) -> dict:
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path} is missing; a Hugging Face AST import needs the model's config.json")
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from err


def _read_weights(src: Path) -> dict:
    if src.is_dir():
        candidates = [src / "model.safetensors", src / "pytorch_model.bin"]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise CheckpointError(f"{src} has neither model.safetensors nor pytorch_model.bin")
        src = found[0]
    if src.suffix == ".safetensors":
        try:
            return load_file(str(src))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{src} cannot be read as safetensors ({err})") from err
    return read_torch_file(src)
