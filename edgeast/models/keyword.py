"""Keyword model: waveform in, logits out. The unit that is trained, saved and exported."""

from __future__ import annotations

from torch import Tensor, nn

from edgeast.audio.frontend import LogMelFrontend
from edgeast.models.ast import ASTClassifier


class KeywordModel(nn.Module):
    """``LogMelFrontend`` then ``ASTClassifier``: ``forward(wave [B, S]) -> logits [B, C]``.

    The submodule names ``frontend`` and ``classifier`` are a contract: int8
    export quantizes ``classifier`` only and keeps the front end in float.
    """

    def __init__(self, frontend: LogMelFrontend, classifier: ASTClassifier, labels: list[str] | None = None):
        super().__init__()
        fcfg, mcfg = frontend.cfg, classifier.cfg
        if fcfg.num_mel_bins != mcfg.num_mel_bins:
            raise ValueError(
                f"front end gives {fcfg.num_mel_bins} mel bins but the classifier expects {mcfg.num_mel_bins}"
            )
        if fcfg.num_frames is not None and fcfg.num_frames != mcfg.num_frames:
            raise ValueError(
                f"front end gives {fcfg.num_frames} frames but the classifier expects {mcfg.num_frames}; "
                "set FrontendConfig.num_frames to match"
            )
        labels = list(labels) if labels is not None else [str(i) for i in range(mcfg.num_classes)]
        if len(labels) != mcfg.num_classes:
            raise ValueError(f"{len(labels)} labels given for a classifier with {mcfg.num_classes} classes")
        self.frontend = frontend
        self.classifier = classifier
        self.labels = labels

    def forward(self, wave: Tensor) -> Tensor:
        return self.classifier(self.frontend(wave))  # [B, S] -> [B, T, F] -> [B, C]
