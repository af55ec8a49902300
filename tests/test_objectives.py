"""Masking functions and the three pretraining objectives (SSAST, MAE-AST, ASiT) on a tiny encoder."""

from __future__ import annotations

import math

import pytest
import torch

from edgeast.config import ConfigError
from edgeast.models.asit import ASiTObjective
from edgeast.models.ast import ASTConfig, ASTEncoder, sincos_pos_embed
from edgeast.models.masking import block_mask, cluster_mask, gather_tokens, mask_count, random_mask
from edgeast.models.objectives import build_objective

# 32 mel x 64 frames in 8x8 patches: a 4 x 8 grid of 32 tokens.
TINY = ASTConfig(
    embed_dim=64, depth=2, num_heads=4, num_mel_bins=32, num_frames=64, patch_f=8, patch_t=8, stride_f=8, stride_t=8
)
# the same input as 32x2 frame tokens: a 1 x 32 grid.
TINY_FRAMES = ASTConfig(
    embed_dim=64, depth=2, num_heads=4, num_mel_bins=32, num_frames=64, patch_f=32, patch_t=2, stride_f=32, stride_t=2
)
SMALL_HEADS = {"asit": dict(out_dim=64, head_hidden_dim=64, head_bottleneck_dim=32)}


def synthetic_features(batch: int, generator: torch.Generator, frames: int = 64, mels: int = 32) -> torch.Tensor:
    """Spectrogram-like [B, T, F]: a fixed position-dependent texture plus three
    Gaussian frequency bands per clip, each with its own centre and slow time modulation."""
    t = torch.arange(frames).float()[None, :, None]
    f = torch.arange(mels).float()[None, None, :]
    centre = torch.rand(batch, 3, 1, 1, generator=generator) * mels
    rate = 0.05 + 0.15 * torch.rand(batch, 3, 1, 1, generator=generator)
    phase = torch.rand(batch, 3, 1, 1, generator=generator) * 2 * math.pi
    bands = torch.exp(-((f[:, None] - centre) ** 2) / 8.0) * torch.sin(rate * t[:, None] + phase)  # [B, 3, T, F]
    texture = torch.sin(0.3 * t + 0.05 * f * f) * torch.cos(0.2 * f)
    return bands.sum(dim=1) + texture


def train(name: str, steps: int = 60, lr: float = 2e-3) -> tuple[torch.nn.Module, list[float], list[dict]]:
    torch.manual_seed(0)
    model = build_objective(name, TINY, SMALL_HEADS.get(name))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(1)
    losses, metrics = [], []
    for step in range(steps):
        loss, step_metrics = model(synthetic_features(16, generator), generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if hasattr(model, "after_optimizer_step"):
            model.after_optimizer_step(step, steps)
        losses.append(loss.item())
        metrics.append({k: v.item() for k, v in step_metrics.items()})
    return model, losses, metrics


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


# ---------------------------------------------------------------- masking


@pytest.mark.parametrize("kind", ["random", "cluster", "block"])
@pytest.mark.parametrize("grid", [(8, 64), (1, 512)])
def test_masks_partition_the_tokens(kind, grid):
    batch, num_patches, num_masked = 24, grid[0] * grid[1], 400
    g = torch.Generator().manual_seed(0)
    if kind == "random":
        ids_masked, ids_keep = random_mask(batch, num_patches, num_masked, generator=g)
    elif kind == "cluster":
        ids_masked, ids_keep = cluster_mask(batch, grid, num_masked, generator=g)
    else:
        ids_masked, ids_keep, alien = block_mask(batch, grid, num_masked, alien_prob=0.5, generator=g)
        assert alien.shape == (batch, num_masked) and alien.dtype == torch.bool
    assert ids_masked.shape == (batch, num_masked) and ids_keep.shape == (batch, num_patches - num_masked)
    everything = torch.cat([ids_masked, ids_keep], dim=1).sort(dim=1).values
    assert torch.equal(everything, torch.arange(num_patches).expand(batch, -1))  # unique, complete, disjoint
    assert torch.equal(ids_masked, ids_masked.sort(dim=1).values)


def test_masks_are_reproducible_with_a_generator():
    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return cluster_mask(4, (8, 64), 400, generator=g)[0], block_mask(4, (8, 64), 358, alien_prob=0.5, generator=g)

    first, second, other = draw(7), draw(7), draw(8)
    assert torch.equal(first[0], second[0]) and all(torch.equal(a, b) for a, b in zip(first[1], second[1]))
    assert not torch.equal(first[0], other[0])


def _is_solid_rectangle(ids: torch.Tensor, n_t: int, height: int, width: int) -> bool:
    f, t = ids // n_t, ids % n_t
    return (f.max() - f.min() + 1, t.max() - t.min() + 1) == (height, width) and ids.numel() == height * width


def test_cluster_mask_draws_squares_and_frame_runs():
    g = torch.Generator().manual_seed(0)
    # 9 masked tokens with side-3 clusters: one whole 3x3 square unless the seed sits at an edge.
    ids, _ = cluster_mask(200, (16, 16), 9, sizes=(3, 3), generator=g)
    squares = sum(_is_solid_rectangle(row, 16, 3, 3) for row in ids)
    assert squares / 200 > 0.6  # interior seeds: (14/16)^2 = 77%
    ids, _ = random_mask(200, 256, 9, generator=g)
    assert sum(_is_solid_rectangle(row, 16, 3, 3) for row in ids) == 0
    # frame tokens (n_f = 1): a cluster of side 4 is a run of 4 consecutive frames.
    ids, _ = cluster_mask(200, (1, 64), 4, sizes=(4, 4), generator=g)
    runs = sum(_is_solid_rectangle(row, 64, 1, 4) for row in ids)
    assert runs / 200 > 0.85  # seeds within 2 of either end are clipped: 4/64


def test_cluster_masked_tokens_have_masked_neighbours():
    g = torch.Generator().manual_seed(0)

    def neighbour_share(ids: torch.Tensor) -> float:
        grid = torch.zeros(ids.shape[0], 8 * 64, dtype=torch.bool).scatter_(1, ids, True).view(-1, 8, 64)
        padded = torch.nn.functional.pad(grid, (1, 1, 1, 1))
        neighbours = padded[:, :-2, 1:-1] | padded[:, 2:, 1:-1] | padded[:, 1:-1, :-2] | padded[:, 1:-1, 2:]
        return (neighbours & grid).sum().item() / grid.sum().item()

    clustered = neighbour_share(cluster_mask(24, (8, 64), 100, generator=g)[0])
    scattered = neighbour_share(random_mask(24, 512, 100, generator=g)[0])
    assert clustered > 0.95 and scattered < 0.65


def test_block_mask_alien_share_follows_the_probability():
    g = torch.Generator().manual_seed(0)
    for prob, low, high in [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.5, 0.3, 0.7)]:
        _, _, alien = block_mask(64, (8, 64), 358, alien_prob=prob, generator=g)
        assert low <= alien.float().mean().item() <= high


def test_mask_count_validates():
    assert mask_count(512, 400 / 512) == 400
    assert mask_count(512, 0.75, count=300) == 300
    with pytest.raises(ConfigError, match="mask count"):
        mask_count(32, 1.0)


# ---------------------------------------------------------------- objectives


def test_ssast_learns_masked_patch_prediction():
    model, losses, metrics = train("ssast")
    chance = 1 / model.num_masked
    assert model.num_masked == 25  # round(400/512 * 32)
    assert mean(losses[-5:]) < 0.6 * mean(losses[:5])
    assert mean([m["acc"] for m in metrics[:5]]) < 3 * chance
    assert mean([m["acc"] for m in metrics[-5:]]) > 10 * chance


def test_maeast_learns_masked_patch_prediction():
    model, losses, metrics = train("maeast")
    chance = 1 / model.num_masked
    assert model.num_masked == 24  # 75% of 32
    assert mean(losses[-5:]) < 0.7 * mean(losses[:5])
    assert mean([m["acc"] for m in metrics[-5:]]) > 10 * chance


def test_asit_learns_without_collapse():
    model, losses, metrics = train("asit")
    first, last = metrics[:5], metrics[-5:]
    assert mean(losses[-5:]) < mean(losses[:5])
    assert mean([m["loss_local"] for m in last]) < 0.7 * mean([m["loss_local"] for m in first])
    assert mean([m["recon_l1"] for m in last]) < 0.8 * mean([m["recon_l1"] for m in first])
    assert mean([m["acc"] for m in last]) > mean([m["acc"] for m in first]) + 0.15
    assert mean([m["acc"] for m in last]) > 10 / 64  # 64 prototypes
    assert min(m["teacher_entropy"] for m in metrics) > 0.6 * math.log(64)  # many prototypes stay in use


def test_ssast_replaces_masked_embeddings_before_positions():
    model = build_objective("ssast", TINY)
    enc = model.encoder
    seen = {}
    enc.blocks[0].register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
    features = synthetic_features(2, torch.Generator().manual_seed(0))
    model(features, generator=torch.Generator().manual_seed(3))
    ids_masked, ids_keep = model.mask(2, features.device, torch.Generator().manual_seed(3))
    patches = seen["x"][:, enc.num_prefix :]  # [B, N, D]
    positions = enc.pos_embed[:, enc.num_prefix :].expand(2, -1, -1)
    expected_masked = model.mask_embed + gather_tokens(positions, ids_masked)
    expected_kept = gather_tokens(enc.add_pos(enc.embed_patches(features)), ids_keep)
    torch.testing.assert_close(gather_tokens(patches, ids_masked), expected_masked.expand(2, -1, -1))
    torch.testing.assert_close(gather_tokens(patches, ids_keep), expected_kept)


@pytest.mark.parametrize("name", ["ssast", "asit"])
def test_sincos_positions_start_learnable_from_the_table(name: str):
    model = build_objective(name, TINY, {**SMALL_HEADS.get(name, {}), "pos_init": "sincos"})
    enc = model.encoder
    torch.testing.assert_close(enc.pos_embed[0, enc.num_prefix :], sincos_pos_embed(enc.grid, 64))
    assert enc.pos_embed.requires_grad
    assert build_objective(name, TINY, SMALL_HEADS.get(name)).encoder.pos_embed.std() < 0.05  # default: random
    with pytest.raises(ConfigError, match=f"{name}.pos_init='sine'"):
        build_objective(name, TINY, {"pos_init": "sine"})


def test_maeast_encoder_sees_only_kept_tokens():
    model = build_objective("maeast", TINY)
    enc = model.encoder
    counts = {}
    enc.blocks[0].register_forward_hook(lambda module, args, out: counts.update(encoder=out.shape[1]))
    model.decoder_blocks[0].register_forward_hook(lambda module, args, out: counts.update(decoder=out.shape[1]))
    model(synthetic_features(2, torch.Generator().manual_seed(0)))
    assert counts == {"encoder": enc.num_prefix + 32 - 24, "decoder": enc.num_prefix + 32}


@pytest.mark.parametrize("name", ["ssast", "maeast", "asit"])
def test_objectives_run_on_frame_tokens_and_under_bf16(name):
    model = build_objective(name, TINY_FRAMES, SMALL_HEADS.get(name))
    assert model.encoder.grid == (1, 32)
    features = synthetic_features(3, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, metrics = model(features)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert "acc" in metrics and all(not v.requires_grad for v in metrics.values())
    assert model.encoder.patch_embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["ssast", "maeast", "asit"])
def test_encoder_state_dict_loads_into_a_plain_encoder(name):
    model = build_objective(name, TINY, SMALL_HEADS.get(name))
    encoder = ASTEncoder(TINY)
    encoder.load_state_dict(model.encoder_state_dict())  # strict: same keys, encoder only
    torch.testing.assert_close(encoder.pos_embed, model.encoder.pos_embed)


def test_ssast_head_names_match_published_checkpoints():
    keys = build_objective("ssast", TINY).state_dict().keys()
    for key in ("mask_embed", "cpredlayer.0.weight", "cpredlayer.2.bias", "gpredlayer.0.bias", "gpredlayer.2.weight"):
        assert key in keys


def test_build_objective_rejects_bad_names_and_keys():
    with pytest.raises(ConfigError, match="unknown pretraining objective 'byol'"):
        build_objective("byol", TINY)
    with pytest.raises(ConfigError, match="maeast: unknown key 'mask_ration'"):
        build_objective("maeast", TINY, {"mask_ration": 0.5})


# ---------------------------------------------------------------- ASiT teacher


def test_asit_corruption_touches_only_masked_patches():
    model = build_objective("asit", TINY, SMALL_HEADS["asit"])
    features = synthetic_features(4, torch.Generator().manual_seed(0))
    ids_masked, ids_keep, alien = block_mask(4, (4, 8), 22, alien_prob=0.5, generator=torch.Generator().manual_seed(1))
    corrupted = model.encoder.patchify(model.corrupt(features, ids_masked, alien, None))
    clean = model.encoder.patchify(features)
    torch.testing.assert_close(gather_tokens(corrupted, ids_keep), gather_tokens(clean, ids_keep))
    masked_now, masked_before = gather_tokens(corrupted, ids_masked), gather_tokens(clean, ids_masked)
    from_other_clip = gather_tokens(clean.roll(1, dims=0), ids_masked)
    assert torch.equal(masked_now[alien], from_other_clip[alien])
    assert (masked_now[~alien] - masked_before[~alien]).abs().mean() > 0.1  # noise


def test_asit_teacher_follows_the_student_by_ema():
    model: ASiTObjective = build_objective("asit", TINY, SMALL_HEADS["asit"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert all(not p.requires_grad and id(p) not in trainable for p in model.teacher.parameters())
    model.train()
    assert model.training and not model.teacher.training

    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    teacher_before = model.teacher["encoder"].patch_embed.weight.clone()
    student = model.encoder.patch_embed.weight.clone()
    model.after_optimizer_step(0, 100)
    momentum = model.teacher_momentum(0, 100)
    assert momentum == pytest.approx(0.996)
    expected = momentum * teacher_before + (1 - momentum) * student
    torch.testing.assert_close(model.teacher["encoder"].patch_embed.weight, expected)
    assert model.teacher_momentum(50, 100) == pytest.approx(1 - 0.004 / 2)
    assert model.teacher_momentum(100, 100) == pytest.approx(1.0)
    frozen = model.teacher["encoder"].patch_embed.weight.clone()
    model.after_optimizer_step(100, 100)
    torch.testing.assert_close(model.teacher["encoder"].patch_embed.weight, frozen)


def test_asit_state_dict_round_trip_keeps_teacher_and_centers():
    model, _, _ = train("asit", steps=3)
    state = model.state_dict()
    assert any(k.startswith("teacher.encoder.") for k in state) and "center_local" in state
    assert state["center_local"].abs().sum() > 0
    torch.manual_seed(123)
    restored = build_objective("asit", TINY, SMALL_HEADS["asit"])
    restored.load_state_dict(state)
    for key, value in restored.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not torch.equal(state["teacher.encoder.patch_embed.weight"], state["encoder.patch_embed.weight"])


def test_asit_position_center_keeps_one_center_per_token():
    model = build_objective("asit", TINY, {**SMALL_HEADS["asit"], "position_center": True})
    assert model.center_local.shape == (32, 64) and model.center_global.shape == (1, 64)
    model.train()
    model(synthetic_features(4, torch.Generator().manual_seed(0)), generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(model.center_local[0], model.center_local[1])
    centers = model.local_center(torch.tensor([[0, 5], [3, 7]]))
    assert centers.shape == (2, 2, 64) and torch.equal(centers[1, 0], model.center_local[3])


def test_asit_term_weights_scale_the_loss_and_zero_removes_a_term():
    features = synthetic_features(4, torch.Generator().manual_seed(0))

    def loss_and_grads(**weights: float) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        torch.manual_seed(0)
        model = build_objective("asit", TINY, {**SMALL_HEADS["asit"], **weights}).eval()  # eval: centers stay put
        loss, metrics = model(features, generator=torch.Generator().manual_seed(1))
        loss.backward()
        return loss, metrics, {name: p.grad for name, p in model.named_parameters() if p.requires_grad}

    loss, metrics, _ = loss_and_grads(global_weight=0.1, local_weight=0.5)
    expected = 0.1 * metrics["loss_global"] + 0.5 * metrics["loss_local"] + 2.0 * metrics["recon_l1"]
    torch.testing.assert_close(loss.detach(), expected)

    loss, metrics, grads = loss_and_grads(global_weight=0.0, local_weight=0.0)  # GMML alone
    torch.testing.assert_close(loss.detach(), 2.0 * metrics["recon_l1"])
    assert all(grads[k] is None or not grads[k].any() for k in grads if k.startswith(("global_head", "local_head")))
    assert grads["encoder.patch_embed.weight"].abs().sum() > 0
    _, _, grads = loss_and_grads(global_weight=1.0, local_weight=0.0)
    assert grads["global_head.prototypes"].abs().sum() > 0 and not grads["local_head.prototypes"].any()


def test_asit_rejects_negative_term_weights():
    with pytest.raises(ConfigError, match="asit.local_weight=-0.1: expected >= 0"):
        build_objective("asit", TINY, {**SMALL_HEADS["asit"], "local_weight": -0.1})


def test_asit_reconstruction_blocks_learn_and_stay_out_of_the_encoder_checkpoint():
    cfg = {**SMALL_HEADS["asit"], "global_weight": 0.0, "local_weight": 0.0, "reconstruction_depth": 1}
    torch.manual_seed(0)
    model = build_objective("asit", TINY, cfg)
    assert len(model.reconstruction_blocks) == 1
    assert set(model.encoder_state_dict()) == set(build_objective("asit", TINY, SMALL_HEADS["asit"]).encoder_state_dict())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    generator = torch.Generator().manual_seed(1)
    l1 = []
    for _ in range(60):
        loss, metrics = model(synthetic_features(16, generator), generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        l1.append(metrics["recon_l1"].item())
    assert model.reconstruction_blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert mean(l1[-5:]) < 0.8 * mean(l1[:5])
    with pytest.raises(ConfigError, match="asit.reconstruction_depth=-1: expected >= 0"):
        build_objective("asit", TINY, {**SMALL_HEADS["asit"], "reconstruction_depth": -1})
