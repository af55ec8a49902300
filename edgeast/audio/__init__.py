"""Audio in: file I/O, the exportable Kaldi log-mel front end, training-time augmentation."""

from edgeast.audio.augment import AugmentConfig, SpecAugment, WaveAugment, mixup
from edgeast.audio.frontend import FrontendConfig, LogMelFrontend, compute_stats
from edgeast.audio.io import AudioError, load_audio, save_audio

__all__ = [
    "AudioError",
    "AugmentConfig",
    "FrontendConfig",
    "LogMelFrontend",
    "SpecAugment",
    "WaveAugment",
    "compute_stats",
    "load_audio",
    "mixup",
    "save_audio",
]
