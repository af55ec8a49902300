"""AST models: encoder, classifier, keyword model, checkpoints, imports, size table."""

from edgeast.models.ast import SIZES, ASTClassifier, ASTConfig, ASTEncoder, ast_config, resize_pos_embed
from edgeast.models.checkpoint import (
    CheckpointError,
    from_pretrained,
    load_encoder_state,
    load_extra,
    load_model,
    save_model,
)
from edgeast.models.importers import import_checkpoint
from edgeast.models.keyword import KeywordModel
from edgeast.models.profile import model_table

__all__ = [
    "SIZES",
    "ASTClassifier",
    "ASTConfig",
    "ASTEncoder",
    "CheckpointError",
    "KeywordModel",
    "ast_config",
    "from_pretrained",
    "import_checkpoint",
    "load_encoder_state",
    "load_extra",
    "load_model",
    "model_table",
    "resize_pos_embed",
    "save_model",
]
