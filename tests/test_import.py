"""Importing SSAST, MAE-AST and Hugging Face AST weights.

Each foreign layout is built here as a random state dict with the real names,
shapes and dtypes, and the imported model is compared with a direct
re-implementation of that reference model's forward pass.
"""

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F

from edgeast.models.checkpoint import CheckpointError, from_pretrained, load_extra, load_model
from edgeast.models.importers import import_checkpoint

torch.manual_seed(0)


def rand(*shape, scale=0.2):
    return torch.randn(*shape) * scale


def attention(q, k, v, heads):
    """Softmax attention on [B, N, D] inputs split into heads."""
    B, N, D = q.shape
    q, k, v = (t.reshape(B, N, heads, D // heads).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-2, -1) * (D // heads) ** -0.5, dim=-1)
    return (weights @ v).transpose(1, 2).reshape(B, N, D)


# ---------------------------------------------------------------- SSAST


def ssast_state(dim=32, depth=2, patch=(16, 16), input_fdim=128, input_tdim=64, num_classes=0):
    """A DataParallel SSAST state dict, shrunk in width and depth."""
    n = (input_fdim // patch[0]) * (input_tdim // patch[1])
    p = "module."
    sd = {
        f"{p}v.cls_token": rand(1, 1, dim),
        f"{p}v.dist_token": rand(1, 1, dim),
        f"{p}v.pos_embed": rand(1, 2 + n, dim),
        f"{p}v.patch_embed.proj.weight": rand(dim, 1, *patch, scale=0.05),
        f"{p}v.patch_embed.proj.bias": rand(dim),
        f"{p}v.norm.weight": 1 + rand(dim),
        f"{p}v.norm.bias": rand(dim),
        f"{p}v.head.weight": rand(1000, dim),
        f"{p}v.head.bias": rand(1000),
        f"{p}v.head_dist.weight": rand(1000, dim),
        f"{p}v.head_dist.bias": rand(1000),
        f"{p}mask_embed": rand(1, 1, dim),
        f"{p}p_input_fdim": torch.tensor(input_fdim),
        f"{p}p_input_tdim": torch.tensor(input_tdim),
    }
    for head in ("cpredlayer", "gpredlayer"):
        sd.update({f"{p}{head}.0.weight": rand(dim, dim), f"{p}{head}.0.bias": rand(dim),
                   f"{p}{head}.2.weight": rand(256, dim), f"{p}{head}.2.bias": rand(256)})
    for i in range(depth):
        b = f"{p}v.blocks.{i}."
        sd.update({
            b + "norm1.weight": 1 + rand(dim), b + "norm1.bias": rand(dim),
            b + "attn.qkv.weight": rand(3 * dim, dim), b + "attn.qkv.bias": rand(3 * dim),
            b + "attn.proj.weight": rand(dim, dim), b + "attn.proj.bias": rand(dim),
            b + "norm2.weight": 1 + rand(dim), b + "norm2.bias": rand(dim),
            b + "mlp.fc1.weight": rand(4 * dim, dim), b + "mlp.fc1.bias": rand(4 * dim),
            b + "mlp.fc2.weight": rand(dim, 4 * dim), b + "mlp.fc2.bias": rand(dim),
        })
    if num_classes:
        sd.update({f"{p}mlp_head.0.weight": 1 + rand(dim), f"{p}mlp_head.0.bias": rand(dim),
                   f"{p}mlp_head.1.weight": rand(num_classes, dim), f"{p}mlp_head.1.bias": rand(num_classes)})
    return sd


def ssast_reference(sd, x, heads, depth):
    """SSAST's forward (timm 0.4.5 DeiT blocks) -> final-normed tokens, and avg-token logits if fine-tuned."""
    v = "module.v."
    dim = sd[v + "cls_token"].shape[-1]
    proj = sd[v + "patch_embed.proj.weight"]
    x = x.unsqueeze(1).transpose(2, 3)  # [B, 1, F, T]
    x = F.conv2d(x, proj, sd[v + "patch_embed.proj.bias"], stride=proj.shape[2:]).flatten(2).transpose(1, 2)
    B = x.shape[0]
    x = torch.cat([sd[v + "cls_token"].expand(B, -1, -1), sd[v + "dist_token"].expand(B, -1, -1), x], 1)
    x = x + sd[v + "pos_embed"]
    for i in range(depth):
        b = f"{v}blocks.{i}."
        h = F.layer_norm(x, (dim,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], 1e-6)
        q, k, val = F.linear(h, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).chunk(3, dim=-1)
        x = x + F.linear(attention(q, k, val, heads), sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        h = F.layer_norm(x, (dim,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], 1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
                     sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        x = x + h
    x = F.layer_norm(x, (dim,), sd[v + "norm.weight"], sd[v + "norm.bias"], 1e-6)
    if "module.mlp_head.1.weight" not in sd:
        return x, None
    pooled = F.layer_norm(x[:, 2:].mean(1), (dim,), sd["module.mlp_head.0.weight"], sd["module.mlp_head.0.bias"])
    return x, F.linear(pooled, sd["module.mlp_head.1.weight"], sd["module.mlp_head.1.bias"])


@pytest.mark.parametrize("patch", [(16, 16), (128, 2)], ids=["patch", "frame"])
def test_ssast_pretrained_matches_reference(tmp_path, patch):
    sd = ssast_state(patch=patch)
    torch.save(sd, tmp_path / "ssast.pth")
    out = import_checkpoint("ssast", tmp_path / "ssast.pth", tmp_path / "ckpt", num_heads=2)
    model = load_model(out)
    cfg = model.classifier.cfg
    assert (cfg.num_frames, cfg.num_mel_bins, cfg.prefix_tokens, cfg.patch_f, cfg.patch_t) == (64, 128, 2, *patch)
    x = torch.randn(2, 64, 128)
    expected, _ = ssast_reference(sd, x, heads=2, depth=2)
    with torch.no_grad():
        got = model.classifier.encoder(x)
    assert (got - expected).abs().max() <= 1e-4
    extra = load_extra(out)
    assert sorted(extra) == sorted(k.removeprefix("module.") for k in sd if "predlayer" in k or "mask_embed" in k)
    torch.testing.assert_close(extra["gpredlayer.2.weight"], sd["module.gpredlayer.2.weight"])


def test_ssast_finetuned_logits_match_reference(tmp_path):
    sd = ssast_state(num_classes=7)
    torch.save(sd, tmp_path / "ft.pth")
    model = load_model(import_checkpoint("ssast", tmp_path / "ft.pth", tmp_path / "ckpt", num_heads=2))
    x = torch.randn(3, 64, 128)
    _, expected = ssast_reference(sd, x, heads=2, depth=2)
    with torch.no_grad():
        assert (model.classifier(x) - expected).abs().max() <= 1e-4
    assert model.labels == [str(i) for i in range(7)]


def test_ssast_at_1024_frames_fine_tunes_at_100(tmp_path):
    sd = ssast_state(dim=16, depth=1, input_tdim=1024)
    torch.save(sd, tmp_path / "ssast.pth")
    out = import_checkpoint("ssast", tmp_path / "ssast.pth", tmp_path / "ckpt", num_heads=2)
    classifier = from_pretrained(out, num_classes=12, num_frames=100, stride=10)
    assert classifier.cfg.grid == (12, 9)
    assert classifier(torch.randn(2, 100, 128)).shape == (2, 12)

    crop = from_pretrained(out, num_classes=12, num_frames=100)  # stride 16: grid (8, 6), center crop in time
    old = sd["module.v.pos_embed"][0, 2:].reshape(8, 64, 16)
    new = crop.encoder.pos_embed.detach()[0, 2:].reshape(8, 6, 16)
    torch.testing.assert_close(new, old[:, 29:35])


# ---------------------------------------------------------------- MAE-AST


def maeast_checkpoint(dim=32, depth=2, ffn=64, heads=2, max_len=400, kernel=(16, 16)):
    """A fairseq MAE-AST checkpoint; ``kernel`` is (time, freq): (16, 16) patches or (2, 128) frames."""
    model = {
        "post_extract_proj.weight": rand(dim, 256, scale=0.05),
        "post_extract_proj.bias": rand(dim),
        "layer_norm.weight": torch.ones(128),
        "layer_norm.bias": torch.zeros(128),
        "batch_norm.running_mean": torch.tensor([-3.0]),
        "batch_norm.running_var": torch.tensor([9.0]),
        "batch_norm.num_batches_tracked": torch.tensor(1000),
        "encoder_mask_emb": rand(dim),
        "decoder_mask_emb": rand(dim),
        "encoder.layer_norm.weight": 1 + rand(dim),
        "encoder.layer_norm.bias": rand(dim),
        "decoder.layers.0.fc1.weight": rand(ffn, dim),
        "decoder.layer_norm.weight": torch.ones(dim),
        "final_proj_reconstruction.weight": rand(256, dim),
        "final_proj_reconstruction.bias": rand(256),
        "final_proj_classification.weight": rand(256, dim),
        "final_proj_classification.bias": rand(256),
    }
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, max_len, dim)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    model["enc_sine_pos_embed.pe"] = pe
    model["dec_sine_pos_embed.pe"] = pe.clone()
    for i in range(depth):
        b = f"encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            model[f"{b}self_attn.{name}.weight"] = rand(dim, dim)
            model[f"{b}self_attn.{name}.bias"] = rand(dim)
        model.update({
            b + "self_attn_layer_norm.weight": 1 + rand(dim), b + "self_attn_layer_norm.bias": rand(dim),
            b + "fc1.weight": rand(ffn, dim), b + "fc1.bias": rand(ffn),
            b + "fc2.weight": rand(dim, ffn), b + "fc2.bias": rand(dim),
            b + "final_layer_norm.weight": 1 + rand(dim), b + "final_layer_norm.bias": rand(dim),
        })
    cfg = {
        "model": {"_name": "mae_ast", "encoder_layers": depth, "encoder_embed_dim": dim, "encoder_ffn_embed_dim": ffn,
                  "encoder_attention_heads": heads, "layer_norm_first": False, "enc_sine_pos": True,
                  "enc_conv_pos": False, "ast_kernel_size_time": kernel[0], "ast_kernel_size_chan": kernel[1],
                  "ast_kernel_stride_time": kernel[0], "ast_kernel_stride_chan": kernel[1]},
        "task": {"feature_dim": 128, "sample_rate": 16000},
    }
    return {"model": model, "cfg": cfg}


def maeast_reference(sd, source, heads, depth, kernel):
    """MAE-AST's encoder (mask=False): tokens [B, L, D] in its time-major order."""
    dim = sd["post_extract_proj.weight"].shape[0]
    x = source.unsqueeze(1)  # [B, 1, T, F]
    x = (x - sd["batch_norm.running_mean"]) / torch.sqrt(sd["batch_norm.running_var"] + 1e-5) * 0.5
    x = F.unfold(x, kernel_size=kernel, stride=kernel).transpose(-1, -2)
    x = F.linear(x, sd["post_extract_proj.weight"], sd["post_extract_proj.bias"])
    x = x + sd["enc_sine_pos_embed.pe"][:, : x.shape[1]]
    x = F.layer_norm(x, (dim,), sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"], 1e-5)
    for i in range(depth):
        b = f"encoder.layers.{i}.self_attn."
        q, k, v = (F.linear(x, sd[f"{b}{n}_proj.weight"], sd[f"{b}{n}_proj.bias"]) for n in "qkv")
        x = x + F.linear(attention(q, k, v, heads), sd[b + "out_proj.weight"], sd[b + "out_proj.bias"])
        b = f"encoder.layers.{i}."
        x = F.layer_norm(x, (dim,), sd[b + "self_attn_layer_norm.weight"], sd[b + "self_attn_layer_norm.bias"], 1e-5)
        h = F.linear(F.gelu(F.linear(x, sd[b + "fc1.weight"], sd[b + "fc1.bias"])), sd[b + "fc2.weight"], sd[b + "fc2.bias"])
        x = F.layer_norm(x + h, (dim,), sd[b + "final_layer_norm.weight"], sd[b + "final_layer_norm.bias"], 1e-5)
    return x


@pytest.mark.parametrize("kernel", [(16, 16), (2, 128)], ids=["patch", "frame"])
def test_maeast_matches_reference(tmp_path, kernel):
    ckpt = maeast_checkpoint(kernel=kernel)
    torch.save(ckpt, tmp_path / "mae_ast.pt")
    out = import_checkpoint("maeast", tmp_path / "mae_ast.pt", tmp_path / "ckpt", num_frames=96)
    model = load_model(out)
    cfg = model.classifier.cfg
    assert (cfg.block, cfg.norm_position, cfg.pos_embed, cfg.input_norm, cfg.prefix_tokens) == (
        "post", "pre_blocks", "sincos", "batchnorm", 0
    )
    assert (model.frontend.cfg.window, model.frontend.cfg.subtract_wave_mean) == ("povey", False)

    source = torch.randn(2, 96, 128) * 3 - 3  # fbank-like values
    expected = maeast_reference(ckpt["model"], source, heads=2, depth=2, kernel=kernel)  # time-major tokens
    with torch.no_grad():
        got = model.classifier.encoder(source)  # frequency-major tokens
    n_f, n_t = 128 // kernel[1], 96 // kernel[0]
    assert model.classifier.encoder.grid == (n_f, n_t)
    ours_of_time_major = torch.arange(n_f * n_t).reshape(n_f, n_t).T.reshape(-1)
    assert (got[:, ours_of_time_major] - expected).abs().max() <= 1e-4
    extra = load_extra(out)
    assert {"encoder_mask_emb", "decoder_mask_emb", "final_proj_reconstruction.weight"} <= set(extra)
    assert not any(k.startswith(("enc_sine_pos_embed", "layer_norm")) for k in extra)


def test_maeast_wrong_sine_table_is_refused(tmp_path):
    ckpt = maeast_checkpoint()
    ckpt["model"]["enc_sine_pos_embed.pe"] = ckpt["model"]["enc_sine_pos_embed.pe"].flip(-1)
    torch.save(ckpt, tmp_path / "mae_ast.pt")
    with pytest.raises(CheckpointError, match="not the MAE-AST sinusoidal table"):
        import_checkpoint("maeast", tmp_path / "mae_ast.pt", tmp_path / "ckpt")


# ---------------------------------------------------------------- Hugging Face

def hf_model():
    import transformers  # the test extra's reference for HF import: missing is a failure, not a skip
    cfg = transformers.ASTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                 max_length=100, num_mel_bins=128, num_labels=3,
                                 id2label={0: "yes", 1: "no", 2: "up"}, label2id={"yes": 0, "no": 1, "up": 2})
    model = transformers.ASTForAudioClassification(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # zero-initialized tokens and positions would hide mistakes
    return model


def test_hf_import_matches_transformers_in_both_layouts(tmp_path):
    model = hf_model()
    model.save_pretrained(tmp_path / "hf")  # writes the 4.x names
    current = tmp_path / "hf5"
    current.mkdir()
    (current / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    torch.save(model.state_dict(), current / "pytorch_model.bin")  # 5.x module names
    assert any(".layers.0.attention.q_proj." in k for k in model.state_dict())

    x = torch.randn(2, 100, 128)
    with torch.no_grad():
        reference = model(x).logits
    for src in (tmp_path / "hf", current):
        ours = load_model(import_checkpoint("hf", src, tmp_path / f"ckpt-{src.name}"))
        assert ours.labels == ["yes", "no", "up"]
        assert ours.classifier.cfg.norm_eps == 1e-12 and ours.classifier.cfg.pool == "prefix"
        with torch.no_grad():
            assert (ours.classifier(x) - reference).abs().max() <= 1e-4


# ---------------------------------------------------------------- bad input


def test_unknown_layout_names_keys_and_formats(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2), "decoder.bias": torch.zeros(2)}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError) as err:
        import_checkpoint("ssast", tmp_path / "odd.pth", tmp_path / "ckpt")
    assert "['decoder.bias', 'encoder.weight']" in str(err.value)
    assert "known formats: ssast" in str(err.value) and "maeast" in str(err.value) and "hf" in str(err.value)

    sd = ssast_state()
    sd["module.v.rotary.freqs"] = torch.zeros(4)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys for a ssast checkpoint: \['module.v.rotary.freqs'\]"):
        import_checkpoint("ssast", tmp_path / "extra.pth", tmp_path / "ckpt", num_heads=2)
    with pytest.raises(CheckpointError, match="unknown import kind 'onnx'"):
        import_checkpoint("onnx", tmp_path / "extra.pth", tmp_path / "ckpt")


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    sd = ssast_state()
    sd["module.v.blocks.1.mlp.fc2.weight"] = torch.zeros(32, 100)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"module.v.blocks.1.mlp.fc2.weight has shape \(32, 100\), expected \(32, 128\)"):
        import_checkpoint("ssast", tmp_path / "bad.pth", tmp_path / "ckpt", num_heads=2)
    assert not (tmp_path / "ckpt").exists()

    ckpt = maeast_checkpoint()
    ckpt["model"]["encoder.layers.0.self_attn.k_proj.weight"] = torch.zeros(32, 16)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"k_proj.weight has shape \(32, 16\), expected \(32, 32\)"):
        import_checkpoint("maeast", tmp_path / "bad.pt", tmp_path / "ckpt")


def test_files_needing_arbitrary_unpickling_are_refused(tmp_path):
    torch.save({"model": {}, "args": argparse.Namespace(lr=1.0)}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match=r"arbitrary Python objects \(argparse.Namespace\)"):
        import_checkpoint("maeast", tmp_path / "pickled.pt", tmp_path / "ckpt")
    (tmp_path / "notes.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
        import_checkpoint("ssast", tmp_path / "notes.json", tmp_path / "ckpt")
