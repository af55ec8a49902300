"""Classification metrics: accuracy, per-class precision/recall, confusion matrix (and its plot)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class ClassificationReport:
    labels: list[str]
    confusion: np.ndarray                      # [true, predicted] counts
    extra: dict = field(default_factory=dict)  # e.g. artifact, split, skipped files

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.total, 1))

    def precision(self) -> np.ndarray:
        predicted = self.confusion.sum(axis=0)
        return np.divide(np.diag(self.confusion), predicted, out=np.zeros(len(self.labels)), where=predicted > 0)

    def recall(self) -> np.ndarray:
        actual = self.confusion.sum(axis=1)
        return np.divide(np.diag(self.confusion), actual, out=np.zeros(len(self.labels)), where=actual > 0)

    def to_dict(self) -> dict:
        p, r = self.precision(), self.recall()
        return {
            "accuracy": self.accuracy, "total": self.total,
            "per_class": {l: {"precision": float(p[i]), "recall": float(r[i]), "support": int(self.confusion[i].sum())}
                          for i, l in enumerate(self.labels)},
            "confusion": self.confusion.tolist(), "labels": self.labels, **self.extra,
        }

    def plot_confusion(self, path: str | Path) -> Path:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = len(self.labels)
        norm = self.confusion / np.maximum(self.confusion.sum(axis=1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(n), self.labels, rotation=60, ha="right")
        ax.set_yticks(range(n), self.labels)
        for i in range(n):
            for j in range(n):
                if self.confusion[i, j]:
                    ax.text(j, i, str(int(self.confusion[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"accuracy {100 * self.accuracy:.2f}% ({self.total} clips)")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def confusion_matrix(targets, predictions, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(targets, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return cm
