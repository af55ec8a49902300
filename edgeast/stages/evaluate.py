"""`edgeast eval`: accuracy of a checkpoint or an exported .pte/.onnx on a dataset split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from edgeast.data.common import DatasetError
from edgeast.metrics import ClassificationReport, confusion_matrix
from edgeast.models.keyword import KeywordModel


def _batches(dataset: Dataset, batch_size: int):
    """(waves [B, S], targets [B]) over a dataset, skipping unreadable items."""
    waves, targets = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if item is None:
            continue
        waves.append(item[0])
        targets.append(int(item[1]))
        if len(waves) == batch_size:
            yield torch.stack(waves), targets
            waves, targets = [], []
    if waves:
        yield torch.stack(waves), targets


@torch.no_grad()
def evaluate_model(model: KeywordModel, dataset: Dataset, batch_size: int = 64) -> ClassificationReport:
    """Top-1 predictions of a PyTorch keyword model over a labelled dataset."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, targets = [], []
    for waves, t in _batches(dataset, batch_size):
        preds.append(model(waves.to(device)).argmax(-1).cpu().numpy())
        targets.extend(t)
    model.train(was_training)
    labels = list(model.labels)
    return ClassificationReport(labels, confusion_matrix(targets, np.concatenate(preds), len(labels)))


def evaluate_artifact(artifact: str | Path, dataset: Dataset, split: str = "test") -> ClassificationReport:
    """Evaluate a checkpoint directory, .pte or .onnx on `dataset` (labels matched by name)."""
    from edgeast.runtime.backends import open_backend

    backend = open_backend(artifact)
    labels = list(backend.meta.labels)
    data_labels = list(getattr(dataset, "labels", labels))
    if sorted(data_labels) != sorted(labels):
        raise DatasetError(f"{artifact}: model labels {labels} do not match the data's labels {data_labels}")
    to_model = np.array([labels.index(l) for l in data_labels])
    preds, targets = [], []
    for waves, t in _batches(dataset, 64):
        logits = backend.infer_batch(waves.numpy().astype(np.float32))
        preds.append(logits.argmax(-1))
        targets.extend(to_model[t].tolist())
    report = ClassificationReport(labels, confusion_matrix(targets, np.concatenate(preds), len(labels)))
    report.extra.update({"artifact": str(artifact), "split": split,
                         "skipped_files": int(getattr(dataset, "skipped", 0))})
    return report
