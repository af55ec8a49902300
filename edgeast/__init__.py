"""edgeast: on-device keyword spotting with Audio Spectrogram Transformers.

`edgeast.load_model(path)` / `edgeast.save_model(model, path, ...)` read and
write checkpoints (a directory with model.safetensors + config.json).
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_model", "save_model", "__version__"]


def __getattr__(name: str):
    # Imported lazily so `import edgeast` (and the CLI's --help) stays fast.
    if name in ("load_model", "save_model"):
        from edgeast.models import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'edgeast' has no attribute {name!r}")
