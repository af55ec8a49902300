"""Kaldi-compatible log-mel front end that exports to ExecuTorch and ONNX.

The features are those of AST/SSAST: the waveform mean is subtracted, then
``torchaudio.compliance.kaldi.fbank(htk_compat=True, use_energy=False,
window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)`` with
Kaldi defaults otherwise (25 ms frames, snip_edges, per-frame DC removal,
pre-emphasis 0.97, 512-point FFT, low 20 Hz), then ``(x - mean) / (2 * std)``
with dataset statistics. ``window="povey"`` gives MAE-AST's features.

Frame count: with snip_edges a waveform of S samples gives
``1 + (S - 400) // 160`` frames at 16 kHz, so a 1 s window (16000 samples)
gives 98 frames. ``FrontendConfig.num_frames`` (default 100) pads the raw
log-mel with zeros, or crops, to a fixed count, as SSAST does before it
normalizes; ``num_frames=None`` keeps the natural count.

How it stays exportable: per-frame DC removal, pre-emphasis, the window and
the real DFT of the zero-padded frame are all linear maps of the 400-sample
frame, so they fold (in float64, at construction) into one matrix of cosine
rows and one of sine rows. Framing and that matrix together are one strided
convolution whose kernel is the folded matrix; squaring and the mel matmul
(which also sums real^2 + imag^2) and ``log(clamp(x, eps))`` follow. Only
conv, mul, mean, linear, clamp and log remain: XNNPACK takes the whole graph
as one delegate and ONNX Runtime runs it, both within 1e-5 of eager.

Subtracting the waveform mean changes nothing in exact arithmetic once every
frame has its DC removed; it is kept (as SSAST does) because it keeps a large
DC offset out of the float32 convolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchaudio.compliance.kaldi import get_mel_banks

WINDOWS = ("hanning", "povey", "hamming")
LOG_EPSILON = torch.finfo(torch.float32).eps  # what kaldi.fbank floors mel energies at


@dataclass
class FrontendConfig:
    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window: str = "hanning"
    preemphasis: float = 0.97
    remove_dc_offset: bool = True
    subtract_wave_mean: bool = True
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0 means offset from Nyquist, as in Kaldi
    num_frames: int | None = 100
    mean: float = -6.845978  # Speech Commands statistics (SSAST)
    std: float = 5.5654526

    def __post_init__(self) -> None:
        nyquist = self.sample_rate / 2
        high = self.high_freq + nyquist if self.high_freq <= 0 else self.high_freq
        if self.window not in WINDOWS:
            raise ValueError(f"FrontendConfig.window={self.window!r}: use one of {', '.join(WINDOWS)}")
        if self.num_mel_bins < 4:
            raise ValueError(f"FrontendConfig.num_mel_bins={self.num_mel_bins}: need at least 4 mel bins")
        if self.frame_length < 2 or self.frame_shift < 1:
            raise ValueError(
                f"FrontendConfig frame_length_ms={self.frame_length_ms}, frame_shift_ms={self.frame_shift_ms}: "
                f"give at least 2 samples per frame and 1 per hop at {self.sample_rate} Hz"
            )
        if not 0 <= self.low_freq < high <= nyquist:
            raise ValueError(
                f"FrontendConfig low_freq={self.low_freq}, high_freq={self.high_freq}: need "
                f"0 <= low < high <= Nyquist ({nyquist} Hz)"
            )
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"FrontendConfig.num_frames={self.num_frames}: use a positive count or None")
        if not self.std > 0:
            raise ValueError(f"FrontendConfig.std={self.std}: normalization std must be positive")

    @property
    def frame_length(self) -> int:
        """Samples per frame (400 at 16 kHz, 25 ms); truncated like Kaldi."""
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def frame_shift(self) -> int:
        """Samples per hop (160 at 16 kHz, 10 ms)."""
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    @property
    def fft_size(self) -> int:
        """Frame length rounded up to a power of two (512 for 400 samples)."""
        return 1 << (self.frame_length - 1).bit_length()


def _window(cfg: FrontendConfig) -> torch.Tensor:
    hann = torch.hann_window(cfg.frame_length, periodic=False, dtype=torch.float64)
    if cfg.window == "hanning":
        return hann
    if cfg.window == "povey":
        return hann.pow(0.85)
    return torch.hamming_window(cfg.frame_length, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float64)


def _frame_to_spectrum_kernel(cfg: FrontendConfig) -> torch.Tensor:
    """Conv kernel ``[2 * K, 1, 1, frame_length]``: cosine rows, then sine rows, of the folded map.

    K = fft_size // 2: Kaldi's mel banks give the Nyquist bin zero weight, so it is skipped.
    """
    length, n_fft = cfg.frame_length, cfg.fft_size
    eye = torch.eye(length, dtype=torch.float64)
    dc_removal = eye - 1.0 / length if cfg.remove_dc_offset else eye
    # Kaldi pre-emphasis: y[n] = x[n] - a * x[n-1], with x[-1] taken as x[0].
    previous = torch.diag(torch.ones(length - 1, dtype=torch.float64), -1)
    previous[0, 0] = 1.0
    preemphasis = eye - cfg.preemphasis * previous
    frame_map = _window(cfg)[:, None] * (preemphasis @ dc_removal)  # [length, length]

    k = torch.arange(n_fft // 2, dtype=torch.int64)[:, None]
    n = torch.arange(length, dtype=torch.int64)[None, :]
    angle = (2 * math.pi / n_fft) * ((k * n) % n_fft).to(torch.float64)  # exact phase reduction
    basis = torch.cat([torch.cos(angle), torch.sin(angle)])  # [2K, length]; sign of sine is irrelevant for power
    return (basis @ frame_map).to(torch.float32)[:, None, None, :]


@contextmanager
def _exact_float32(device_type: str) -> Iterator[None]:
    """Autocast off and cuDNN convolutions in IEEE float32 (not TF32) for the duration."""
    conv = torch.backends.cudnn.conv
    previous = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        conv.fp32_precision = previous


class LogMelFrontend(nn.Module):
    """Waveform ``[B, samples]`` -> normalized log-mel ``[B, frames, mel_bins]``."""

    def __init__(self, cfg: FrontendConfig | None = None):
        super().__init__()
        self.cfg = cfg or FrontendConfig()
        mel_banks, _ = get_mel_banks(
            self.cfg.num_mel_bins, self.cfg.fft_size, float(self.cfg.sample_rate),
            self.cfg.low_freq, self.cfg.high_freq, 100.0, -500.0, 1.0,  # Kaldi's VTLN defaults, warp 1 = off
        )  # [mels, fft_size // 2]
        # Power is real^2 + imag^2 and the mel map is linear, so the mel weight
        # takes the squared cosine and sine outputs alike: [mels, 2K].
        mel_weight = torch.cat([mel_banks, mel_banks], dim=1).to(torch.float32)
        # Both derive from cfg, so they stay out of the state dict.
        self.register_buffer("spectrum_kernel", _frame_to_spectrum_kernel(self.cfg), persistent=False)
        self.register_buffer("mel_weight", mel_weight, persistent=False)

    def num_frames_for(self, num_samples: int) -> int:
        """Frames ``forward`` returns for a waveform of ``num_samples`` samples."""
        if num_samples < self.cfg.frame_length:
            raise ValueError(
                f"{num_samples} samples is shorter than one {self.cfg.frame_length}-sample frame; pad the audio"
            )
        if self.cfg.num_frames is not None:
            return self.cfg.num_frames
        return 1 + (num_samples - self.cfg.frame_length) // self.cfg.frame_shift

    def fbank(self, wave: torch.Tensor) -> torch.Tensor:
        """Un-normalized log-mel ``[B, natural frames, mel_bins]``, equal to kaldi.fbank per row.

        Always computed in IEEE float32: under autocast it steps out, and on
        CUDA it keeps cuDNN from running the conv in TF32 (which moves quiet
        spectral valleys by ~0.1 in raw log-mel).
        """
        if wave.dim() != 2:
            raise ValueError(f"LogMelFrontend expects a [batch, samples] waveform, got shape {tuple(wave.shape)}")
        self.num_frames_for(wave.shape[-1])  # rejects too-short input
        if wave.is_cuda or torch.is_autocast_enabled(wave.device.type):
            with _exact_float32(wave.device.type):
                return self._log_mel(wave.float())
        return self._log_mel(wave)

    def _log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        # As an image [B, 1, 1, samples]: conv2d is what XNNPACK runs convolutions
        # as, and it takes a mean over the last two dims only.
        image = wave.reshape(wave.shape[0], 1, 1, wave.shape[1])
        if self.cfg.subtract_wave_mean:
            image = image - image.mean(dim=(2, 3), keepdim=True)
        # Framing + DC removal + pre-emphasis + window + DFT in one strided conv.
        spectrum = F.conv2d(image, self.spectrum_kernel, stride=(1, self.cfg.frame_shift))  # [B, 2K, 1, T]
        squared = spectrum.square().flatten(1, 2).transpose(1, 2)  # [B, T, 2K]
        mel = F.linear(squared, self.mel_weight)  # [B, T, mels]
        return torch.log(torch.clamp(mel, min=LOG_EPSILON))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        features = self.fbank(wave)
        target = self.cfg.num_frames
        if target is not None:
            frames = features.shape[1]
            if frames < target:
                features = F.pad(features, (0, 0, 0, target - frames))  # zeros in the raw log-mel, as SSAST
            elif frames > target:
                features = features[:, :target]
        return (features - self.cfg.mean) / (2 * self.cfg.std)


@torch.no_grad()
def compute_stats(waves: Iterable[torch.Tensor], cfg: FrontendConfig) -> tuple[float, float]:
    """Mean and std of the raw log-mel over all natural (unpadded) frames of ``waves``.

    ``waves`` yields ``[samples]`` or ``[B, samples]`` tensors; they are
    streamed and merged in float64 (Chan et al.), so a dataset never has to
    fit in memory. The result goes into ``FrontendConfig.mean`` / ``std``.
    (AST's get_norm_stats.py instead averages per-batch stats of padded
    features, so its published figures differ slightly from this definition.)
    """
    frontend = LogMelFrontend(cfg)
    count, mean, sum_sq_dev = 0, 0.0, 0.0
    for wave in waves:
        wave = wave.reshape(-1, wave.shape[-1])
        values = frontend.to(wave.device).fbank(wave.float()).double()
        n = values.numel()
        batch_mean = values.mean().item()
        batch_sq_dev = (values - batch_mean).square().sum().item()
        delta = batch_mean - mean
        total = count + n
        mean += delta * n / total
        sum_sq_dev += batch_sq_dev + delta * delta * count * n / total
        count = total
    if count == 0:
        raise ValueError("compute_stats got no audio; give it at least one waveform")
    return mean, math.sqrt(sum_sq_dev / count)
