"""`edgeast train` end to end on a tiny synthetic set: stages, outputs, skipping, clear errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeast.config import ConfigError, load_config
from edgeast.models.checkpoint import load_model
from edgeast.stages.pipeline import run_pipeline
from edgeast.stages.recipe import Recipe

TINY = [
    "teacher.size=student-64x4", "teacher.overrides.depth=2",
    "distill.student.size=student-64x4", "distill.student.overrides.depth=1",
    "pretrain.engine.epochs=1", "pretrain.engine.batch_size=8",
    "finetune.engine.epochs=2", "finetune.engine.batch_size=8",
    "distill.engine.epochs=1", "distill.engine.batch_size=8",
]


@pytest.fixture(scope="module")
def tiny_run(synth_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    recipe = load_config(Recipe, None, [f"data.root={synth_dataset}", f"run_dir={out}", *TINY])
    return recipe, run_pipeline(recipe)


def test_pipeline_writes_every_stage(tiny_run):
    recipe, result = tiny_run
    out = recipe.out
    assert set(result.stages) == {"teacher", "student", "student_baseline"}
    assert (out / "pretrain" / "model" / "model.safetensors").is_file()
    for stage in ("teacher", "student", "student_baseline"):
        model = load_model(out / stage / "model")
        assert model.labels == ["yes", "no", "_unknown_", "_silence_"]
        ev = json.loads((out / stage / "eval.json").read_text())
        assert ev["test"]["accuracy"] == pytest.approx(result.stages[stage].test_acc)
        assert (out / stage / "confusion_test.png").stat().st_size > 1000
        assert (out / stage / "curves.png").is_file()
        assert (out / stage / "metrics.csv").read_text().startswith("step")
    # the teacher started from the pretraining checkpoint
    provenance = json.loads((out / "teacher" / "model" / "config.json").read_text())["provenance"]
    assert provenance["stage"] == "finetune"
    s, t = result.stages["student"], result.stages["teacher"]
    assert s.params < t.params and s.macs < t.macs
    report = (out / "report.md").read_text()
    assert "| teacher |" in report and "Distillation gain" in report


def test_finished_stages_are_skipped(tiny_run):
    recipe, _ = tiny_run
    before = {s: (recipe.out / s / "model" / "model.safetensors").stat().st_mtime_ns
              for s in ("pretrain", "teacher", "student", "student_baseline")}
    run_pipeline(recipe)
    after = {s: (recipe.out / s / "model" / "model.safetensors").stat().st_mtime_ns for s in before}
    assert before == after


def test_distill_without_teacher_fails_before_work(tmp_path, synth_dataset):
    recipe = load_config(Recipe, None, [f"data.root={synth_dataset}", f"run_dir={tmp_path / 'r'}"])
    with pytest.raises(ConfigError, match="distill needs a teacher"):
        run_pipeline(recipe, ["distill"])
    assert not (tmp_path / "r").exists()


def test_missing_data_fails_before_work(tmp_path):
    recipe = load_config(Recipe, None, [f"data.root={tmp_path / 'nothing'}", f"run_dir={tmp_path / 'r'}"])
    with pytest.raises(ConfigError, match="data.root=.*nothing: no such folder"):
        run_pipeline(recipe)


def test_cli_reports_recipe_errors_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune:\n  engine: {lr: fast}\n")
    proc = subprocess.run([sys.executable, "-m", "edgeast.cli", "train", "--recipe", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "finetune.engine.lr: expected a number" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_distill_with_cached_teacher_logits(tiny_run, tmp_path):
    """Teacher logits computed once on clean clips drive the same distillation loss."""
    from dataclasses import replace

    import torch

    from edgeast.stages.data import labelled_split
    from edgeast.stages.distill import run_distill, teacher_logits

    recipe, _ = tiny_run
    teacher = load_model(recipe.out / "teacher" / "model")
    train = labelled_split(recipe.data, "train")
    cached = teacher_logits(teacher, train)
    with torch.no_grad():
        assert torch.allclose(cached[:4], teacher(train.waves[:4]), atol=1e-5)
    cfg = replace(recipe.distill, cache_teacher=True)
    student, result = run_distill(cfg, teacher, train, tmp_path / "cached")
    assert result.steps > 0 and (tmp_path / "cached" / "model" / "model.safetensors").is_file()
    assert student.labels == teacher.labels


def test_students_side_by_side_match_one_after_the_other(tiny_run, tmp_path):
    """The baseline student trained in a second process is the one a sequential run trains."""
    import os
    import shutil

    import torch

    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip(f"side-by-side training needs 2 CPU cores; this process may run on {cores}")
    recipe, _ = tiny_run
    threads = torch.get_num_threads()
    weights = {}
    try:
        for mode, n_threads in (("sequential", 1), ("side_by_side", 2)):
            out = tmp_path / mode
            out.mkdir()
            shutil.copytree(recipe.out / "teacher", out / "teacher")
            shutil.copy(recipe.out / "frontend.json", out)
            torch.set_num_threads(n_threads)  # 2 threads: one per student, so both train at 1 thread
            run = load_config(Recipe, None, [f"data.root={recipe.data.root}", f"run_dir={out}", *TINY])
            result = run_pipeline(run, stages=["distill"])
            assert set(result.stages) == {"student", "student_baseline"}
            assert (out / "student_baseline" / "train.log").is_file() == (mode == "side_by_side")
            weights[mode] = {name: load_model(out / name / "model").state_dict() for name in result.stages}
    finally:
        torch.set_num_threads(threads)
    for name, state in weights["sequential"].items():
        other = weights["side_by_side"][name]
        assert all(torch.equal(state[k], other[k]) for k in state), name


def test_distilled_student_takes_back_the_threads_once_the_baseline_process_ends():
    import multiprocessing
    import time

    import torch

    from edgeast.stages.pipeline import taking_back_threads

    threads = torch.get_num_threads()
    spawn = multiprocessing.get_context("spawn")
    running, finished = spawn.Process(target=time.sleep, args=(30,)), spawn.Process(target=time.sleep, args=(0,))
    running.start()
    finished.start()
    finished.join()
    try:
        torch.set_num_threads(1)
        calls = []
        assert taking_back_threads(lambda t: calls.append(t) or {"val_acc": 1.0}, running, 2)("x") == {"val_acc": 1.0}
        assert torch.get_num_threads() == 1  # the baseline still trains on the other core
        assert taking_back_threads(lambda t: calls.append(t) or {}, finished, 2)("y") == {}
        assert torch.get_num_threads() == 2 and calls == ["x", "y"]
    finally:
        running.terminate()
        running.join()
        torch.set_num_threads(threads)


def test_train_fine_tunes_an_imported_ssast_checkpoint(synth_dataset, tmp_path):
    """`edgeast import ssast` then `edgeast train` with finetune.init=<imported>: positions adapted, encoder reused."""
    import torch

    from edgeast.models.importers import import_checkpoint
    from test_import import ssast_state

    sd = ssast_state(dim=16, depth=1, input_tdim=1024)  # pretrained on 1024 frames, fine-tuned on 100
    torch.save(sd, tmp_path / "ssast.pth")
    imported = import_checkpoint("ssast", tmp_path / "ssast.pth", tmp_path / "imported", num_heads=2)
    recipe = load_config(Recipe, None, [f"data.root={synth_dataset}", f"run_dir={tmp_path / 'run'}",
                                        f"finetune.init={imported}", "finetune.engine.max_steps=2",
                                        "finetune.engine.batch_size=8", "finetune.engine.lr=0"])
    result = run_pipeline(recipe, ["finetune"])
    teacher = load_model(tmp_path / "run" / "teacher" / "model")
    assert teacher.labels == ["yes", "no", "_unknown_", "_silence_"]
    assert teacher.classifier.cfg.num_frames == 100 and "teacher" in result.stages
    # lr 0: the block weights are exactly the imported ones
    torch.testing.assert_close(teacher.classifier.encoder.blocks[0].attn.qkv.weight,
                               sd["module.v.blocks.0.attn.qkv.weight"])


def test_eval_cli_on_checkpoint_and_onnx_agree(tiny_run, tmp_path):
    """`edgeast eval` gives the pipeline's test accuracy for the checkpoint and for its fp32 ONNX export."""
    from edgeast.export.exporter import export_checkpoint

    recipe, result = tiny_run
    ckpt = recipe.out / "student" / "model"
    export_checkpoint(ckpt, tmp_path / "exp", formats=["onnx"])
    reports = {}
    for name, artifact in (("ckpt", ckpt), ("onnx", tmp_path / "exp" / "model.onnx")):
        proc = subprocess.run([sys.executable, "-m", "edgeast.cli", "eval", str(artifact), "--data",
                               str(recipe.data.root), "--split", "test", "--json",
                               "--confusion", str(tmp_path / f"{name}.png")], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        reports[name] = json.loads(proc.stdout)
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert reports["ckpt"]["accuracy"] == pytest.approx(result.stages["student"].test_acc)
    assert reports["onnx"]["accuracy"] == pytest.approx(reports["ckpt"]["accuracy"], abs=1 / reports["ckpt"]["total"])
    assert set(reports["onnx"]["per_class"]) == {"yes", "no", "_unknown_", "_silence_"}


def test_synthesized_data_made_with_other_settings_is_refused(synth_dataset):
    from dataclasses import asdict

    from edgeast.data.common import DatasetError
    from edgeast.stages.data import ensure_data
    from edgeast.stages.recipe import DataConfig
    from conftest import TINY_SYNTH

    made = {k: v for k, v in asdict(TINY_SYNTH).items() if k != "workers"}
    same = DataConfig(root=str(synth_dataset), synthesize=True, synth=made)
    assert ensure_data(same, seed=TINY_SYNTH.seed) == synth_dataset
    other = DataConfig(root=str(synth_dataset), synthesize=True, synth={**made, "keyword_clips": [300, 40, 40]})
    with pytest.raises(DatasetError, match=r"synthesized with other settings \(keyword_clips\); delete the folder"):
        ensure_data(other, seed=TINY_SYNTH.seed)
    # without synthesize the folder is the user's dataset, used as it is
    assert ensure_data(DataConfig(root=str(synth_dataset)), seed=0) == synth_dataset


def test_late_end_of_the_infonce_plateau_is_warned(tmp_path):
    from edgeast.stages.pretrain import infonce_onset, late_onset_warning

    history = tmp_path / "metrics.csv"
    chance = 1 / 38  # MAE-AST masks 38 of the low-label recipe's 50 frame tokens
    accs = [0.045, 0.05, 0.05, 0.049, 0.051, 0.063, 0.09, 0.12, 0.13, 0.13]  # a session-7 run, every 200 steps
    rows = [f"{200 * (i + 1)},{acc}" for i, acc in enumerate(accs)]
    history.write_text("step,acc\n" + "\n".join(rows) + "\n")
    assert infonce_onset(history, chance) == 1400  # first over 3 x chance (0.079)
    warning = late_onset_warning("maeast", 1400, 2000)
    assert "left chance only at step 1400 of 2000" in warning and "pos_init" not in warning
    assert late_onset_warning("maeast", 480, 4000) is None  # left early: no warning
    warning = late_onset_warning("ssast", None, 800)
    assert "never left chance" in warning and "pos_init=sincos" in warning
