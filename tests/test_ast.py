"""ASTEncoder / ASTClassifier: token order, patch targets, positions, export, sizes."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from edgeast.models.ast import (
    ASTClassifier,
    ASTConfig,
    ASTEncoder,
    ast_config,
    resize_pos_embed,
    sincos_pos_embed,
)
from edgeast.models.profile import count_macs, count_params, count_step_flops, model_table


def small_config(**overrides) -> ASTConfig:
    base = dict(embed_dim=32, depth=2, num_heads=2, num_mel_bins=64, num_frames=48, patch_f=16, patch_t=16,
                stride_f=16, stride_t=16, num_classes=5)
    return ASTConfig(**{**base, **overrides})


def test_tokens_are_frequency_major_and_patchify_matches_conv():
    cfg = small_config(stride_f=12, stride_t=10)  # overlapping patches
    encoder = ASTEncoder(cfg).eval()
    n_f, n_t = encoder.grid
    assert (n_f, n_t) == ((64 - 16) // 12 + 1, (48 - 16) // 10 + 1)
    t_idx = torch.arange(48.0)[:, None]
    f_idx = torch.arange(64.0)[None, :]
    x = (1000 * f_idx + t_idx).expand(1, 48, 64)  # value encodes (frequency, time)

    patches = encoder.patchify(x)  # [1, N, 256]
    assert patches.shape == (1, n_f * n_t, 256)
    for token in (0, 1, n_t, n_f * n_t - 1):
        f0, t0 = (token // n_t) * 12, (token % n_t) * 10
        # first value of the patch is its top-left corner; values are frequency-major inside
        assert patches[0, token, 0] == 1000 * f0 + t0
        assert patches[0, token, 1] == 1000 * f0 + t0 + 1  # next time step
        assert patches[0, token, 16] == 1000 * (f0 + 1) + t0  # next frequency bin

    x = torch.randn(2, 48, 64)
    weight = encoder.patch_embed.weight.reshape(cfg.embed_dim, -1)
    expected = encoder.patchify(x) @ weight.T + encoder.patch_embed.bias
    torch.testing.assert_close(encoder.embed_patches(x), expected, atol=1e-5, rtol=1e-5)


def test_add_pos_subset_and_run_blocks_hidden():
    cfg = small_config(prefix_tokens=2)
    encoder = ASTEncoder(cfg).eval()
    x = torch.randn(2, 48, 64)
    tokens = encoder.embed_patches(x)
    full = encoder.add_pos(tokens)
    ids = torch.tensor([[0, 3, 5], [7, 1, 2]])
    kept = torch.gather(tokens, 1, ids[..., None].expand(-1, -1, cfg.embed_dim))
    torch.testing.assert_close(encoder.add_pos(kept, ids), torch.gather(full, 1, ids[..., None].expand(-1, -1, 32)))

    out, hidden = encoder.run_blocks(encoder.add_pos(kept, ids), return_hidden=True)
    assert out.shape == (2, 2 + 3, 32) and len(hidden) == cfg.depth
    torch.testing.assert_close(out, encoder.norm(hidden[-1]))
    torch.testing.assert_close(encoder(x), encoder.run_blocks(full))


def test_classifier_pooling():
    for pool in ("mean", "prefix"):
        model = ASTClassifier(small_config(prefix_tokens=2, pool=pool)).eval()
        x = torch.randn(3, 48, 64)
        tokens = model.encoder(x)
        pooled = tokens[:, 2:].mean(1) if pool == "mean" else (tokens[:, 0] + tokens[:, 1]) / 2
        torch.testing.assert_close(model(x), model.head(pooled))
        assert model(x).shape == (3, 5)
    encoder_only = ASTClassifier(small_config(num_classes=0)).eval()
    assert encoder_only(torch.randn(1, 48, 64)).shape == (1, 32)


def test_drop_path_is_training_only():
    model = ASTClassifier(small_config(drop_path=0.5, dropout=0.1))
    x = torch.randn(4, 48, 64)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(prefix_tokens=0, pos_embed="sincos", block="post", norm_position="pre_blocks", input_norm="batchnorm"),
    ],
)
def test_torch_export_static_shapes(overrides):
    model = ASTClassifier(small_config(**overrides)).eval()
    x = torch.randn(1, 48, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


def test_resize_pos_embed_crop_and_interpolate():
    # grid values encode (frequency, time) in two channels
    old_f, old_t = 8, 64
    f, t = torch.meshgrid(torch.arange(old_f), torch.arange(old_t), indexing="ij")
    pos = torch.stack([f, t], -1).float().reshape(1, old_f * old_t, 2)
    cropped = resize_pos_embed(pos, (old_f, old_t), (6, 9)).reshape(6, 9, 2)
    assert cropped[0, 0].tolist() == [1.0, 28.0]  # SSAST center: old // 2 - new // 2
    assert cropped[-1, -1].tolist() == [6.0, 36.0]

    pos = torch.tensor([[0.0], [1.0], [10.0], [11.0]]).reshape(1, 4, 1)  # grid (2, 2): value = 10 f + t
    grown = resize_pos_embed(pos, (2, 2), (2, 4)).reshape(2, 4)
    # bilinear, align_corners=False: source positions -0.25, 0.25, 0.75, 1.25 clamp to 0, 0.25, 0.75, 1
    torch.testing.assert_close(grown, torch.tensor([[0.0, 0.25, 0.75, 1.0], [10.0, 10.25, 10.75, 11.0]]))
    assert resize_pos_embed(pos, (2, 2), (2, 2)) is pos


def test_sincos_table_is_time_major_fairseq_sinusoid():
    grid, dim = (3, 5), 8
    table = sincos_pos_embed(grid, dim)
    token = 1 * 5 + 2  # f=1, t=2 -> time-major position 2 * 3 + 1 = 7
    w = 10000.0 ** (-torch.arange(0, dim, 2) / dim)
    torch.testing.assert_close(table[token, 0::2], torch.sin(7 * w))
    torch.testing.assert_close(table[token, 1::2], torch.cos(7 * w))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="pool"):
        ASTConfig(pool="max")
    with pytest.raises(ValueError, match="prefix_tokens"):
        ASTConfig(prefix_tokens=3)
    with pytest.raises(ValueError, match="unknown AST size"):
        ast_config("huge")
    assert ast_config("student-64x4", num_classes=3).embed_dim == 64


def test_ssast_parameter_counts():
    """Encoder at 128 x 1024, 16x16 patches, cls + dist, plus SSAST's heads, gives the published sizes."""
    published = {"tiny": 5.96e6, "small": 22.7e6, "base": 88.4e6}
    for size, target in published.items():
        cfg = ast_config(size, num_frames=1024, prefix_tokens=2, num_classes=0)
        dim = cfg.embed_dim
        pretrain_heads = 2 * (dim * dim + dim + dim * 256 + 256) + dim  # cpredlayer, gpredlayer, mask_embed
        timm_head = dim * 1000 + 1000  # timm's unused ImageNet head
        audioset_head = 2 * dim + dim * 527 + 527  # mlp_head for AudioSet's 527 classes
        total = count_params(cfg) + pretrain_heads + timm_head + audioset_head
        assert total == pytest.approx(target, rel=2e-3)  # the published figures have 3 significant digits
    assert count_params(ast_config("tiny", num_frames=1024, prefix_tokens=2)) == 5_487_168


def test_analytic_macs_match_counted(monkeypatch):
    def math_attention(q, k, v, dropout_p=0.0):
        return torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1) @ v

    for overrides in (dict(stride_f=10, stride_t=10), dict(patch_f=64, patch_t=2, stride_f=64, stride_t=2)):
        cfg = small_config(prefix_tokens=2, **overrides)
        model = ASTClassifier(cfg).eval()
        x = torch.randn(1, 48, 64)
        with torch.no_grad():
            fused = model(x)
            monkeypatch.setattr(F, "scaled_dot_product_attention", math_attention)
            with FlopCounterMode(display=False) as counter:
                torch.testing.assert_close(model(x), fused, atol=1e-5, rtol=1e-5)
            monkeypatch.undo()
        assert counter.get_total_flops() == 2 * count_macs(cfg)


def test_step_flops_are_three_forwards_less_the_input_gradient():
    """A backward costs two forwards' products, except the input's gradient, which nothing asks for."""
    for overrides in (dict(stride_f=10, stride_t=10), dict(patch_f=64, patch_t=2, stride_f=64, stride_t=2)):
        cfg = small_config(prefix_tokens=2, **overrides)
        model = ASTClassifier(cfg)
        x = torch.randn(1, 48, 64)
        flops = count_step_flops(lambda: model(x).sum())  # noqa: B023 (called at once)
        n_f, n_t = cfg.grid
        embed_macs = n_f * n_t * cfg.embed_dim * cfg.patch_f * cfg.patch_t
        assert flops == 3 * 2 * count_macs(cfg) - 2 * embed_macs
        assert all(p.grad is not None for p in model.parameters())


def test_model_table_rows():
    rows = model_table(sizes=("tiny", "student-64x4"))
    assert [(r["size"], r["tokenizer"]) for r in rows] == [
        ("tiny", "patch"), ("tiny", "frame"), ("student-64x4", "patch"), ("student-64x4", "frame")
    ]
    tiny_patch = rows[0]
    assert tiny_patch["tokens"] == 8 * 6 + 1  # 128 mel x 100 frames, 16x16 patches, cls
    assert tiny_patch["params"] == count_params(ast_config("tiny", num_classes=12))
    assert rows[1]["tokens"] == 50 + 1  # frame tokenizer: 128x2
    assert rows[2]["macs"] < tiny_patch["macs"] / 10
