"""Recipes: YAML + dotted overrides -> validated dataclasses, with one clear error per mistake."""
from __future__ import annotations

import pytest

from edgeast.config import ConfigError, load_config
from edgeast.stages.pipeline import validate_sections
from edgeast.stages.recipe import Recipe


def write(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_nested_recipe_and_overrides(tmp_path):
    path = write(tmp_path, "name: x\nfinetune:\n  engine: {lr: 1e-3, betas: [0.9, 0.98]}\n")
    r = load_config(Recipe, path, ["finetune.engine.epochs=7", "distill.student.size=student-96x6",
                                   "teacher.overrides.depth=3", "stages=finetune,distill"])
    assert r.name == "x"
    assert r.finetune.engine.lr == pytest.approx(1e-3)      # "1e-3" is a string in YAML; numbers still parse
    assert r.finetune.engine.betas == (0.9, 0.98)
    assert r.finetune.engine.epochs == 7
    assert r.distill.student.size == "student-96x6"
    assert r.teacher.overrides == {"depth": 3}
    assert r.stages == ["finetune", "distill"]


def test_override_of_an_aliased_section_changes_only_that_section(tmp_path):
    path = write(tmp_path, "finetune:\n  augment: &aug {gain_db: 3.0}\ndistill:\n  augment: *aug\n")
    r = load_config(Recipe, path, ["finetune.augment.gain_db=9"])
    assert r.finetune.augment.gain_db == 9.0 and r.distill.augment.gain_db == 3.0


def test_keyword_words_are_not_booleans(tmp_path):
    r = load_config(Recipe, write(tmp_path, "data:\n  synth: {keywords: [yes, no, on, off]}\n"))
    assert r.data.synth["keywords"] == ["yes", "no", "on", "off"]


@pytest.mark.parametrize("text, override, message", [
    ("finetune:\n  engin: {}\n", [], "unknown key 'finetune.engin'"),
    ("finetune:\n  engine: {epochs: many}\n", [], "finetune.engine.epochs: expected an integer"),
    ("", ["data.in_memory=maybe"], "data.in_memory: expected true/false"),
    ("", ["finetune.engine.optimizer=sgd"], "engine.optimizer='sgd'"),
    ("", ["stages=pretrain,deploy"], "unknown stage 'deploy'"),
    ("", ["finetune.engine"], "not of the form key=value"),
    ("- a list\n", [], "must be a YAML mapping"),
])
def test_errors_name_the_key(tmp_path, text, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(Recipe, write(tmp_path, text), override)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        load_config(Recipe, tmp_path / "nope.yaml")


def test_shipped_recipes_load():
    from pathlib import Path

    recipes = sorted(Path(__file__).parent.parent.glob("train/recipes/*.yaml"))
    assert recipes, "no recipes shipped"
    for path in recipes:
        r = load_config(Recipe, path)
        validate_sections(r)  # model sizes/overrides, objective and synth settings
        assert r.name, path


@pytest.mark.parametrize("override, message", [
    ("teacher.size=huge", "teacher: unknown AST size 'huge'"),
    ("distill.student.overrides.depthh=3", "distill.student: .*depthh"),
    ("pretrain.objective=byol", "pretrain.objective='byol'"),
    ("pretrain.objective_cfg.mask_ration=0.5", r"pretrain.objective_cfg: .*mask_ration.*\(settings for objective \w+"),
    ("data.synth.speakers=many", "data.synth: .*speakers"),
])
def test_free_form_sections_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        validate_sections(load_config(Recipe, None, [override]))


def test_another_objective_can_drop_the_recipes_objective_settings():
    """The low-label recipe's settings are SSAST's; naming MAE-AST says how to drop them."""
    from pathlib import Path

    recipe = Path(__file__).parent.parent / "train/recipes/lowlabel_pretrain.yaml"
    with pytest.raises(ConfigError, match=r"unknown key 'pos_init'.*pretrain\.objective_cfg=\{\}"):
        validate_sections(load_config(Recipe, recipe, ["pretrain.objective=maeast"]))
    dropped = load_config(Recipe, recipe, ["pretrain.objective=maeast", "pretrain.objective_cfg={}",
                                           "pretrain.objective_cfg.mask_ratio=0.5"])
    validate_sections(dropped)
    assert dropped.pretrain.objective_cfg == {"mask_ratio": 0.5}
