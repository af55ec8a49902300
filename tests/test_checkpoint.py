"""Checkpoint directories: round trip, atomic writes, encoder-only states, fine-tuning start."""

import json

import pytest
import torch

import edgeast.models.checkpoint as checkpoint
from edgeast.audio.frontend import FrontendConfig, LogMelFrontend
from edgeast.models.ast import ASTClassifier, ASTConfig, ASTEncoder, resize_pos_embed
from edgeast.models.checkpoint import (
    CheckpointError,
    from_pretrained,
    load_encoder_state,
    load_extra,
    load_model,
    save_model,
)
from edgeast.models.keyword import KeywordModel

LABELS = ["yes", "no", "_unknown_"]


def keyword_model() -> KeywordModel:
    cfg = ASTConfig(embed_dim=32, depth=2, num_heads=2, num_frames=100, prefix_tokens=2, num_classes=3,
                    stride_f=10, stride_t=10)
    frontend = LogMelFrontend(FrontendConfig(mean=-5.0, std=4.0))
    return KeywordModel(frontend, ASTClassifier(cfg), labels=LABELS).eval()


def test_round_trip_keeps_logits_labels_and_configs(tmp_path):
    model = keyword_model()
    out = save_model(model, tmp_path / "ckpt", provenance={"stage": "finetune"})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging leftovers
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "edgeast-checkpoint" and config["version"] == 1
    assert config["provenance"] == {"stage": "finetune"} and config["frontend"]["mean"] == -5.0

    loaded = load_model(out)
    assert loaded.labels == LABELS
    assert loaded.frontend.cfg == model.frontend.cfg and loaded.classifier.cfg == model.classifier.cfg
    wave = torch.randn(2, 16000) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(loaded(wave), model(wave))


def test_overwrite_is_atomic(tmp_path, monkeypatch):
    first, second = keyword_model(), keyword_model()
    path = save_model(first, tmp_path / "ckpt")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(second, path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    wave = torch.randn(1, 16000) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(load_model(path)(wave), first(wave))  # the old checkpoint survived

    monkeypatch.undo()
    save_model(second, path)
    with torch.no_grad():
        torch.testing.assert_close(load_model(path)(wave), second(wave))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "clip.wav").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is not an edgeast checkpoint"):
        save_model(keyword_model(), tmp_path / "data")
    assert (tmp_path / "data" / "clip.wav").exists()


def test_bad_checkpoints_have_clear_messages(tmp_path):
    with pytest.raises(CheckpointError, match="is not an edgeast checkpoint"):
        load_model(tmp_path / "missing")
    path = save_model(keyword_model(), tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    config["model"]["rotary"] = True
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"unknown keys \['rotary'\]"):
        load_model(path)
    config["format"] = "something-else"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="format is 'something-else'"):
        load_model(path)
    with pytest.raises(ValueError, match="2 labels given for a model with 3 classes"):
        save_model(keyword_model().classifier, tmp_path / "other", labels=["a", "b"])


def test_encoder_only_checkpoint_and_extras(tmp_path):
    cfg = ASTConfig(embed_dim=32, depth=2, num_heads=2, num_frames=96, prefix_tokens=2)
    encoder = ASTEncoder(cfg)
    extra = {"pretrain.cpredlayer.0.weight": torch.randn(32, 32)}
    path = save_model(encoder, tmp_path / "pre", extra=extra)
    loaded_cfg, state = load_encoder_state(path)
    assert loaded_cfg == cfg
    assert state.keys() == encoder.state_dict().keys()
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(state[key], value)
    torch.testing.assert_close(load_extra(path)["cpredlayer.0.weight"], extra["pretrain.cpredlayer.0.weight"])
    assert load_model(path).classifier.cfg.num_classes == 0
    with pytest.raises(ValueError, match="pretrain."):
        save_model(encoder, tmp_path / "bad", extra={"cpredlayer.0.weight": torch.zeros(1)})


def test_from_pretrained_adapts_positions_to_new_length_and_stride(tmp_path):
    cfg = ASTConfig(embed_dim=32, depth=2, num_heads=2, num_frames=256, prefix_tokens=2)  # grid (8, 16)
    encoder = ASTEncoder(cfg)
    path = save_model(encoder, tmp_path / "pre")

    classifier = from_pretrained(path, num_classes=4, num_frames=100, stride=(16, 12), drop_path=0.1)
    assert classifier.cfg.grid == (8, 8) and classifier.cfg.drop_path == 0.1
    pos = classifier.encoder.pos_embed.detach()
    old = encoder.pos_embed.detach()
    torch.testing.assert_close(pos[:, :2], old[:, :2])  # prefix positions kept
    torch.testing.assert_close(pos[:, 2:], resize_pos_embed(old[:, 2:], (8, 16), (8, 8)))
    torch.testing.assert_close(classifier.encoder.blocks[1].mlp.fc2.weight, encoder.blocks[1].mlp.fc2.weight)
    assert classifier(torch.randn(2, 100, 128)).shape == (2, 4)
