"""Size table: parameters and multiply-accumulates of each AST size per tokenizer; training-step FLOPs.

MACs are counted analytically over the matrix products (patch embedding,
qkv / projection / MLP linears, attention scores and the attention-weighted
sum, head); norms, softmax and activations are left out, as is usual. A
training step's FLOPs (any objective) are counted by torch as it runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from edgeast.models.ast import SIZES, TOKENIZERS, ASTClassifier, ASTConfig, ast_config


def count_params(cfg: ASTConfig) -> int:
    """Trainable parameters of ``ASTClassifier(cfg)``, counted without allocating weights."""
    with torch.device("meta"):
        model = ASTClassifier(cfg)
    return sum(p.numel() for p in model.parameters())


def count_macs(cfg: ASTConfig) -> int:
    """Multiply-accumulates of one forward pass of ``ASTClassifier(cfg)`` on one input."""
    n_f, n_t = cfg.grid
    patches = n_f * n_t
    tokens = patches + cfg.prefix_tokens
    dim, hidden = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    embed = patches * dim * cfg.patch_f * cfg.patch_t
    block = (
        tokens * dim * 3 * dim  # qkv
        + 2 * tokens * tokens * dim  # q @ k^T and attn @ v, summed over heads
        + tokens * dim * dim  # output projection
        + 2 * tokens * dim * hidden  # fc1 + fc2
    )
    return embed + cfg.depth * block + dim * cfg.num_classes * (2 if cfg.dist_head else 1)


def model_table(
    sizes: tuple[str, ...] | list[str] = tuple(SIZES),
    tokenizers: tuple[str, ...] = ("patch", "frame"),
    *,
    num_frames: int = 100,
    num_mel_bins: int = 128,
    num_classes: int = 12,
) -> list[dict]:
    """One row per (size, tokenizer) for a window of ``num_frames`` frames (100 = 1 s)."""
    unknown = [t for t in tokenizers if t not in TOKENIZERS]
    if unknown:
        raise ValueError(f"unknown tokenizers {unknown}: expected some of {sorted(TOKENIZERS)}")
    rows = []
    for size in sizes:
        for tokenizer in tokenizers:
            cfg = ast_config(
                size, num_frames=num_frames, num_mel_bins=num_mel_bins, num_classes=num_classes, **TOKENIZERS[tokenizer]
            )
            rows.append(
                {
                    "size": size,
                    "tokenizer": tokenizer,
                    "embed_dim": cfg.embed_dim,
                    "depth": cfg.depth,
                    "heads": cfg.num_heads,
                    "tokens": cfg.grid[0] * cfg.grid[1] + cfg.prefix_tokens,
                    "params": count_params(cfg),
                    "macs": count_macs(cfg),
                }
            )
    return rows


def count_step_flops(step: Callable[[], Tensor]) -> int:
    """FLOPs of ``step()`` (a forward that returns a loss) and its backward, counted by torch's FlopCounterMode.

    Why: a FLOP ratio bounds the speed-up that any equally efficient implementation can show
    (bench/pretrain_speed.py). Attention runs on SDPA's reference kernel while counting, so its
    two matrix products are counted (the counter cannot see inside the fused CPU kernel). The
    gradients the backward leaves are the caller's to clear.
    """
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        step().backward()
    return counter.get_total_flops()
