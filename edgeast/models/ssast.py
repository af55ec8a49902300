"""SSAST masked spectrogram patch modeling (MSPM, Gong et al. 2022).

The whole encoder sees every token; masked patches have their embedding
replaced by a learned ``mask_embed`` before positions are added. Two 2-layer
heads read the outputs at the masked positions: ``cpredlayer`` picks each
masked patch out of all masked patches of its clip (InfoNCE), ``gpredlayer``
regresses the patch values (MSE). Loss = NCE + 10 * MSE.

The names ``mask_embed``, ``cpredlayer`` and ``gpredlayer`` (Sequential
indices 0 and 2) are those of the published SSAST checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from edgeast.config import ConfigError
from edgeast.models.ast import ASTEncoder, sincos_pos_embed
from edgeast.models.masking import cluster_mask, gather_tokens, ids_to_mask, mask_count, random_mask


@dataclass
class SSASTConfig:
    mask_ratio: float = 400 / 512  # SSAST: 400 of 512 patches (128 mel x 1024 frames)
    mask_count: int | None = None  # a fixed count instead of the ratio (the paper's 400)
    masking: str = "auto"  # "cluster" | "random" | "auto" = cluster on patch grids, random on frame grids
    cluster_min: int = 3
    cluster_max: int = 5
    nce_weight: float = 1.0
    mse_weight: float = 10.0
    pos_init: str = "random"  # "random" (SSAST: trunc normal, std 0.02) | "sincos" (see init_positions)

    def __post_init__(self) -> None:
        if self.masking not in ("auto", "cluster", "random"):
            raise ConfigError(f"ssast.masking={self.masking!r}: expected 'auto', 'cluster' or 'random'")
        check_pos_init("ssast", self.pos_init)


def check_pos_init(objective: str, pos_init: str) -> None:
    """Config check shared by the full-encoder objectives (SSAST, ASiT)."""
    if pos_init not in ("random", "sincos"):
        raise ConfigError(f"{objective}.pos_init={pos_init!r}: expected 'random' or 'sincos'")


def init_positions(encoder: ASTEncoder, pos_init: str) -> None:
    """With ``"sincos"``, start the encoder's learned patch positions from the sinusoidal table.

    In a full encoder (SSAST, ASiT's student) every masked token enters as the same mask
    embedding (or noise), so only its position tells it which patch to predict and which
    visible neighbours to attend to.
    SSAST's random positions (std 0.02, norm ~0.3 per token against ~4 for a patch
    embedding) carry no notion of "near": on 50 frame tokens the InfoNCE term sits at
    chance for hundreds of steps (every masked token gets the same prediction) while
    the positions learn locality. The sinusoidal table (norm ~10, nearby rows similar,
    MAE-AST's decoder positions) has it from step 0: on the low-label set SSAST leaves
    chance after ~250 steps instead of not at all in 800. The table stays learnable and
    is what fine-tuning starts from; an encoder with fixed sinusoidal positions is left as is.
    """
    if pos_init == "sincos" and encoder.cfg.pos_embed == "learned":
        with torch.no_grad():
            table = sincos_pos_embed(encoder.grid, encoder.cfg.embed_dim)
            encoder.pos_embed[0, encoder.num_prefix :] = table.to(encoder.pos_embed)


def patch_infonce(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Each masked position must pick its own patch among the clip's masked patches.

    ``pred``, ``target``: ``[B, M, patch_dim]``. Returns (mean cross-entropy, accuracy),
    both float32 whatever the autocast dtype; chance accuracy is ``1 / M``.
    """
    with torch.autocast(pred.device.type, enabled=False):
        logits = torch.bmm(pred.float(), target.float().transpose(1, 2))  # [B, M, M]
        labels = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        accuracy = (logits.argmax(dim=-1) == labels).float().mean()
    return loss, accuracy


def _prediction_head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out_dim))


class SSASTObjective(nn.Module):
    def __init__(self, encoder: ASTEncoder, cfg: SSASTConfig | None = None):
        super().__init__()
        self.cfg = cfg or SSASTConfig()
        self.encoder = encoder
        init_positions(encoder, self.cfg.pos_init)
        dim = encoder.cfg.embed_dim
        self.num_masked = mask_count(encoder.num_patches, self.cfg.mask_ratio, self.cfg.mask_count)
        self.mask_embed = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.xavier_normal_(self.mask_embed)
        self.cpredlayer = _prediction_head(dim, encoder.patch_dim)
        self.gpredlayer = _prediction_head(dim, encoder.patch_dim)

    def mask(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(ids_masked, ids_keep) for one batch, per the configured masking."""
        grid, cfg = self.encoder.grid, self.cfg
        clustered = cfg.masking == "cluster" or (cfg.masking == "auto" and grid[0] > 1)
        if clustered:
            sizes = (cfg.cluster_min, cfg.cluster_max)
            return cluster_mask(batch, grid, self.num_masked, sizes=sizes, generator=generator, device=device)
        return random_mask(batch, self.encoder.num_patches, self.num_masked, generator=generator, device=device)

    def forward(self, features: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Features [B, T, F] -> (loss, metrics)."""
        enc = self.encoder
        ids_masked, _ = self.mask(features.shape[0], features.device, generator)
        tokens = enc.embed_patches(features)  # [B, N, D]
        masked = ids_to_mask(ids_masked, enc.num_patches).unsqueeze(-1)  # [B, N, 1]
        tokens = torch.where(masked, self.mask_embed.to(tokens.dtype), tokens)
        hidden = enc.run_blocks(enc.add_pos(tokens))[:, enc.num_prefix :]  # [B, N, D]
        hidden = gather_tokens(hidden, ids_masked)  # [B, M, D]
        target = gather_tokens(enc.patchify(features), ids_masked)  # [B, M, patch_dim]

        nce, accuracy = patch_infonce(self.cpredlayer(hidden), target)
        mse = F.mse_loss(self.gpredlayer(hidden).float(), target.float())
        loss = self.cfg.nce_weight * nce + self.cfg.mse_weight * mse
        return loss, {"nce": nce.detach(), "mse": mse.detach(), "acc": accuracy}

    def encoder_state_dict(self) -> dict[str, Tensor]:
        return self.encoder.state_dict()
