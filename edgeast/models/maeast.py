"""MAE-AST pretraining (Baade et al. 2022): deep encoder on the kept tokens, shallow decoder.

Only the unmasked 25% of the patches go through the encoder (embed, gather the
kept tokens, add their positions, run the blocks), which is where the ~3x
speed-up over SSAST comes from. A 2-layer decoder then sees the encoder
outputs put back at their positions with a learned mask token everywhere
else, plus fixed sinusoidal positions (MAE-AST's ``dec_sine_pos``). Two linear
heads on the masked positions give the SSAST-style losses: reconstruction
(MSE, weight 10) and classification (InfoNCE, weight 1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from edgeast.config import ConfigError
from edgeast.models.ast import ASTEncoder, Block, sincos_pos_embed
from edgeast.models.masking import cluster_mask, gather_tokens, mask_count, random_mask
from edgeast.models.ssast import patch_infonce


@dataclass
class MAEASTConfig:
    mask_ratio: float = 0.75
    masking: str = "random"  # "random" (the released MAE-AST recipe) | "chunk" (SSAST-like squares)
    chunk_min: int = 3
    chunk_max: int = 5
    decoder_dim: int | None = None  # None: the encoder's width (MAE-AST: 768 for base)
    decoder_depth: int = 2
    decoder_heads: int | None = None  # None: the encoder's head count, or decoder_dim // 64 if the width differs
    reconstruction_weight: float = 10.0
    classification_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.masking not in ("random", "chunk"):
            raise ConfigError(f"maeast.masking={self.masking!r}: expected 'random' or 'chunk'")
        if self.decoder_depth < 1:
            raise ConfigError(f"maeast.decoder_depth={self.decoder_depth}: expected >= 1")


class MAEASTObjective(nn.Module):
    def __init__(self, encoder: ASTEncoder, cfg: MAEASTConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or MAEASTConfig()
        self.encoder = encoder
        self.num_masked = mask_count(encoder.num_patches, cfg.mask_ratio)
        enc_cfg = encoder.cfg
        dim = cfg.decoder_dim or enc_cfg.embed_dim
        heads = cfg.decoder_heads or (enc_cfg.num_heads if dim == enc_cfg.embed_dim else max(1, dim // 64))
        if dim % heads:
            raise ConfigError(f"maeast.decoder_dim={dim} is not divisible by decoder_heads={heads}")
        dec_cfg = replace(enc_cfg, embed_dim=dim, num_heads=heads, depth=cfg.decoder_depth, drop_path=0.0)

        self.decoder_embed = nn.Linear(enc_cfg.embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("decoder_pos", sincos_pos_embed(encoder.grid, dim)[None], persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(dec_cfg, 0.0) for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(dim, eps=enc_cfg.norm_eps)
        self.reconstruction_head = nn.Linear(dim, encoder.patch_dim)
        self.classification_head = nn.Linear(dim, encoder.patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        decoder = (self.decoder_embed, self.decoder_blocks, self.reconstruction_head, self.classification_head)
        for module in nn.ModuleList(decoder).modules():
            if isinstance(module, nn.Linear):  # ViT init, like the encoder's
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def mask(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(ids_masked, ids_keep) for one batch, per the configured masking."""
        if self.cfg.masking == "chunk":
            sizes = (self.cfg.chunk_min, self.cfg.chunk_max)
            grid = self.encoder.grid
            return cluster_mask(batch, grid, self.num_masked, sizes=sizes, generator=generator, device=device)
        return random_mask(batch, self.encoder.num_patches, self.num_masked, generator=generator, device=device)

    def forward(self, features: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Features [B, T, F] -> (loss, metrics)."""
        enc = self.encoder
        batch, prefix = features.shape[0], enc.num_prefix
        ids_masked, ids_keep = self.mask(batch, features.device, generator)
        kept = gather_tokens(enc.embed_patches(features), ids_keep)  # [B, N - M, D]
        latent = self.decoder_embed(enc.run_blocks(enc.add_pos(kept, ids_keep)))  # [B, P + N - M, Dd]

        # Unshuffle: kept tokens back at their positions, the mask token everywhere else.
        dim = latent.shape[-1]
        patches = self.mask_token.to(latent.dtype).expand(batch, enc.num_patches, dim)
        patches = patches.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, dim), latent[:, prefix:])
        x = torch.cat([latent[:, :prefix], patches + self.decoder_pos.to(latent.dtype)], dim=1)  # [B, P + N, Dd]
        for block in self.decoder_blocks:
            x = block(x)
        x = gather_tokens(self.decoder_norm(x)[:, prefix:], ids_masked)  # [B, M, Dd]

        target = gather_tokens(enc.patchify(features), ids_masked)  # [B, M, patch_dim]
        mse = F.mse_loss(self.reconstruction_head(x).float(), target.float())
        nce, accuracy = patch_infonce(self.classification_head(x), target)
        loss = self.cfg.reconstruction_weight * mse + self.cfg.classification_weight * nce
        return loss, {"nce": nce.detach(), "mse": mse.detach(), "acc": accuracy}

    def encoder_state_dict(self) -> dict[str, Tensor]:
        return self.encoder.state_dict()
