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

How it stays exportable and cheap: only reshapes, step-1 slices,
concatenations, element-wise ops and matmuls, so XNNPACK takes the whole
graph as one delegate and ONNX Runtime runs it (both within 1e-5 of eager).

1. Framing without a kernel: the waveform is cut into hop-sized rows, and
   frame t is rows t, t+1 and the first 80 samples of row t+2 (in general
   q whole rows and r samples of the next, ``q, r = divmod(frame, hop)``).
2. Per frame, in Kaldi's order: minus the frame mean (DC removal),
   pre-emphasis ``y[n] = x[n] - 0.97 x[n-1]`` with ``x[-1] = x[0]`` (the
   previous sample is a shifted copy), times the window.
3. A two-stage (Cooley-Tukey) real DFT of the frame zero-padded to
   512 = 32 x 16. The 400 samples are 25 rows of 16 (``n = 16 n1 + n2``;
   rows 25..31 would be padding and are skipped). Stage 1 is a
   [25 -> 32] complex DFT over n1 for each column n2, then the twiddles
   ``exp(-2 pi i n2 k1 / 512)``, then stage 2 a 16-point DFT over n2 to
   ``k2 < 8`` only, which gives bins ``k = k1 + 32 k2`` below 256 (Kaldi's
   mel banks give the Nyquist bin zero weight). Other sizes split the same
   way: ``n_fft = n1_size * n2_size`` with ``n2_size = 2 ** max(1, log2(n_fft) // 2)``.
4. Power ``re^2 + im^2``, permuted to natural bin order; the mel banks as 8
   blocks of mel bins, each a matmul over only the FFT bins its triangles
   touch; ``log(clamp(x, eps))``.

Per 1 s window (98 frames, 128 mel bins) that is 4.5 M multiply-adds and
31 KB of constants, where one dense DFT matrix (folded with DC removal,
pre-emphasis and window) and a dense mel matrix were 26.5 M and 1.08 MB.
The arithmetic is float32 like Kaldi's own: within 5e-4 of kaldi.fbank at
the default settings; the float32 rounding of the DFT constants (~1e-7 of a
frame's norm) moves the log of the quietest bins, ~110 dB below the frame,
by up to ~2e-3.

Two computations of one spectrum: under ``torch.export`` (ExecuTorch, ONNX)
the DFT is the matmul form above, since neither XNNPACK nor ONNX Runtime's
exporters take an FFT op; everywhere else (training, eager inference) it is
``torch.fft.rfft``, 3-5x faster than the matmul form in eager PyTorch, where
that form spends its time on memory traffic. The two agree to ~1e-6 of a
frame's power (tests/test_frontend.py).

With per-frame DC removal (the default) subtracting the waveform mean
changes nothing in exact arithmetic, and removing each frame's mean first
already keeps a large DC offset away from the DFT; so ``subtract_wave_mean``
only acts when ``remove_dc_offset=False``.
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
MEL_BLOCKS = 8  # runs of mel bins, each a matmul over only the FFT bins it touches


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


def _phase(a: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
    """``2 pi a b / n`` in float64, with ``a b`` reduced mod ``n`` first so large products stay exact."""
    return (2 * math.pi / n) * ((a * b) % n).to(torch.float64)


class _FactorizedDFT:
    """Constants of the two-stage real DFT of one zero-padded frame (float64, cast when registered).

    ``n_fft = n1_size * n2_size``; sample ``n = n2_size * n1 + n2``, bin ``k = k1 + n1_size * k2``.
    Only ``rows = ceil(frame_length / n2_size)`` values of ``n1`` hold samples; the rest are the zero
    padding and are left out of stage 1. Only ``k2 < n2_size / 2`` is computed: bins ``0 .. n_fft/2 - 1``.
    """

    def __init__(self, frame_length: int, n_fft: int):
        self.n2_size = 1 << max(1, (n_fft.bit_length() - 1) // 2)  # 16 for 512: stage 2 is the shorter one
        self.n1_size = n_fft // self.n2_size  # 32 for 512
        self.rows = -(-frame_length // self.n2_size)  # 25 for 400
        self.k2_size = self.n2_size // 2  # 8 for 512
        n1 = torch.arange(self.rows)
        n2 = torch.arange(self.n2_size)
        k1 = torch.arange(self.n1_size)
        k2 = torch.arange(self.k2_size)
        # Stage 1, real -> complex over n1: [n1_size, rows] each.
        psi = _phase(k1[:, None], n1[None, :], self.n1_size)
        self.stage1_real, self.stage1_imag = torch.cos(psi), -torch.sin(psi)
        # Twiddles exp(-i theta), laid out like stage 1's output: [n2_size, n1_size].
        theta = _phase(n2[:, None], k1[None, :], n_fft)
        self.twiddle_cos, self.twiddle_sin = torch.cos(theta), torch.sin(theta)
        # Stage 2, complex -> complex over n2, as the maps from the real and from the imaginary part of
        # its input to (real | imaginary) k2: [2 * k2_size, n2_size] each.
        phi = _phase(k2[:, None], n2[None, :], self.n2_size)
        cos, sin = torch.cos(phi), torch.sin(phi)
        self.stage2_from_real, self.stage2_from_imag = torch.cat([cos, -sin]), torch.cat([sin, cos])


def _mel_blocks(mel_banks: torch.Tensor, count: int) -> list[tuple[int, int, torch.Tensor]]:
    """``(first_bin, end_bin, weight [mels in block, end_bin - first_bin])`` for ``count`` runs of mel bins.

    Each triangle spans a few neighbouring FFT bins (3 % of the dense matrix is non-zero for 128
    bins of a 512-point FFT), so each run of mel bins only reads the FFT bins its triangles touch.
    """
    blocks = []
    for rows in mel_banks.tensor_split(min(count, len(mel_banks))):
        touched = rows.any(0).nonzero()
        first, end = (int(touched.min()), int(touched.max()) + 1) if len(touched) else (0, 1)
        blocks.append((first, end, rows[:, first:end].contiguous()))
    return blocks


@contextmanager
def _exact_float32(device_type: str) -> Iterator[None]:
    """Autocast off and CUDA matmuls in IEEE float32 (not TF32) for the duration."""
    previous = torch.get_float32_matmul_precision()  # the setting the engine's TF32 switch uses
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


class LogMelFrontend(nn.Module):
    """Waveform ``[B, samples]`` -> normalized log-mel ``[B, frames, mel_bins]``."""

    def __init__(self, cfg: FrontendConfig | None = None):
        super().__init__()
        self.cfg = cfg or FrontendConfig()
        self.dft = _FactorizedDFT(self.cfg.frame_length, self.cfg.fft_size)
        self.use_fft = True  # False: the exported files' matmul DFT, also in eager (e.g. for other tracers)
        mel_banks, _ = get_mel_banks(
            self.cfg.num_mel_bins, self.cfg.fft_size, float(self.cfg.sample_rate),
            self.cfg.low_freq, self.cfg.high_freq, 100.0, -500.0, 1.0,  # Kaldi's VTLN defaults, warp 1 = off
        )  # [mels, fft_size // 2]: Kaldi gives the Nyquist bin zero weight, so it is never computed
        # All derive from cfg, so they stay out of the state dict.
        constants = dict(
            window=_window(self.cfg), stage1_real=self.dft.stage1_real, stage1_imag=self.dft.stage1_imag,
            twiddle_cos=self.dft.twiddle_cos, twiddle_sin=self.dft.twiddle_sin,
            stage2_from_real=self.dft.stage2_from_real, stage2_from_imag=self.dft.stage2_from_imag,
        )
        self.mel_spans = []  # (first FFT bin, end FFT bin) of each block of mel bins
        for i, (first, end, weight) in enumerate(_mel_blocks(mel_banks, MEL_BLOCKS)):
            constants[f"mel_block{i}"] = weight
            self.mel_spans.append((first, end))
        for name, value in constants.items():
            self.register_buffer(name, value.to(torch.float32), persistent=False)

    def mel_weights(self) -> list[torch.Tensor]:
        """The weight of each block of mel bins, ``[mels in block, FFT bins of mel_spans[i]]``."""
        return [getattr(self, f"mel_block{i}") for i in range(len(self.mel_spans))]

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
        CUDA it keeps the matmuls out of TF32 (which moves quiet spectral
        valleys by ~0.1 in raw log-mel).
        """
        if wave.dim() != 2:
            raise ValueError(f"LogMelFrontend expects a [batch, samples] waveform, got shape {tuple(wave.shape)}")
        self.num_frames_for(wave.shape[-1])  # rejects too-short input
        if wave.is_cuda or torch.is_autocast_enabled(wave.device.type):
            with _exact_float32(wave.device.type):
                return self._log_mel(wave.float())
        return self._log_mel(wave)

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

    def _log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        if self.cfg.subtract_wave_mean and not self.cfg.remove_dc_offset:  # else it cancels exactly (see top)
            wave = wave - wave.reshape(wave.shape[0], 1, 1, -1).mean(dim=(2, 3), keepdim=True).flatten(1)
        signal = self._windowed(self._frames(wave))
        exportable = torch.compiler.is_exporting() or not self.use_fft
        power = self._power_spectrum(signal) if exportable else self._fft_power(signal)
        blocks = zip(self.mel_spans, self.mel_weights())
        mel = torch.cat([F.linear(power[..., first:end], weight) for (first, end), weight in blocks], dim=-1)
        return torch.log(torch.clamp(mel, min=LOG_EPSILON))

    def _frames(self, wave: torch.Tensor) -> torch.Tensor:
        """``[B, S]`` -> ``[B, T, frame_length]``, snip_edges framing from hop-sized rows.

        Frame t is rows t .. t + q - 1 of the waveform cut into ``frame_shift`` rows, then the
        first r samples of row t + q (``q, r = divmod(frame_length, frame_shift)``): only
        reshapes, step-1 slices and one concatenation.
        """
        length, shift = self.cfg.frame_length, self.cfg.frame_shift
        count = 1 + (wave.shape[1] - length) // shift
        q, r = divmod(length, shift)
        used = (count + q if r else count + q - 1) * shift
        if used > wave.shape[1]:  # the last row is only read up to sample r
            wave = F.pad(wave, (0, used - wave.shape[1]))
        elif used < wave.shape[1]:
            wave = wave[:, :used]
        rows = wave.reshape(wave.shape[0], -1, shift)
        pieces = [rows[:, j : j + count] for j in range(q)] + ([rows[:, q : q + count, :r]] if r else [])
        return torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]

    def _windowed(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, T, frame_length]`` -> DC removed, pre-emphasized, windowed, zero-padded to ``rows * n2_size``."""
        cfg = self.cfg
        if cfg.remove_dc_offset:  # first, as Kaldi does: the rest then works on small values
            # A 4-D mean over the last two dims is the mean XNNPACK lowers.
            frames = frames - frames[..., None].mean(dim=(2, 3), keepdim=True).flatten(2)
        # Kaldi's pre-emphasis y[n] = x[n] - a x[n-1] (x[-1] taken as x[0]), then the window.
        signal = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # x[n-1]
        signal.mul_(-cfg.preemphasis).add_(frames).mul_(self.window)  # in place: see _power_spectrum
        padding = self.dft.rows * self.dft.n2_size - cfg.frame_length
        return F.pad(signal, (0, padding)) if padding else signal

    def _fft_power(self, signal: torch.Tensor) -> torch.Tensor:
        """``_power_spectrum`` by ``torch.fft`` (what training and eager inference run: see the top)."""
        n_fft = self.cfg.fft_size  # padding first is 2x faster than rfft(n=n_fft); .real/.imag beat abs()
        spectrum = torch.fft.rfft(F.pad(signal, (0, n_fft - signal.shape[-1])))[..., : n_fft // 2]
        return spectrum.real.square() + spectrum.imag.square()

    def _power_spectrum(self, signal: torch.Tensor) -> torch.Tensor:
        """Windowed frames -> power of bins ``0 .. fft_size/2 - 1``, ``[B, T, fft_size // 2]``.

        Element-wise steps run in place on the fresh tensors that cat and linear return: on a
        training batch, eager PyTorch spends more time faulting in fresh memory than computing.
        """
        dft = self.dft
        # Stage 1 over n1 for each n2 (contiguous, so that eager PyTorch runs one matmul, not a batched
        # one), then the twiddles exp(-2 pi i n2 k1 / fft_size).
        columns = signal.unflatten(-1, (dft.rows, dft.n2_size)).transpose(-1, -2).contiguous()  # [B, T, n2, n1]
        real, imag = F.linear(columns, self.stage1_real), F.linear(columns, self.stage1_imag)  # [B, T, n2, k1]
        twisted_real = (real * self.twiddle_cos).add_(imag * self.twiddle_sin)
        twisted_imag = imag.mul_(self.twiddle_cos).sub_(real.mul_(self.twiddle_sin))
        # Stage 2 over n2 for each k1, then power, in the natural bin order k = k1 + n1_size * k2.
        spectrum = F.linear(twisted_real.transpose(-1, -2), self.stage2_from_real).add_(
            F.linear(twisted_imag.transpose(-1, -2), self.stage2_from_imag))  # [B, T, k1, (real | imaginary) k2]
        squared = spectrum.square_().unflatten(-1, (2, dft.k2_size)).permute(0, 1, 3, 4, 2)  # [B, T, 2, k2, k1]
        return (squared[:, :, :1] + squared[:, :, 1:]).flatten(2)  # step-1 slices: XNNPACK has no select


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
