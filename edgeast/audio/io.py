"""Reading and writing audio files.

Everything downstream sees one format: a float32 mono waveform at the
requested sample rate with values in [-1, 1]. Files are read with soundfile
(wav, flac, ogg and whatever else libsndfile knows), downmixed by averaging
channels and resampled with ``torchaudio.functional.resample``. A file that
cannot serve as input raises :class:`AudioError` with a one-line message that
names it, so a data loader can skip and count it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF


class AudioError(ValueError):
    """A file that cannot be used as audio input (unreadable, empty, too short, non-finite)."""


def load_audio(path: str | Path, sample_rate: int = 16000, *, min_samples: int = 1) -> torch.Tensor:
    """Read ``path`` as a float32 mono waveform ``[samples]`` at ``sample_rate``, in [-1, 1].

    ``min_samples`` is checked after resampling. Values a float file stores
    outside [-1, 1] are clipped, as converting it to PCM would.
    """
    if not Path(path).is_file():
        raise AudioError(f"{path}: no such audio file; check the path")
    try:
        data, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as err:
        reason = getattr(err, "error_string", None) or str(err).splitlines()[0] or type(err).__name__
        raise AudioError(f"{path}: cannot read audio ({reason}); re-encode it as wav, flac or ogg") from err
    if data.size == 0:
        raise AudioError(f"{path}: file holds no audio samples; remove it or re-record it")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples; re-export the file")

    wave = torch.from_numpy(data).mean(dim=1)
    if file_rate != sample_rate:
        wave = AF.resample(wave, orig_freq=int(file_rate), new_freq=sample_rate)
    wave = wave.clamp(-1.0, 1.0).contiguous()
    if wave.numel() < min_samples:
        raise AudioError(
            f"{path}: too short ({wave.numel()} samples at {sample_rate} Hz, need at least {min_samples}); "
            "drop it or lower the minimum length"
        )
    return wave


def save_audio(path: str | Path, wave: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Write ``wave`` (``[samples]`` or ``[channels, samples]``, float in [-1, 1]) as 16-bit PCM wav.

    Values outside [-1, 1] are clipped; missing parent directories are created.
    """
    path = Path(path)
    if path.suffix.lower() != ".wav":
        raise AudioError(f"{path}: save_audio writes 16-bit PCM wav only; give the path a .wav suffix")
    samples = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    if samples.ndim not in (1, 2) or samples.size == 0:
        raise AudioError(f"{path}: expected a non-empty [samples] or [channels, samples] array, got shape {samples.shape}")
    if not np.isfinite(samples).all():
        raise AudioError(f"{path}: refusing to write NaN or infinite samples")
    samples = np.clip(samples.astype(np.float32), -1.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples.T if samples.ndim == 2 else samples, int(sample_rate), subtype="PCM_16", format="WAV")
