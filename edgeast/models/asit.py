"""ASiT pretraining (Atito et al.): group-masked model learning + local/global self-distillation.

The student sees a corrupted spectrogram: ~70% of the patches, in random
patch-aligned rectangles, are overwritten with noise or with the same region
of another clip in the batch ("alien" content, GMML). An EMA teacher sees the
clean spectrogram. DINO-style heads (MLP -> L2-normalized bottleneck ->
normalized prototypes) turn tokens into distributions; the student matches the
centered, sharpened teacher on the global token and on every masked token,
and a light head reconstructs the masked patches (L1, weight 2).

The teacher is part of ``state_dict`` (resume) but has ``requires_grad=False``
and is always in eval mode; ``after_optimizer_step`` moves it towards the
student with a momentum that follows DINO's cosine schedule up to 1.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from edgeast.config import ConfigError
from edgeast.models.ast import ASTEncoder, Block
from edgeast.models.masking import block_mask, gather_tokens, mask_count
from edgeast.models.ssast import check_pos_init, init_positions


@dataclass
class ASiTConfig:
    mask_ratio: float = 0.7
    max_block: float = 0.3  # GMML: one rectangle spans at most 30% of each axis
    alien_prob: float = 0.5  # share of rectangles filled from another clip; the others get noise
    out_dim: int = 4096  # prototypes per head
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996  # at step 0; cosine schedule to 1.0 at the last step
    reconstruction_weight: float = 2.0
    # Not in ASiT (paper: 1 each). On small data with sinusoidal positions the local DINO term is
    # solved from position alone; lower weights limit what the DINO terms do to the encoder and
    # 0 removes a term (0/0: GMML alone). Measured in bench/RESULTS.md, low-label section.
    global_weight: float = 1.0
    local_weight: float = 1.0
    # Not in ASiT (paper: an MLP on the encoder's last tokens). > 0: that many transformer blocks over
    # all the student's tokens first, as MAE-AST's decoder, so the encoder's last layer need not
    # hold the spectrogram itself (bench/RESULTS.md, low-label section).
    reconstruction_depth: int = 0
    pos_init: str = "random"  # "random" (trunc normal, std 0.02) | "sincos" (edgeast.models.ssast.init_positions)
    position_center: bool = False  # not in ASiT: one local center per token position (see local_center)

    def __post_init__(self) -> None:
        check_pos_init("asit", self.pos_init)
        if self.reconstruction_depth < 0:
            raise ConfigError(f"asit.reconstruction_depth={self.reconstruction_depth}: expected >= 0")
        for name in ("global_weight", "local_weight", "reconstruction_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"asit.{name}={getattr(self, name)}: expected >= 0")


class ProjectionHead(nn.Module):
    """DINO head: 3-layer MLP, L2-normalized bottleneck, weight-normalized prototype layer."""

    def __init__(self, dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        for linear in self.mlp[::2]:
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        """[..., dim] -> logits [..., out_dim], each in [-1, 1] (cosine to a prototype)."""
        return F.linear(F.normalize(self.mlp(x), dim=-1), F.normalize(self.prototypes, dim=-1))


class ASiTObjective(nn.Module):
    def __init__(self, encoder: ASTEncoder, cfg: ASiTConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ASiTConfig()
        self.encoder = encoder
        init_positions(encoder, cfg.pos_init)  # before the teacher copies the encoder
        self.num_masked = mask_count(encoder.num_patches, cfg.mask_ratio)
        dim = encoder.cfg.embed_dim
        head = (dim, cfg.out_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim)
        self.global_head = ProjectionHead(*head)
        self.local_head = ProjectionHead(*head)
        self.reconstruction_blocks = nn.ModuleList(Block(encoder.cfg, 0.0) for _ in range(cfg.reconstruction_depth))
        self.reconstruction_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, encoder.patch_dim))
        student = nn.ModuleDict({"encoder": encoder, "global_head": self.global_head, "local_head": self.local_head})
        self.teacher = copy.deepcopy(student).requires_grad_(False).eval()
        self.register_buffer("center_global", torch.zeros(1, cfg.out_dim))
        local_centers = encoder.num_patches if cfg.position_center else 1
        self.register_buffer("center_local", torch.zeros(local_centers, cfg.out_dim))

    def train(self, mode: bool = True) -> ASiTObjective:
        super().train(mode)
        self.teacher.eval()  # no dropout / drop path in the teacher
        return self

    def corrupt(self, features: Tensor, ids_masked: Tensor, alien: Tensor, generator: torch.Generator | None) -> Tensor:
        """Overwrite the masked patches' pixels with another clip's (``alien``) or with noise."""
        cfg, grid = self.encoder.cfg, self.encoder.grid
        batch, frames, mels = features.shape
        flags = torch.zeros(batch, 2, self.encoder.num_patches, device=features.device)
        flags[:, 0].scatter_(1, ids_masked, alien.float())
        flags[:, 1].scatter_(1, ids_masked, (~alien).float())
        flags = flags.unsqueeze(2).expand(-1, -1, self.encoder.patch_dim, -1).reshape(batch, -1, grid[0] * grid[1])
        pixels = F.fold(flags, (mels, frames), (cfg.patch_f, cfg.patch_t), stride=(cfg.stride_f, cfg.stride_t))
        alien_px, noise_px = (pixels.transpose(2, 3) > 0).unbind(1)  # each [B, T, F]

        where = generator.device if generator is not None else features.device
        noise = torch.randn(features.shape, generator=generator, device=where).to(features)
        noise = features.mean(dim=(1, 2), keepdim=True) + features.std(dim=(1, 2), keepdim=True) * noise
        corrupted = torch.where(noise_px, noise, features)
        return torch.where(alien_px, features.roll(1, dims=0), corrupted)

    def forward(self, features: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Features [B, T, F] -> (loss, metrics)."""
        enc, cfg = self.encoder, self.cfg
        ids_masked, _, alien = block_mask(
            features.shape[0],
            enc.grid,
            self.num_masked,
            max_block=cfg.max_block,
            alien_prob=cfg.alien_prob,
            generator=generator,
            device=features.device,
        )
        student = enc(self.corrupt(features, ids_masked, alien, generator))  # [B, P + N, D]
        student_local = gather_tokens(student[:, enc.num_prefix :], ids_masked)  # [B, M, D]
        with torch.no_grad():
            teacher = self.teacher["encoder"](features)
            teacher_global = self.teacher["global_head"](self._global_token(teacher))
            teacher_tokens = self.teacher["local_head"](teacher[:, enc.num_prefix :])  # [B, N, K]
            teacher_local = gather_tokens(teacher_tokens, ids_masked)
            center_local = self.local_center(ids_masked)
        student_global = self.global_head(self._global_token(student))
        student_local_logits = self.local_head(student_local)

        loss_global = self._distill(student_global, teacher_global, self.center_global)
        loss_local = self._distill(student_local_logits, teacher_local, center_local)
        decoded = student_local
        if self.reconstruction_blocks:  # the blocks see every token, then only the masked ones are read out
            decoded = student
            for block in self.reconstruction_blocks:
                decoded = block(decoded)
            decoded = gather_tokens(decoded[:, enc.num_prefix :], ids_masked)
        target = gather_tokens(enc.patchify(features), ids_masked)
        recon_l1 = F.l1_loss(self.reconstruction_head(decoded).float(), target.float())
        loss = cfg.global_weight * loss_global + cfg.local_weight * loss_local + cfg.reconstruction_weight * recon_l1

        with torch.no_grad():
            agreement = (student_local_logits.argmax(-1) == teacher_local.argmax(-1)).float().mean()
            teacher_probs = F.softmax((teacher_local.float() - center_local) / cfg.teacher_temp, dim=-1)
            teacher_probs = teacher_probs.flatten(0, 1)
            usage = teacher_probs.mean(0)
            teacher_entropy = -(usage * usage.clamp_min(1e-12).log()).sum()
            token_entropy = -(teacher_probs * teacher_probs.clamp_min(1e-12).log()).sum(-1).mean()
            if self.training:
                self._update_center(self.center_global, teacher_global)
                self._update_center(self.center_local, teacher_tokens if cfg.position_center else teacher_local)
        metrics = {
            "loss_global": loss_global.detach(),
            "loss_local": loss_local.detach(),
            "recon_l1": recon_l1.detach(),
            "acc": agreement,  # student/teacher argmax agreement on masked tokens
            "teacher_entropy": teacher_entropy,  # of the mean teacher distribution; ~0: all on one prototype
            "token_entropy": token_entropy,  # mean per-token teacher entropy; ~ln(out_dim): uniform, nothing to learn
        }
        return loss, metrics

    def _global_token(self, tokens: Tensor) -> Tensor:
        """The cls token, or the mean patch token for an encoder without prefix tokens."""
        prefix = self.encoder.num_prefix
        return tokens[:, 0] if prefix else tokens.mean(dim=1)

    def _distill(self, student_logits: Tensor, teacher_logits: Tensor, center: Tensor) -> Tensor:
        """Cross-entropy from the centered, sharpened teacher to the student, in float32."""
        with torch.autocast(student_logits.device.type, enabled=False):
            teacher = F.softmax((teacher_logits.float() - center) / self.cfg.teacher_temp, dim=-1)
            student = F.log_softmax(student_logits.float() / self.cfg.student_temp, dim=-1)
            return -(teacher * student).sum(dim=-1).mean()

    def local_center(self, ids_masked: Tensor) -> Tensor:
        """The center for the masked tokens' teacher logits: ``[1, K]``, or ``[B, M, K]`` per position.

        With frame tokens and strong (sinusoidal) positions the teacher's token outputs are
        largely a function of position; one global center leaves that in the targets and the
        student matches them from the masked token's position alone (97% agreement, nothing
        learned about the content). A center per position removes what position predicts;
        on the low-label set the targets then go uniform instead (bench/RESULTS.md).
        """
        if not self.cfg.position_center:
            return self.center_local
        return gather_tokens(self.center_local.expand(ids_masked.shape[0], -1, -1), ids_masked)

    def _update_center(self, center: Tensor, teacher_logits: Tensor) -> None:
        """EMA of the batch mean of ``teacher_logits [B, ..., K]``, per position if ``center`` is ``[N, K]``."""
        flat = teacher_logits.float().flatten(0, -2) if center.shape[0] == 1 else teacher_logits.float()
        batch_center = flat.mean(dim=0, keepdim=center.shape[0] == 1)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            batch_center /= dist.get_world_size()
        center.lerp_(batch_center, 1 - self.cfg.center_momentum)

    def teacher_momentum(self, step: int, total_steps: int) -> float:
        """DINO's cosine schedule: ``teacher_momentum`` at step 0, 1.0 at ``total_steps``."""
        progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
        return 1 - (1 - self.cfg.teacher_momentum) * (math.cos(math.pi * progress) + 1) / 2

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """teacher <- m * teacher + (1 - m) * student (buffers are copied)."""
        momentum = self.teacher_momentum(step, total_steps)
        student = (self.encoder, self.global_head, self.local_head)
        student_params = list(itertools.chain.from_iterable(m.parameters() for m in student))
        torch._foreach_lerp_(list(self.teacher.parameters()), student_params, 1 - momentum)
        student_buffers = itertools.chain.from_iterable(m.buffers() for m in student)
        for teacher_buffer, student_buffer in zip(self.teacher.buffers(), student_buffers):
            teacher_buffer.copy_(student_buffer)

    def encoder_state_dict(self) -> dict[str, Tensor]:
        return self.encoder.state_dict()
