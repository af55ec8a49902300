import math

import pytest
import torch

from edgeast.audio.augment import (
    AugmentConfig,
    SpecAugment,
    WaveAugment,
    add_noise,
    change_speed,
    mask_band,
    mixup,
    random_gain,
    speed_perturb,
    time_shift,
)

SR = 16000


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tones(batch: int, samples: int = SR, freq: float = 1000.0) -> torch.Tensor:
    t = torch.arange(samples) / SR
    return torch.stack([0.3 * torch.sin(2 * math.pi * freq * t + i) for i in range(batch)])


def dominant_hz(wave: torch.Tensor) -> float:
    return torch.fft.rfft(wave).abs().argmax().item() * SR / wave.shape[-1]


def snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(clean.double().square().sum(-1) / (noisy - clean).double().square().sum(-1))


def test_time_shift_moves_content_and_fills_zeros():
    wave = torch.zeros(64, 4000)
    wave[:, 2000] = 1.0
    shifted = time_shift(wave, max_shift=800, generator=seeded())
    moved_to = shifted.argmax(dim=1) - 2000
    assert (shifted.sum(dim=1) == 1).all() and moved_to.abs().max() <= 800
    assert len(moved_to.unique()) > 20  # per-example shifts

    ones = time_shift(torch.ones(64, 4000), max_shift=800, generator=seeded())
    zeros_per_row = (ones == 0).sum(dim=1)
    assert torch.equal(zeros_per_row, moved_to.abs())  # same draws: the gap is exactly the shift
    delayed = moved_to > 0
    assert (ones[delayed, 0] == 0).all() and (ones[~delayed, -1] == 0).sum() == (moved_to < 0).sum()


def test_random_gain_is_a_per_example_scale_within_range():
    wave = tones(32)
    out = random_gain(wave, max_db=6.0, generator=seeded())
    ratio = out[:, 100] / wave[:, 100]
    torch.testing.assert_close(out, wave * ratio[:, None])
    gains_db = 20 * torch.log10(ratio)
    assert gains_db.abs().max() <= 6.0 + 1e-4 and gains_db.std() > 1.0


@pytest.mark.parametrize("target", [-5.0, 0.0, 7.5, 20.0])
def test_noise_is_mixed_at_the_requested_snr(target):
    wave = tones(8)
    noise_bank = torch.randn(3, 3 * SR, generator=seeded(1)) * torch.tensor([[0.01], [1.0], [5.0]])
    noisy = add_noise(wave, noise_bank, target, target, generator=seeded(2))
    assert (snr_db(wave, noisy) - target).abs().max() <= 0.5


def test_noise_snr_range_probability_short_bank_and_silence():
    wave = tones(200, samples=4000)
    short_bank = torch.randn(2, 1500, generator=seeded(3))  # shorter than the clips: looped
    noisy = add_noise(wave, short_bank, 5.0, 15.0, prob=0.5, generator=seeded(4))
    untouched = (noisy == wave).all(dim=1)
    assert 60 < untouched.sum() < 140
    achieved = snr_db(wave[~untouched], noisy[~untouched])
    assert achieved.min() >= 5.0 - 0.5 and achieved.max() <= 15.0 + 0.5 and achieved.std() > 1.0

    silent = add_noise(torch.zeros(2, 4000), short_bank, 0.0, 0.0, generator=seeded(5))
    assert torch.equal(silent, torch.zeros(2, 4000))


def test_change_speed_changes_duration_and_pitch():
    wave = tones(2)
    faster = change_speed(wave, 1.1, SR)
    slower = change_speed(wave, 0.9, SR)
    assert abs(faster.shape[1] - SR / 1.1) <= 1 and abs(slower.shape[1] - SR / 0.9) <= 1
    assert dominant_hz(faster[0]) == pytest.approx(1100, abs=2)
    assert dominant_hz(slower[0]) == pytest.approx(900, abs=2)


def test_speed_perturb_keeps_length_and_center():
    wave = tones(4)
    out = speed_perturb(wave, 1.1, 1.1, SR, generator=seeded())
    assert out.shape == wave.shape
    faster = change_speed(wave, 1.1, SR)
    pad = (SR - faster.shape[1]) // 2
    torch.testing.assert_close(out[:, pad : pad + faster.shape[1]], faster)
    assert (out[:, :pad] == 0).all() and (out[:, pad + faster.shape[1] :] == 0).all()

    slow = speed_perturb(wave, 0.9, 0.9, SR, generator=seeded())
    assert slow.shape == wave.shape and (slow != 0).all(dim=1).any()  # cropped, not padded
    assert torch.equal(speed_perturb(wave, 0.9, 1.1, SR, prob=0.0, generator=seeded()), wave)


def test_mask_band_widths_and_contiguity():
    features = torch.ones(512, 100, 128)
    masked = mask_band(features, max_width=20, dim=2, generator=seeded())
    zero_columns = (masked == 0).all(dim=1)  # [B, F]: a frequency band spans every frame
    assert torch.equal(zero_columns, (masked == 0).any(dim=1))
    widths = zero_columns.sum(dim=1)
    assert widths.min() == 0 and widths.max() == 20
    for row, width in zip(zero_columns, widths):
        if width:
            where = row.nonzero().squeeze(1)
            assert where[-1] - where[0] + 1 == width  # one contiguous band

    timed = mask_band(features, max_width=30, dim=1, mask_value=-1.0, generator=seeded())
    rows = (timed == -1.0).all(dim=2).sum(dim=1)
    assert rows.max() == 30 and ((timed == -1.0) | (timed == 1.0)).all()


def test_spec_augment_applies_one_mask_of_each_kind():
    features = torch.ones(256, 100, 128)
    out = SpecAugment(freqm=24, timem=40)(features, generator=seeded(7))
    freq_bands = (out == 0).all(dim=1).sum(dim=1)
    time_bands = (out == 0).all(dim=2).sum(dim=1)
    assert freq_bands.max() == 24 and time_bands.max() == 40
    expected_zeros = freq_bands * 100 + time_bands * 128 - freq_bands * time_bands
    assert torch.equal((out == 0).sum(dim=(1, 2)), expected_zeros)


def test_mixup_mixes_inputs_and_soft_targets_alike():
    batch = 256
    inputs = torch.eye(batch)  # input i is the one-hot of class i: mixed inputs must equal mixed targets
    mixed_inputs, mixed_targets = mixup(inputs, torch.arange(batch), alpha=10.0, num_classes=batch, generator=seeded())
    torch.testing.assert_close(mixed_inputs, mixed_targets)
    torch.testing.assert_close(mixed_targets.sum(dim=1), torch.ones(batch))
    lam = mixed_targets.diagonal()[(mixed_targets > 0).sum(dim=1) == 2]  # own share, partner != self
    assert len(lam) > batch - 10
    assert abs(lam.mean() - 0.5) < 0.03 and abs(lam.std() - math.sqrt(1 / 84)) < 0.03  # Beta(10, 10)

    untouched, targets = mixup(torch.randn(4, 3), torch.tensor([0, 1, 2, 1]), 1.0, prob=0.0, num_classes=3)
    torch.testing.assert_close(targets, torch.eye(3)[[0, 1, 2, 1]])
    with pytest.raises(ValueError, match="num_classes"):
        mixup(torch.randn(4, 3), torch.tensor([0, 1, 2, 1]), 1.0)


def test_wave_augment_is_deterministic_and_uses_every_step():
    cfg = AugmentConfig(noise_prob=1.0, speed_prob=1.0)
    augment = WaveAugment(cfg, noise_bank=torch.randn(4, 2 * SR, generator=seeded(9)))
    wave = tones(8)
    first = augment(wave, generator=seeded(1))
    assert torch.equal(first, augment(wave, generator=seeded(1)))
    assert not torch.equal(first, augment(wave, generator=seeded(2)))
    torch.manual_seed(3)
    from_global = augment(wave)
    torch.manual_seed(3)
    assert torch.equal(from_global, augment(wave))
    assert first.shape == wave.shape and torch.isfinite(first).all()
    # speed 0.9-1.1 moves the 1 kHz tone; noise at <= 20 dB SNR leaves a clear residual
    assert {round(dominant_hz(row) / 10) for row in first} - {100}
    assert (first - wave).abs().mean() > 0.01


def test_configs_and_inputs_are_validated():
    with pytest.raises(ValueError, match="noise_prob=1.5"):
        AugmentConfig(noise_prob=1.5)
    with pytest.raises(ValueError, match="speed_min"):
        AugmentConfig(speed_min=1.2, speed_max=1.1)
    with pytest.raises(ValueError, match="noise_bank"):
        WaveAugment(AugmentConfig(), noise_bank=torch.zeros(100))
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        WaveAugment(AugmentConfig())(torch.zeros(100))
