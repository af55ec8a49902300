import math

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from torchaudio.compliance import kaldi
from torchaudio.compliance.kaldi import get_mel_banks

from edgeast.audio.frontend import FrontendConfig, LogMelFrontend, compute_stats

SR = 16000


def speech_like(samples: int, peak: float = 0.9, seed: int = 0) -> torch.Tensor:
    """Vowel-like glottal pulse train (gliding pitch) through three formant resonators,
    with fricative noise bursts and a low noise floor, scaled to ``peak``."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples, dtype=torch.float64) / SR
    f0 = 110 + 60 * torch.sin(2 * math.pi * 1.3 * t + seed)
    cycles = torch.floor(torch.cumsum(2 * math.pi * f0 / SR, 0) / (2 * math.pi))
    voice = (torch.diff(cycles, prepend=cycles[:1]) > 0).double()
    for freq, bandwidth in [(700, 110), (1220, 120), (2600, 160)]:
        r, theta = math.exp(-math.pi * bandwidth / SR), 2 * math.pi * freq / SR
        a = torch.tensor([1.0, -2 * r * math.cos(theta), r * r], dtype=torch.float64)
        voice = AF.lfilter(voice, a, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), clamp=False)
    noise = torch.randn(samples, generator=gen, dtype=torch.float64)
    bursts = ((t * 4 + 0.1 * seed) % 1 > 0.7).double()
    wave = voice / voice.abs().max() + 0.3 * noise * bursts + 0.003 * noise
    return (wave / wave.abs().max() * peak).float()


def kaldi_reference(wave: torch.Tensor, bins: int, window: str = "hanning") -> torch.Tensor:
    """SSAST's features: waveform mean removed, then kaldi.fbank with the AST settings."""
    return kaldi.fbank(
        (wave - wave.mean())[None], htk_compat=True, use_energy=False, window_type=window,
        num_mel_bins=bins, dither=0.0, frame_shift=10,
    )


def frontend_for(cfg: FrontendConfig, use_fft: bool) -> LogMelFrontend:
    """The front end computing its spectrum by torch.fft (training) or by the exported matmul DFT."""
    frontend = LogMelFrontend(cfg)
    frontend.use_fft = use_fft
    return frontend


@pytest.mark.parametrize("use_fft", [True, False], ids=["fft", "matmul"])
@pytest.mark.parametrize("bins", [40, 64, 128])
def test_matches_kaldi_fbank_loud_and_quiet_any_length(bins, use_fft):
    frontend = frontend_for(FrontendConfig(num_mel_bins=bins, num_frames=None), use_fft)
    worst = 0.0
    for samples in (16000, 12345, 561, 400):
        for peak in (0.99, 1e-3, 3e-5):
            wave = speech_like(samples, peak=peak, seed=samples)
            ours = frontend.fbank(wave[None])[0]
            reference = kaldi_reference(wave, bins)
            assert ours.shape == reference.shape == (1 + (samples - 400) // 160, bins)
            worst = max(worst, (ours - reference).abs().max().item())
    assert worst <= 1e-3


@pytest.mark.parametrize("use_fft", [True, False], ids=["fft", "matmul"])
def test_dc_offset_and_loud_clipped_input_match_kaldi(use_fft):
    frontend = frontend_for(FrontendConfig(num_frames=None), use_fft)
    clipped = (speech_like(8000, peak=4.0, seed=3)).clamp(-1, 1)
    offset = speech_like(8000, peak=0.5, seed=4) + 0.3
    for wave in (clipped, offset):
        assert (frontend.fbank(wave[None])[0] - kaldi_reference(wave, 128)).abs().max() <= 1e-3


@pytest.mark.parametrize("use_fft", [True, False], ids=["fft", "matmul"])
@pytest.mark.parametrize("window", ["povey", "hamming"])
def test_other_windows_match_kaldi(window, use_fft):
    frontend = frontend_for(FrontendConfig(num_mel_bins=64, window=window, num_frames=None), use_fft)
    wave = speech_like(4000, seed=7)
    assert (frontend.fbank(wave[None])[0] - kaldi_reference(wave, 64, window)).abs().max() <= 1e-3


@pytest.mark.parametrize("settings", [
    dict(sample_rate=8000, num_mel_bins=40),  # 200-sample frames, 256-point DFT of 16 x 16
    dict(frame_shift_ms=20.0),  # frame = one hop row + half a row
    dict(frame_length_ms=32.0, frame_shift_ms=8.0),  # 512 samples fill the DFT; frame = 4 hop rows
    dict(frame_length_ms=30.0, frame_shift_ms=12.5, window="hamming"),  # zero-padded stage-1 rows
    dict(remove_dc_offset=False, preemphasis=0.0, num_mel_bins=64),  # the waveform mean is subtracted
    dict(sample_rate=22050, num_mel_bins=64, low_freq=0.0),  # 1024-point DFT of 32 x 32
])
@pytest.mark.parametrize("use_fft", [True, False], ids=["fft", "matmul"])
def test_other_frame_and_dft_sizes_match_kaldi(settings, use_fft):
    cfg = FrontendConfig(num_frames=None, **settings)
    wave = speech_like(5000, seed=13)
    reference = kaldi.fbank(
        (wave - wave.mean())[None], htk_compat=True, use_energy=False, window_type=cfg.window, dither=0.0,
        num_mel_bins=cfg.num_mel_bins, sample_frequency=cfg.sample_rate, frame_length=cfg.frame_length_ms,
        frame_shift=cfg.frame_shift_ms, preemphasis_coefficient=cfg.preemphasis,
        remove_dc_offset=cfg.remove_dc_offset, low_freq=cfg.low_freq,
    )
    ours = frontend_for(cfg, use_fft).fbank(wave[None])[0]
    # rtol: the float32 rounding of the DFT constants is ~1e-7 of the frame's norm, so the quietest
    # bins (log-energy near the -15.9 floor, ~110 dB below the frame) move by up to ~2e-3
    torch.testing.assert_close(ours, reference, atol=1e-3, rtol=1e-4)


def test_fft_and_matmul_spectra_agree():
    """Training (torch.fft) and the exported files (matmul DFT) compute the same log-mel."""
    cfg = FrontendConfig()
    wave = torch.stack([speech_like(SR, peak=0.99, seed=51), speech_like(SR, peak=1e-3, seed=52)])
    fft, matmul = frontend_for(cfg, True), frontend_for(cfg, False)
    signal = fft._windowed(fft._frames(wave))
    power_fft, power_matmul = fft._fft_power(signal), fft._power_spectrum(signal)
    scale = power_matmul.amax(dim=-1, keepdim=True)  # each frame's loudest bin
    assert ((power_fft - power_matmul).abs() / scale).max() <= 1e-5
    assert (fft(wave) - matmul(wave)).abs().max() <= 1e-3


def test_mel_blocks_hold_every_kaldi_mel_weight():
    frontend = LogMelFrontend()
    dense = torch.zeros(128, 256)
    row = 0
    for i, (first, end) in enumerate(frontend.mel_spans):
        block = getattr(frontend, f"mel_block{i}")
        dense[row : row + len(block), first:end] = block
        row += len(block)
    banks, _ = get_mel_banks(128, 512, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
    assert row == 128 and torch.equal(dense, banks.float())
    assert sum(getattr(frontend, f"mel_block{i}").numel() for i in range(len(frontend.mel_spans))) < 0.15 * dense.numel()


def test_forward_pads_raw_fbank_with_zeros_then_normalizes():
    cfg = FrontendConfig()  # num_frames=100, Speech Commands statistics
    frontend = LogMelFrontend(cfg)
    wave = torch.stack([speech_like(SR, seed=1), speech_like(SR, seed=2)])
    raw = frontend.fbank(wave)
    out = frontend(wave)
    assert raw.shape == (2, 98, 128) and out.shape == (2, 100, 128)
    torch.testing.assert_close(out[:, :98], (raw - cfg.mean) / (2 * cfg.std))
    padded_value = (0.0 - cfg.mean) / (2 * cfg.std)
    torch.testing.assert_close(out[:, 98:], torch.full((2, 2, 128), padded_value))


def test_forward_crops_or_keeps_natural_length():
    wave = speech_like(SR, seed=5)[None]
    natural = LogMelFrontend(FrontendConfig(num_frames=None))(wave)
    cropped = LogMelFrontend(FrontendConfig(num_frames=50))(wave)
    assert natural.shape == (1, 98, 128) and cropped.shape == (1, 50, 128)
    torch.testing.assert_close(cropped, natural[:, :50])


def test_num_frames_for():
    assert LogMelFrontend().num_frames_for(16000) == 100
    natural = LogMelFrontend(FrontendConfig(num_frames=None))
    assert [natural.num_frames_for(n) for n in (16000, 400, 559, 560, 32000)] == [98, 1, 1, 2, 198]
    with pytest.raises(ValueError, match="399 samples"):
        natural.num_frames_for(399)


def test_batch_rows_equal_single_clips():
    frontend = LogMelFrontend()
    batch = torch.stack([speech_like(12000, peak=p, seed=i) for i, p in enumerate((0.9, 0.05, 1e-3))])
    together = frontend(batch)
    for i in range(3):
        torch.testing.assert_close(together[i], frontend(batch[i : i + 1])[0], atol=1e-5, rtol=0)


def test_bad_input_and_config_are_rejected():
    frontend = LogMelFrontend()
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        frontend(torch.zeros(16000))
    with pytest.raises(ValueError, match="shorter than one 400-sample frame"):
        frontend(torch.zeros(1, 300))
    with pytest.raises(ValueError, match="window='blackman'"):
        FrontendConfig(window="blackman")
    with pytest.raises(ValueError, match="std"):
        FrontendConfig(std=0.0)
    with pytest.raises(ValueError, match="high_freq"):
        FrontendConfig(low_freq=9000)


def test_constant_buffers_stay_out_of_the_state_dict():
    # They are rebuilt from the config, so a checkpoint only needs FrontendConfig.
    assert LogMelFrontend().state_dict() == {}


def test_autocast_does_not_lower_precision():
    frontend = LogMelFrontend()
    wave = speech_like(SR, seed=9)[None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = frontend(wave)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, frontend(wave), atol=1e-6, rtol=0)


# TF32 would move quiet spectral valleys by ~0.1 in raw log-mel. Measured on an H100 (torch 2.11):
# the matmul DFT 2.3e-4 from Kaldi; cuFFT 1.7e-3 (its own float32 rounding, TF32 or not; CPU FFT 6.6e-4).
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/cuda_check.sh)")
@pytest.mark.parametrize("use_fft, tolerance", [(False, 1e-3), (True, 2.5e-3)])
def test_cuda_matches_kaldi_even_with_tf32_allowed(use_fft, tolerance):
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 matmuls, as the training engine sets on CUDA
    try:
        frontend = LogMelFrontend(FrontendConfig(num_frames=None)).cuda()
        frontend.use_fft = use_fft
        wave = speech_like(SR, seed=11)
        ours = frontend.fbank(wave[None].cuda())[0].cpu()
        assert torch.get_float32_matmul_precision() == "high"  # restored after the front end
    finally:
        torch.set_float32_matmul_precision(previous)
    assert (ours - kaldi_reference(wave, 128)).abs().max() <= tolerance


def test_compute_stats_streams_to_the_pooled_mean_and_std():
    cfg = FrontendConfig(num_mel_bins=64)
    waves = [speech_like(n, peak=p, seed=n) for n, p in ((16000, 0.9), (5000, 0.01), (999, 0.3))]
    batch = torch.stack([speech_like(3000, seed=21), speech_like(3000, seed=22)])
    mean, std = compute_stats(iter([*waves, batch]), cfg)

    frontend = LogMelFrontend(cfg)
    values = torch.cat([frontend.fbank(w[None]).flatten() for w in waves] + [frontend.fbank(batch).flatten()])
    assert mean == pytest.approx(values.double().mean().item(), abs=1e-6)
    assert std == pytest.approx(values.double().std(unbiased=False).item(), rel=1e-6)
    with pytest.raises(ValueError, match="no audio"):
        compute_stats([], cfg)


def test_float16_mel_weights_stay_within_kaldi_tolerance():
    """The int8 ONNX file stores the mel weights as float16: the log-mel must not move by more than 5e-4."""
    exact = LogMelFrontend(FrontendConfig())
    rounded = LogMelFrontend(FrontendConfig())
    for weight in rounded.mel_weights():
        weight.copy_(weight.half().float())
    wave = torch.stack([speech_like(SR, peak=0.99, seed=41), speech_like(SR, peak=1e-3, seed=42)])
    assert (rounded.fbank(wave) - exact.fbank(wave)).abs().max() <= 5e-4


def _export_inputs() -> tuple[LogMelFrontend, torch.Tensor]:
    frontend = LogMelFrontend(FrontendConfig(num_mel_bins=128, num_frames=100)).eval()
    wave = torch.stack([speech_like(SR, peak=0.99, seed=31), speech_like(SR, peak=1e-3, seed=32)])
    return frontend, wave


def test_executorch_xnnpack_export_matches_eager():
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    frontend, wave = _export_inputs()
    exported = torch.export.export(frontend, (wave,))
    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    graph = str(program.exported_program().graph_module.code)
    assert "executorch_call_delegate" in graph and "aten" not in graph  # every op runs in XNNPACK
    method = Runtime.get().load_program(program.buffer).load_method("forward")
    out = method.execute([wave])[0]
    assert out.shape == (2, 100, 128)
    assert (out - frontend(wave)).abs().max() <= 1e-4


def test_onnx_export_runs_in_onnxruntime_and_matches_eager(tmp_path):
    import onnxruntime as ort  # `make test` installs the export extra: a missing one is a failure, not a skip
    frontend, wave = _export_inputs()
    path = tmp_path / "frontend.onnx"
    torch.onnx.export(frontend, (wave,), str(path), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: wave.numpy()})[0]
    assert out.shape == (2, 100, 128)
    assert np.abs(out - frontend(wave).numpy()).max() <= 1e-4
