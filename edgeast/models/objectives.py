"""Pick a self-supervised pretraining objective by name.

Every objective is an ``nn.Module`` with ``.encoder``, ``forward(features [B, T, F])
-> (loss, metrics)`` and ``encoder_state_dict()``; ASiT also has
``after_optimizer_step(step, total_steps)`` for its EMA teacher.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from edgeast.config import ConfigError, from_dict
from edgeast.models.asit import ASiTConfig, ASiTObjective
from edgeast.models.ast import ASTConfig, ASTEncoder
from edgeast.models.maeast import MAEASTConfig, MAEASTObjective
from edgeast.models.ssast import SSASTConfig, SSASTObjective

OBJECTIVES: dict[str, tuple[type, type[nn.Module]]] = {
    "ssast": (SSASTConfig, SSASTObjective),
    "maeast": (MAEASTConfig, MAEASTObjective),
    "asit": (ASiTConfig, ASiTObjective),
}


def build_objective(name: str, encoder_cfg: ASTConfig, cfg_dict: dict[str, Any] | None = None) -> nn.Module:
    """A fresh encoder wrapped in the named objective, configured from a plain dict
    (keys of ``SSASTConfig`` / ``MAEASTConfig`` / ``ASiTConfig``; unknown keys are an error)."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown pretraining objective {name!r}: expected one of {', '.join(OBJECTIVES)}")
    cfg_cls, objective_cls = OBJECTIVES[name]
    try:
        cfg = from_dict(cfg_cls, cfg_dict)
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None
    return objective_cls(ASTEncoder(encoder_cfg), cfg)
