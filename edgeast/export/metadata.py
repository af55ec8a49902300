"""The sidecar `model.json` that rides with every exported model.

An app needs more than weights: which label each logit means, what audio the
model expects, and which thresholds to start from. The same fields are also
embedded in the model file where the format allows (ONNX metadata_props).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT_VERSION = 1


@dataclass
class ArtifactMeta:
    labels: list[str]
    sample_rate: int = 16000
    window_samples: int = 16000          # model input: [1, window_samples] float32 PCM
    hop_samples: int = 1600              # default streaming hop (100 ms)
    thresholds: dict[str, float] = field(default_factory=dict)  # per keyword; missing -> default_threshold
    default_threshold: float = 0.8
    smoothing_hops: int = 3              # posterior smoothing window in hops
    refractory_s: float = 1.0
    normalization: dict[str, float] = field(default_factory=dict)  # {"mean": .., "std": ..} (already inside the graph)
    format: str = ""                     # "pte" | "onnx" | "checkpoint"
    int8: bool = False
    version: int = FORMAT_VERSION
    edgeast_version: str = ""
    source: str = ""                     # checkpoint it was exported from
    parity: dict = field(default_factory=dict)  # exporter's measured agreement/accuracy/latency

    def threshold(self, label: str) -> float:
        return self.thresholds.get(label, self.default_threshold)

    def keywords(self) -> list[str]:
        """Labels that can trigger a detection (not the filler classes)."""
        return [l for l in self.labels if not (l.startswith("_") and l.endswith("_"))]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @classmethod
    def from_dict(cls, d: dict) -> "ArtifactMeta":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model metadata has unknown fields {unknown}: written by a newer edgeast? upgrade edgeast")
        if "labels" not in d:
            raise ValueError("model metadata has no 'labels': re-export the model with `edgeast export`")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> "ArtifactMeta":
        """Load from a `.json` file, or find the sidecar of a `.pte`/`.onnx` file."""
        path = Path(path)
        if path.suffix != ".json":
            candidates = [path.with_suffix(".json"), path.parent / "model.json"]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise FileNotFoundError(
                    f"{path}: no metadata sidecar found (looked for {candidates[0].name} and model.json beside it); "
                    "export with `edgeast export` or put its model.json next to it")
            path = found
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable model metadata ({e}); re-export the model") from None
        return cls.from_dict(d)
