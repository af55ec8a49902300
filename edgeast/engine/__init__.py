"""The training engine: one loop (Trainer) for pretraining, fine-tuning and distillation."""
from edgeast.engine.config import EngineConfig
from edgeast.engine.sampler import worker_rng
from edgeast.engine.state import CheckpointError, find_checkpoint, load_weights, read_done, seed_everything
from edgeast.engine.trainer import FitResult, NonFiniteLossError, Trainer

__all__ = ["EngineConfig", "Trainer", "FitResult", "NonFiniteLossError", "CheckpointError", "worker_rng",
           "seed_everything", "find_checkpoint", "load_weights", "read_done"]
