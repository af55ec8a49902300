"""Training-time augmentation on batched torch tensors.

Waveform augmentations take ``[B, samples]`` and return the same shape;
SpecAugment takes features ``[B, frames, mel_bins]``; mixup takes any
``[B, ...]`` input. Every example draws its own parameters. All random draws
come from the optional ``generator`` (a CPU ``torch.Generator``; per-example
parameters are drawn on the CPU and moved to the data's device) or, without
one, from torch's global seed, so a seeded run augments identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF


@dataclass
class AugmentConfig:
    sample_rate: int = 16000
    shift_ms: float = 100.0  # time shift uniform in +-shift_ms, zero fill
    gain_db: float = 6.0  # gain uniform in +-gain_db
    noise_prob: float = 0.8  # share of clips mixed with background noise (needs a noise bank)
    snr_db_min: float = 0.0
    snr_db_max: float = 20.0
    speed_prob: float = 0.5  # share of clips sped up or slowed down (tempo and pitch together)
    speed_min: float = 0.9
    speed_max: float = 1.1
    freqm: int = 48  # SpecAugment max mask widths (SSAST/AST Speech Commands recipe)
    timem: int = 48
    mixup_prob: float = 0.6  # share of clips mixed with another clip (AST recipe)
    mixup_alpha: float = 10.0  # mixing weight ~ Beta(alpha, alpha); AST uses Beta(10, 10)

    def __post_init__(self) -> None:
        for name in ("noise_prob", "speed_prob", "mixup_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AugmentConfig.{name}={getattr(self, name)}: a probability must lie in [0, 1]")
        for name in ("shift_ms", "gain_db", "freqm", "timem"):
            if getattr(self, name) < 0:
                raise ValueError(f"AugmentConfig.{name}={getattr(self, name)}: must be >= 0")
        if self.snr_db_min > self.snr_db_max:
            raise ValueError(f"AugmentConfig snr_db_min={self.snr_db_min} > snr_db_max={self.snr_db_max}")
        if not 0 < self.speed_min <= self.speed_max:
            raise ValueError(f"AugmentConfig speed_min={self.speed_min}, speed_max={self.speed_max}: need 0 < min <= max")
        if self.mixup_alpha <= 0:
            raise ValueError(f"AugmentConfig.mixup_alpha={self.mixup_alpha}: must be > 0")


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _check_batch(wave: torch.Tensor) -> None:
    if wave.dim() != 2:
        raise ValueError(f"expected a batch of waveforms [batch, samples], got shape {tuple(wave.shape)}")


def time_shift(wave: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Delay (positive) or advance each clip by up to ``max_shift`` samples, filling with zeros."""
    _check_batch(wave)
    batch, samples = wave.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (batch,), generator=generator).to(wave.device)
    source = torch.arange(samples, device=wave.device)[None, :] - shifts[:, None]  # out[t] = in[t - shift]
    inside = (source >= 0) & (source < samples)
    return torch.where(inside, wave.gather(1, source.clamp(0, samples - 1)), 0.0)


def random_gain(wave: torch.Tensor, max_db: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale each clip by a gain uniform in +-``max_db`` dB (no clipping: features are log-mel)."""
    _check_batch(wave)
    gain_db = _uniform(wave.shape[0], -max_db, max_db, generator)
    return wave * torch.pow(10.0, gain_db / 20).to(wave)[:, None]


def add_noise(
    wave: torch.Tensor,
    noise_bank: torch.Tensor,
    snr_db_min: float,
    snr_db_max: float,
    prob: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mix a random excerpt of a random ``noise_bank`` clip ``[N, L]`` into each clip at an SNR
    uniform in [snr_db_min, snr_db_max] dB, with probability ``prob``.

    Clips shorter than the waves are looped. A silent clip stays silent (its SNR is undefined).
    """
    _check_batch(wave)
    if noise_bank.dim() != 2 or noise_bank.numel() == 0:
        raise ValueError(f"noise_bank must be a non-empty [clips, samples] tensor, got shape {tuple(noise_bank.shape)}")
    batch, samples = wave.shape
    bank = noise_bank.to(wave)
    if bank.shape[1] < samples:
        bank = bank.repeat(1, -(-samples // bank.shape[1]))
    clip = torch.randint(bank.shape[0], (batch,), generator=generator)
    start = (torch.rand(batch, generator=generator) * (bank.shape[1] - samples + 1)).long()
    snr_db = _uniform(batch, snr_db_min, snr_db_max, generator)
    chosen = torch.rand(batch, generator=generator) < prob

    index = start[:, None] + torch.arange(samples)
    noise = bank[clip[:, None].to(wave.device), index.to(wave.device)]  # [B, samples]
    signal_power = wave.double().square().mean(1)
    noise_power = noise.double().square().mean(1).clamp_min(1e-20)
    scale = torch.sqrt(signal_power / (noise_power * torch.pow(10.0, snr_db / 10).to(wave.device)))
    scale = scale * chosen.to(wave.device)
    return wave + (scale[:, None] * noise).to(wave.dtype)


def change_speed(wave: torch.Tensor, factor: float, sample_rate: int) -> torch.Tensor:
    """Play ``wave`` ``factor`` times faster (tempo and pitch): ``[B, S]`` -> ``[B, ~S / factor]``."""
    return AF.resample(wave, orig_freq=round(sample_rate * factor), new_freq=sample_rate)


def _center_fit(wave: torch.Tensor, samples: int) -> torch.Tensor:
    excess = wave.shape[1] - samples
    if excess >= 0:
        return wave[:, excess // 2 : excess // 2 + samples]
    return F.pad(wave, (-excess // 2, -excess - (-excess // 2)))


def speed_perturb(
    wave: torch.Tensor,
    min_factor: float,
    max_factor: float,
    sample_rate: int,
    prob: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Change each clip's speed by a factor in [min_factor, max_factor], then center-crop or
    zero-pad it back to its length.

    Factors lie on a 0.05 grid (0.9, 0.95, 1.05, 1.1, ...): clips sharing a factor are
    resampled in one batched call, and each such ratio (e.g. 19/20) has a short polyphase
    kernel. A finer grid made this the slowest step of a training batch on CPU.
    """
    _check_batch(wave)
    batch, samples = wave.shape
    factors = (_uniform(batch, min_factor, max_factor, generator) * 20).round() / 20
    chosen = torch.rand(batch, generator=generator) < prob
    factors = torch.where(chosen, factors, 1.0)
    out = wave.clone()
    for factor in factors.unique().tolist():
        if factor == 1.0:
            continue
        rows = (factors == factor).nonzero().squeeze(1).to(wave.device)
        out[rows] = _center_fit(change_speed(wave[rows], factor, sample_rate), samples)
    return out


def mask_band(
    features: torch.Tensor,
    max_width: int,
    dim: int,
    mask_value: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Set one band along ``dim`` (1 = time, 2 = frequency) of each ``[B, T, F]`` example to
    ``mask_value``; width uniform in 0..max_width, start uniform over the valid positions."""
    if features.dim() != 3 or dim not in (1, 2):
        raise ValueError(f"mask_band takes [batch, frames, mel_bins] and dim 1 or 2, got {tuple(features.shape)}, dim={dim}")
    batch, size = features.shape[0], features.shape[dim]
    width = torch.randint(0, min(max_width, size) + 1, (batch,), generator=generator)
    start = (torch.rand(batch, generator=generator) * (size - width + 1)).long()
    position = torch.arange(size)[None, :]
    band = (position >= start[:, None]) & (position < (start + width)[:, None])  # [B, size]
    shape = [batch, 1, 1]
    shape[dim] = size
    return features.masked_fill(band.view(shape).to(features.device), mask_value)


class SpecAugment:
    """One frequency mask (width <= freqm) and one time mask (width <= timem) per example, as AST/SSAST."""

    def __init__(self, freqm: int, timem: int, mask_value: float = 0.0):
        self.freqm, self.timem, self.mask_value = freqm, timem, mask_value

    def __call__(self, features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        features = mask_band(features, self.freqm, 2, self.mask_value, generator)
        return mask_band(features, self.timem, 1, self.mask_value, generator)


def mixup(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    prob: float = 1.0,
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each example with a random partner from the batch: ``lam * a + (1 - lam) * b`` for the
    inputs and the soft targets alike, ``lam ~ Beta(alpha, alpha)``; with probability
    ``1 - prob`` an example is left as is.

    ``targets`` are soft ``[B, classes]`` or integer labels ``[B]`` (then give ``num_classes``).
    Returns ``(mixed inputs, mixed soft targets)``.
    """
    if targets.dim() == 1:
        if num_classes is None:
            raise ValueError("mixup got integer labels; pass num_classes to turn them into soft targets")
        targets = F.one_hot(targets.long(), num_classes)
    targets = targets.to(inputs.dtype if inputs.is_floating_point() else torch.float32)
    batch = inputs.shape[0]
    partner = torch.randperm(batch, generator=generator).to(inputs.device)
    chosen = torch.rand(batch, generator=generator) < prob
    # torch's Beta sampler takes no generator, so numpy draws it from a seed taken off ours.
    seed = int(torch.randint(2**62, (1,), generator=generator))
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, batch))
    lam = torch.where(chosen, lam, 1.0).to(device=inputs.device, dtype=targets.dtype)

    def mix(x: torch.Tensor) -> torch.Tensor:
        weight = lam.view(-1, *([1] * (x.dim() - 1)))
        return weight * x + (1 - weight) * x[partner]

    return mix(inputs), mix(targets)


class WaveAugment:
    """The waveform pipeline for a training batch: speed, shift, gain, then noise (so the SNR
    holds for the final signal). ``noise_bank`` ``[clips, samples]`` enables the noise step."""

    def __init__(self, cfg: AugmentConfig, noise_bank: torch.Tensor | None = None):
        if noise_bank is not None and (noise_bank.dim() != 2 or noise_bank.numel() == 0):
            raise ValueError(f"noise_bank must be a non-empty [clips, samples] tensor, got shape {tuple(noise_bank.shape)}")
        if noise_bank is not None and not torch.isfinite(noise_bank).all():
            raise ValueError("noise_bank contains NaN or infinite samples; check the background noise files")
        self.cfg = cfg
        self.noise_bank = noise_bank

    def __call__(self, wave: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_batch(wave)
        cfg = self.cfg
        if cfg.speed_prob > 0:
            wave = speed_perturb(wave, cfg.speed_min, cfg.speed_max, cfg.sample_rate, cfg.speed_prob, generator)
        max_shift = round(cfg.shift_ms * cfg.sample_rate / 1000)
        if max_shift > 0:
            wave = time_shift(wave, max_shift, generator)
        if cfg.gain_db > 0:
            wave = random_gain(wave, cfg.gain_db, generator)
        if self.noise_bank is not None and cfg.noise_prob > 0:
            wave = add_noise(wave, self.noise_bank, cfg.snr_db_min, cfg.snr_db_max, cfg.noise_prob, generator)
        return wave
