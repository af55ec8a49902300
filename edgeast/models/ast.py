"""Audio Spectrogram Transformer: one encoder for SSAST, MAE-AST, ASiT and students.

The encoder takes log-mel features ``[B, T, F]`` (time-major, like AST), lays them
out as an image ``[B, 1, F, T]`` (SSAST layout) and cuts it into patches with a
Conv2d. Tokens are ordered frequency-major: ``index = f * n_t + t``.

The forward pass is split into three steps so that pretraining objectives can
mask in between (MAE-style: embed, keep a subset, add positions of that subset,
run the blocks):

    embed_patches(x) -> add_pos(tokens, ids) -> run_blocks(tokens)

Everything is shape-static: no data-dependent control flow, so the model goes
through ``torch.export`` to ExecuTorch and ONNX.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


@dataclass
class ASTConfig:
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    num_mel_bins: int = 128  # input features are [B, num_frames, num_mel_bins]
    num_frames: int = 100
    patch_f: int = 16  # kernel (frequency, time); frame tokenizer: patch_f=128, patch_t=2
    patch_t: int = 16
    stride_f: int = 16  # strides below the kernel give overlapping patches
    stride_t: int = 16
    prefix_tokens: int = 1  # 0 none, 1 cls, 2 cls + distillation token
    pos_embed: str = "learned"  # "learned" | "sincos" (fixed, MAE-AST)
    pool: str = "mean"  # "mean" of patch tokens | "prefix" (mean of prefix tokens) | "cls" (the class token)
    dist_head: bool = False  # DeiT: a second head on the distillation token; inference averages both heads
    block: str = "pre"  # "pre" = pre-LN ViT block | "post" = post-LN (fairseq MAE-AST)
    norm_position: str = "final"  # "final" = after the blocks | "pre_blocks" = before block 0 (MAE-AST)
    norm_eps: float = 1e-6
    head_norm_eps: float = 1e-5  # SSAST mlp_head uses nn.LayerNorm's default
    qkv_bias: bool = True
    input_norm: str = "none"  # "batchnorm" = MAE-AST's BatchNorm2d(1, affine=False) * 0.5
    num_classes: int = 0
    dropout: float = 0.0
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        choices = {
            "pos_embed": ("learned", "sincos"),
            "pool": ("mean", "prefix", "cls"),
            "block": ("pre", "post"),
            "norm_position": ("final", "pre_blocks"),
            "input_norm": ("none", "batchnorm"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ASTConfig.{name}={getattr(self, name)!r}: expected one of {allowed}")
        if self.prefix_tokens not in (0, 1, 2):
            raise ValueError(f"ASTConfig.prefix_tokens={self.prefix_tokens}: expected 0, 1 or 2")
        if self.pool in ("prefix", "cls") and self.prefix_tokens == 0:
            raise ValueError(f"ASTConfig.pool={self.pool!r} needs prefix_tokens >= 1")
        if self.dist_head and self.prefix_tokens != 2:
            raise ValueError(f"ASTConfig.dist_head=True needs prefix_tokens=2 (cls + distillation token), "
                             f"not {self.prefix_tokens}")
        if self.dist_head and self.pool == "prefix":
            raise ValueError("ASTConfig.dist_head=True with pool='prefix' would feed the distillation token to "
                             "both heads; use pool='cls' (DeiT) or 'mean'")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"ASTConfig.embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.patch_f > self.num_mel_bins or self.patch_t > self.num_frames:
            raise ValueError(
                f"ASTConfig patch {self.patch_f}x{self.patch_t} is larger than the input "
                f"{self.num_mel_bins} mel x {self.num_frames} frames"
            )

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along (frequency, time)."""
        n_f = (self.num_mel_bins - self.patch_f) // self.stride_f + 1
        n_t = (self.num_frames - self.patch_t) // self.stride_t + 1
        return n_f, n_t


# (embed_dim, depth, num_heads). Teachers follow SSAST; students are small ASTs for the edge.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "student-64x4": (64, 4, 2),
    "student-96x6": (96, 6, 3),
    "student-128x6": (128, 6, 4),
    "student-192x4": (192, 4, 3),
}

TOKENIZERS: dict[str, dict[str, int]] = {
    "patch": dict(patch_f=16, patch_t=16, stride_f=16, stride_t=16),
    "frame": dict(patch_f=128, patch_t=2, stride_f=128, stride_t=2),
}


def ast_config(size: str, **overrides) -> ASTConfig:
    """A config for a named size (see ``SIZES``) with field overrides."""
    if size not in SIZES:
        raise ValueError(f"unknown AST size {size!r}: expected one of {sorted(SIZES)}")
    embed_dim, depth, num_heads = SIZES[size]
    return replace(ASTConfig(embed_dim=embed_dim, depth=depth, num_heads=num_heads), **overrides)


def sincos_pos_embed(grid: tuple[int, int], dim: int) -> Tensor:
    """Fixed sinusoidal positions [n_f * n_t, dim] for frequency-major tokens.

    MAE-AST numbers its tokens time-major (``p = t * n_f + f``) and adds the 1-D
    table ``pe[p, 2i] = sin(p * w_i)``, ``pe[p, 2i+1] = cos(p * w_i)`` with
    ``w_i = 10000^(-2i/dim)``. Our token ``f * n_t + t`` gets the row of its
    time-major index, so imported MAE-AST encoders compute the same thing.
    """
    n_f, n_t = grid
    f_idx, t_idx = torch.meshgrid(torch.arange(n_f), torch.arange(n_t), indexing="ij")
    positions = (t_idx * n_f + f_idx).reshape(-1, 1).to(torch.float64)  # [N, 1] in our token order
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_f * n_t, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(positions * freqs)
    table[:, 1::2] = torch.cos(positions * freqs[: dim // 2])
    return table.float()


def resize_pos_embed(pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Adapt learned patch positions [1, n_f*n_t, D] to another grid.

    Each axis is handled like SSAST/AST do when input length or stride change:
    a shorter axis is center-cropped, a longer one is bilinearly interpolated.
    Prefix-token positions are not part of ``pos``; the caller keeps them.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos
    (old_f, old_t), (new_f, new_t) = old_grid, new_grid
    dim = pos.shape[-1]
    if pos.shape[-2] != old_f * old_t:
        raise ValueError(f"positional embedding has {pos.shape[-2]} patches, grid {old_grid} needs {old_f * old_t}")
    image = pos.reshape(1, old_f, old_t, dim).permute(0, 3, 1, 2)  # [1, D, n_f, n_t]
    image = _fit_axis(image, axis=2, size=new_f)
    image = _fit_axis(image, axis=3, size=new_t)
    return image.permute(0, 2, 3, 1).reshape(1, new_f * new_t, dim)


def _fit_axis(image: Tensor, axis: int, size: int) -> Tensor:
    old = image.shape[axis]
    if size < old:
        start = old // 2 - size // 2  # SSAST's center
        return image.narrow(axis, start, size)
    if size > old:
        target = list(image.shape[2:])
        target[axis - 2] = size
        return F.interpolate(image, size=tuple(target), mode="bilinear", align_corners=False)
    return image


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero a sample's residual branch with probability p."""
    if p == 0.0 or not training:
        return x
    keep = torch.empty(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        q, k, v = self.split_heads(self.qkv(x))
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, D)  # [B, N, D]
        return F.dropout(self.proj(x), self.dropout, self.training)

    def split_heads(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Output of the qkv projection [B, N, 3D] -> q, k, v, each [B, H, N, D/H]."""
        B, N, _ = qkv.shape
        qkv = qkv.reshape(B, N, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(F.gelu(self.fc1(x)), self.dropout, self.training)
        return F.dropout(self.fc2(x), self.dropout, self.training)


class Block(nn.Module):
    """Transformer block, pre-LN (timm ViT) or post-LN (fairseq, as MAE-AST trained it)."""

    def __init__(self, cfg: ASTConfig, drop_path_rate: float):
        super().__init__()
        dim = cfg.embed_dim
        self.post_norm = cfg.block == "post"
        self.drop_path = drop_path_rate
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cfg.dropout)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = MLP(dim, int(dim * cfg.mlp_ratio), cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        p, training = self.drop_path, self.training
        if self.post_norm:
            x = self.norm1(x + drop_path(self.attn(x), p, training))
            return self.norm2(x + drop_path(self.mlp(x), p, training))
        x = x + drop_path(self.attn(self.norm1(x)), p, training)
        return x + drop_path(self.mlp(self.norm2(x)), p, training)


class ASTEncoder(nn.Module):
    def __init__(self, cfg: ASTConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.num_prefix = cfg.prefix_tokens
        self.grid = cfg.grid
        self.num_patches = self.grid[0] * self.grid[1]
        self.patch_dim = cfg.patch_f * cfg.patch_t

        if cfg.input_norm == "batchnorm":
            self.input_norm = nn.BatchNorm2d(1, affine=False)
        self.patch_embed = nn.Conv2d(
            1, D, kernel_size=(cfg.patch_f, cfg.patch_t), stride=(cfg.stride_f, cfg.stride_t)
        )
        if cfg.prefix_tokens >= 1:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        if cfg.prefix_tokens == 2:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, D))
        if cfg.pos_embed == "learned":
            # covers prefix + patch tokens, as SSAST/timm store it
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix + self.num_patches, D))
        else:
            table = torch.cat([torch.zeros(self.num_prefix, D), sincos_pos_embed(self.grid, D)])
            self.register_buffer("pos_embed", table[None], persistent=False)
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear, as timm
        self.blocks = nn.ModuleList(Block(cfg, rate) for rate in rates)
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.apply(_init_weights)
        for name in ("cls_token", "dist_token"):
            if hasattr(self, name):
                nn.init.trunc_normal_(getattr(self, name), std=0.02)
        if cfg.pos_embed == "learned":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def _scaled_input(self, x: Tensor) -> Tensor:
        """[B, T, F] with MAE-AST's input BatchNorm applied when configured (one channel: any layout)."""
        if self.cfg.input_norm == "batchnorm":
            return self.input_norm(x.unsqueeze(1)).squeeze(1) * 0.5
        return x

    def _normalize_input(self, x: Tensor) -> Tensor:
        """[B, T, F] -> [B, 1, F, T], with MAE-AST's input BatchNorm when configured."""
        return self._scaled_input(x).transpose(1, 2).unsqueeze(1)

    def embed_patches(self, x: Tensor) -> Tensor:
        """Features [B, T, F] -> patch embeddings [B, N, D], without positions.

        Non-overlapping patches (stride == kernel, e.g. frame tokens) are cut with reshapes and
        embedded by a matmul with the conv's weight: the conv's result, but exported as a Linear,
        which int8 export quantizes in every runtime (ONNX Runtime's dynamic quantization leaves
        convs float).
        """
        cfg = self.cfg
        if (cfg.stride_f, cfg.stride_t) != (cfg.patch_f, cfg.patch_t):
            x = self.patch_embed(self._normalize_input(x))  # [B, D, n_f, n_t]
            return x.flatten(2).transpose(1, 2)  # [B, N, D], index = f * n_t + t
        n_f, n_t = self.grid
        x = self._scaled_input(x)
        used_t, used_f = n_t * cfg.patch_t, n_f * cfg.patch_f
        if x.shape[1:] != (used_t, used_f):  # the conv ignores a remainder that fills no patch
            x = x[:, :used_t, :used_f]
        # [B, n_t, dt, n_f, df] -> [B, n_f, n_t, df, dt]: token order, values in the conv weight's order
        patches = x.reshape(x.shape[0], n_t, cfg.patch_t, n_f, cfg.patch_f).permute(0, 3, 1, 4, 2)
        return F.linear(patches.reshape(x.shape[0], n_f * n_t, -1), self.patch_embed.weight.flatten(1),
                        self.patch_embed.bias)

    def add_pos(self, tokens: Tensor, ids: Tensor | None = None) -> Tensor:
        """Add patch positions; ``ids`` [B, N'] names which patches ``tokens`` [B, N', D] are."""
        pos = self.pos_embed[:, self.num_prefix :]  # [1, N, D]
        if ids is None:
            return tokens + pos
        pos = pos.expand(tokens.shape[0], -1, -1)  # [B, N, D]
        return tokens + torch.gather(pos, 1, ids.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))  # [B, N', D]

    def prefix(self, batch: int) -> Tensor:
        """Prefix tokens with their positions [B, P, D] (P may be 0)."""
        tokens = [getattr(self, name) for name in ("cls_token", "dist_token")[: self.num_prefix]]
        if not tokens:
            return self.pos_embed[:, :0].expand(batch, -1, -1)
        prefix = torch.cat(tokens, dim=1) + self.pos_embed[:, : self.num_prefix]  # [1, P, D]
        return prefix.expand(batch, -1, -1)

    def run_blocks(self, tokens: Tensor, return_hidden: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Positioned patch tokens [B, N', D] -> [B, P + N', D] (prefix first).

        With ``return_hidden`` also returns each block's output (before the final norm).
        """
        x = torch.cat([self.prefix(tokens.shape[0]), tokens], dim=1)  # [B, P + N', D]
        x = F.dropout(x, self.cfg.dropout, self.training)
        if self.cfg.norm_position == "pre_blocks":
            x = self.norm(x)
        hidden = []
        for block in self.blocks:
            x = block(x)
            hidden.append(x)
        if self.cfg.norm_position == "final":
            x = self.norm(x)
        return (x, hidden) if return_hidden else x

    def forward(self, x: Tensor) -> Tensor:
        """Features [B, T, F] -> tokens [B, P + N, D]."""
        return self.run_blocks(self.add_pos(self.embed_patches(x)))

    def forward_with_qkv(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """Features -> (tokens [B, P + N, D], the last block's (q, k, v), each [B, H, P + N, D/H]).

        For attention distillation in training. A hook on the last qkv
        projection reads them, so ``forward`` (fused attention, export) stays as it is.
        """
        attn = self.blocks[-1].attn
        captured = []
        handle = attn.qkv.register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            tokens = self(x)
        finally:
            handle.remove()
        return tokens, attn.split_heads(captured[0])

    def patchify(self, x: Tensor) -> Tensor:
        """Raw feature values per patch, in token order: [B, T, F] -> [B, N, patch_f * patch_t].

        Values inside a patch are frequency-major (``df * patch_t + dt``), matching
        the flattened Conv2d kernel. Input BatchNorm (if any) is applied first.
        """
        cfg = self.cfg
        patches = F.unfold(
            self._normalize_input(x), kernel_size=(cfg.patch_f, cfg.patch_t), stride=(cfg.stride_f, cfg.stride_t)
        )  # [B, patch_f * patch_t, N]
        return patches.transpose(1, 2)


class ASTClassifier(nn.Module):
    """Encoder + SSAST-style head (LayerNorm, Linear) over pooled tokens.

    With ``dist_head`` (DeiT) a second head reads the distillation token. In
    distillation the class head learns from the labels and the distillation
    head from the teacher; inference returns the mean of both, so callers
    always see one ``[B, C]`` logits tensor.
    """

    def __init__(self, cfg: ASTConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ASTEncoder(cfg)
        self.head = self._new_head() if cfg.num_classes > 0 else nn.Identity()  # 0: pooled embeddings
        self.head_dist = self._new_head() if cfg.dist_head and cfg.num_classes > 0 else None

    def _new_head(self) -> nn.Sequential:
        cfg = self.cfg
        head = nn.Sequential(
            nn.LayerNorm(cfg.embed_dim, eps=cfg.head_norm_eps), nn.Linear(cfg.embed_dim, cfg.num_classes)
        )
        head.apply(_init_weights)
        return head

    def pool(self, tokens: Tensor) -> Tensor:
        """[B, P + N, D] -> [B, D]."""
        P = self.encoder.num_prefix
        if self.cfg.pool == "prefix":
            return tokens[:, :P].mean(dim=1)
        if self.cfg.pool == "cls":
            return tokens[:, 0]
        return tokens[:, P:].mean(dim=1)

    def heads(self, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """Encoder tokens -> (class-head logits [B, C], distillation-head logits [B, C] or None)."""
        logits = self.head(self.pool(tokens))
        if self.head_dist is None:
            return logits, None
        return logits, self.head_dist(tokens[:, 1])  # token 1 is the distillation token

    @staticmethod
    def merge_heads(logits: Tensor, dist_logits: Tensor | None) -> Tensor:
        """What inference returns: the class head, or the mean of both heads (DeiT)."""
        return logits if dist_logits is None else (logits + dist_logits) / 2

    def forward(self, x: Tensor) -> Tensor:
        """Features [B, T, F] -> logits [B, C]."""
        return self.merge_heads(*self.heads(self.encoder(x)))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
