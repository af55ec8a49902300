"""`edgeast train`: pretrain -> teacher -> student in one run folder, then a summary and report.md.

    runs/<name>/pretrain/model    encoder-only checkpoint
    runs/<name>/teacher/model     fine-tuned keyword teacher
    runs/<name>/student/model     distilled student
    runs/<name>/student_baseline/model   the same student without the teacher
    runs/<name>/report.md         figures, tables and plots

A stage whose `model/` exists is skipped; `resume=True` continues an
interrupted stage from its last engine checkpoint.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from edgeast.audio.frontend import FrontendConfig, compute_stats
from edgeast.config import ConfigError
from edgeast.engine.distributed import barrier, resolve_device, setup_distributed
from edgeast.models.checkpoint import load_model
from edgeast.models.profile import count_macs
from edgeast.stages.data import ensure_data, labelled_split, unlabeled_set
from edgeast.stages.evaluate import evaluate_model
from edgeast.stages.recipe import Recipe

console = Console()
MAX_STATS_CLIPS = 5000  # normalization statistics settle long before this


@dataclass
class StageSummary:
    name: str
    params: int
    macs: int
    size_bytes: int
    val_acc: float
    test_acc: float
    seconds: float = 0.0

    def row(self) -> list[str]:
        return [self.name, f"{self.params / 1e6:.3f}M", f"{self.macs / 1e6:.1f}M", f"{self.size_bytes / 1e6:.2f} MB",
                f"{100 * self.val_acc:.2f}", f"{100 * self.test_acc:.2f}", f"{self.seconds:.0f}"]


@dataclass
class PipelineResult:
    run_dir: Path
    stages: dict[str, StageSummary] = field(default_factory=dict)


def validate_sections(recipe: Recipe) -> None:
    """The free-form parts of a recipe (model overrides, objective and synth settings) are valid."""
    from edgeast.config import from_dict
    from edgeast.data.synth import SynthConfig
    from edgeast.models.ast import ast_config
    from edgeast.models.objectives import OBJECTIVES

    configs = {}
    for key, model in (("teacher", recipe.teacher), ("distill.student", recipe.distill.student_model())):
        try:
            configs[key] = ast_config(model.size, **model.overrides)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}: {e}") from None
    if recipe.distill.attention_weight > 0 and recipe.finetune.init in ("pretrain", "scratch"):
        from edgeast.stages.distill import check_token_grids

        check_token_grids(configs["teacher"], configs["distill.student"])
    objective = recipe.pretrain.objective
    if objective not in OBJECTIVES:
        raise ConfigError(f"pretrain.objective={objective!r}: use one of {', '.join(OBJECTIVES)}")
    # A recipe's objective_cfg may be settings for another objective than the one named on the command line.
    drop_hint = f" (settings for objective {objective}; --set pretrain.objective_cfg={{}} drops the recipe's)"
    for key, cls, values, hint in (
        ("pretrain.objective_cfg", OBJECTIVES[objective][0], recipe.pretrain.objective_cfg, drop_hint),
        ("data.synth", SynthConfig, recipe.data.synth, ""),
    ):
        try:
            from_dict(cls, values)
        except (ConfigError, TypeError, ValueError) as e:
            raise ConfigError(f"{key}: {e}{hint}") from None


def check_recipe(recipe: Recipe, stages: list[str]) -> None:
    """Fail before any work on what can be known up front: settings, paths, stage order."""
    validate_sections(recipe)
    data = Path(recipe.data.root)
    needs_root = "finetune" in stages or "distill" in stages or not recipe.data.unlabeled
    if needs_root and not (data.is_dir() or recipe.data.synthesize):
        raise ConfigError(f"data.root={data}: no such folder (set data.synthesize=true for the synthetic set)")
    if recipe.data.unlabeled and not Path(recipe.data.unlabeled).is_dir():
        raise ConfigError(f"data.unlabeled={recipe.data.unlabeled}: no such folder")
    init = recipe.finetune.init
    if init not in ("pretrain", "scratch") and not Path(init).exists():
        raise ConfigError(f"finetune.init={init}: no such checkpoint (use 'pretrain', 'scratch' or a path)")
    teacher = recipe.out / "teacher" / "model"
    if "distill" in stages and "finetune" not in stages and not teacher.is_dir():
        raise ConfigError(f"distill needs a teacher: {teacher} does not exist; add 'finetune' to the stages")


def fit_frontend(recipe: Recipe, dataset) -> FrontendConfig:
    """The recipe's front end with mean/std measured on `dataset`'s clips (cached in the run folder)."""
    cache = recipe.out / "frontend.json"
    if cache.is_file():
        return FrontendConfig(**json.loads(cache.read_text()))
    cfg = recipe.frontend
    if recipe.fit_normalization and dataset is not None:
        items = (dataset[i] for i in range(min(len(dataset), MAX_STATS_CLIPS)))
        waves = (item[0] if isinstance(item, tuple) else item for item in items if item is not None)
        mean, std = compute_stats(waves, cfg)
        cfg = replace(cfg, mean=mean, std=std)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(cfg.__dict__, indent=2))
    return cfg


def noise_bank(root: Path, sample_rate: int) -> torch.Tensor | None:
    """1 s crops of the dataset's background-noise recordings, for noise augmentation."""
    from edgeast.audio.io import load_audio

    folder = root / "_background_noise_"
    crops = []
    for path in sorted(folder.glob("*.wav")) if folder.is_dir() else []:
        wave = load_audio(path, sample_rate)
        crops.extend(wave[i:i + sample_rate] for i in range(0, wave.numel() - sample_rate + 1, sample_rate))
    return torch.stack(crops) if crops else None


def val_accuracy(val_set):
    """The engine's end-of-epoch evaluation for a keyword stage: the trainee's model on `val_set`."""
    def evaluate(trainee) -> dict[str, float]:
        return {"val_acc": evaluate_model(trainee.model, val_set).accuracy}
    return evaluate


def summarize(name: str, model, val_set, test_set, seconds: float, out: Path) -> StageSummary:
    val = evaluate_model(model, val_set)
    test = evaluate_model(model, test_set)
    test.plot_confusion(out / "confusion_test.png")
    (out / "eval.json").write_text(json.dumps({"val": val.to_dict(), "test": test.to_dict()}, indent=2))
    params = sum(p.numel() for p in model.classifier.parameters())
    size = (out / "model" / "model.safetensors").stat().st_size
    return StageSummary(name, params, count_macs(model.classifier.cfg), size, val.accuracy, test.accuracy, seconds)


def run_pipeline(recipe: Recipe, stages: list[str] | None = None, resume: bool = False) -> PipelineResult:
    stages = list(stages or recipe.stages)
    check_recipe(recipe, stages)
    out = recipe.out
    # Under torchrun every rank runs this function; one-off work (synthesis, reports) is rank 0's.
    ctx = setup_distributed(recipe.finetune.engine.device)
    labelled = "finetune" in stages or "distill" in stages
    pretrain_dir = out / "pretrain" / "model"
    pretraining = "pretrain" in stages and recipe.pretrain.enabled and not pretrain_dir.is_dir()
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
        if labelled or not recipe.data.unlabeled:
            ensure_data(recipe.data, recipe.seed)
    barrier(ctx)
    torch.manual_seed(recipe.seed)
    root = Path(recipe.data.root)
    if labelled:
        train_set, val_set, test_set = (labelled_split(recipe.data, split) for split in ("train", "val", "test"))
        labels = list(train_set.labels)
        console.print(f"[bold]data[/] {root}: {len(train_set)} train / {len(val_set)} val / {len(test_set)} test "
                      f"clips, {len(labels)} classes")
    unlabeled = unlabeled_set(recipe.data) if pretraining else None
    if ctx.is_main:
        fit_frontend(recipe, train_set if labelled else unlabeled)
    barrier(ctx)
    frontend = fit_frontend(recipe, None)
    noise = noise_bank(root, frontend.sample_rate)
    console.print(f"front end: {frontend.num_mel_bins} mel x {frontend.num_frames} frames, "
                  f"normalization mean {frontend.mean:.3f} std {frontend.std:.3f}")
    result = PipelineResult(out)

    if pretraining:
        from edgeast.stages.pretrain import run_pretrain

        console.rule(f"pretrain ({recipe.pretrain.objective})")
        run_pretrain(recipe.pretrain, recipe.teacher, frontend, unlabeled, out / "pretrain", resume=resume)

    teacher_dir = out / "teacher"
    if "finetune" in stages and recipe.finetune.enabled:
        from edgeast.stages.finetune import init_teacher, run_finetune, starts_from_weights

        start = time.time()
        if not (teacher_dir / "model").is_dir():
            found = pretrain_dir if pretrain_dir.is_dir() else None
            init = recipe.finetune.init if starts_from_weights(recipe.finetune, found) else "random (no pretraining)"
            console.rule(f"teacher (init: {init})")
            teacher = init_teacher(recipe.finetune, recipe.teacher, frontend, labels, found, train_set)
            teacher, _ = run_finetune(recipe.finetune, teacher, train_set, teacher_dir, noise_bank=noise,
                                      evaluate=val_accuracy(val_set), resume=resume)
        if ctx.is_main:
            teacher = load_model(teacher_dir / "model")
            result.stages["teacher"] = summarize("teacher", teacher, val_set, test_set, time.time() - start, teacher_dir)

    if "distill" in stages and recipe.distill.enabled:
        from edgeast.stages.distill import run_distill

        teacher = load_model(teacher_dir / "model")
        runs = [("student", True)] + ([("student_baseline", False)] if recipe.distill.baseline else [])
        pending = [(name, with_teacher) for name, with_teacher in runs if not (out / name / "model").is_dir()]
        background, threads = None, side_by_side_threads(ctx, recipe, len(pending))
        evaluate = val_accuracy(val_set)
        if threads:  # the baseline trains in a second process while this one trains the distilled student
            log = out / "student_baseline" / "train.log"
            background = start_baseline_process(recipe, threads, resume, log)
            console.print(f"student_baseline trains in a second process beside the distilled student, {threads} "
                          f"thread(s) each (progress: {log})")
            pending, all_threads = pending[:1], torch.get_num_threads()
            torch.set_num_threads(threads)
            evaluate = taking_back_threads(evaluate, background, all_threads)
        try:
            for name, with_teacher in pending:
                console.rule(f"{name} ({recipe.distill.student.size}{', distilled' if with_teacher else ', no teacher'})")
                run_distill(recipe.distill, teacher, train_set, out / name, noise_bank=noise, resume=resume,
                            evaluate=evaluate, with_teacher=with_teacher)
        except BaseException:
            if background is not None:
                background.terminate()  # this process failed or was interrupted: stop the other one too
            raise
        finally:
            if background is not None:
                background.join()
                torch.set_num_threads(all_threads)
        if background is not None and background.exitcode != 0:
            raise RuntimeError(f"student_baseline failed in its process (exit code {background.exitcode}); see {log}")
        if ctx.is_main:
            for name, _ in runs:
                student = load_model(out / name / "model")
                done = out / name / "done.json"  # training time: the two may have run side by side
                seconds = json.loads(done.read_text()).get("wall_time_s", 0.0) if done.is_file() else 0.0
                result.stages[name] = summarize(name, student, val_set, test_set, seconds, out / name)

    if ctx.is_main:
        print_summary(result)
        write_report(recipe, result)
    return result


def side_by_side_threads(ctx, recipe: Recipe, pending: int) -> int:
    """Threads per student when the two students train side by side, else 0.

    A 64-dim student keeps only ~1 core busy (small matmuls, per-step
    overheads), so with 2+ cores (and threads) two students in two processes take
    the time of one. Not under torchrun or on a GPU, where one process owns the device.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    on_cpu = resolve_device(recipe.distill.engine.device).type == "cpu"
    budget = min(torch.get_num_threads(), cores)  # OMP_NUM_THREADS=1 keeps the run on one core
    if pending < 2 or not recipe.distill.side_by_side or ctx.distributed or not on_cpu or budget < 2:
        return 0
    return budget // 2


def taking_back_threads(evaluate, background: multiprocessing.Process, threads: int):
    """`evaluate`, which the engine calls after every epoch, that also gives this process all `threads` once
    the side-by-side baseline process has finished: with the teacher on the fly the distilled student
    trains longer and would otherwise leave a core idle. (Its later epochs then run with another
    thread count, so its weights depend, in float rounding, on when the baseline finished.)"""
    def evaluate_then_take_back(trainee) -> dict[str, float]:
        if background.exitcode is not None and torch.get_num_threads() < threads:
            torch.set_num_threads(threads)
        return evaluate(trainee)
    return evaluate_then_take_back


def train_baseline(recipe: Recipe, threads: int, resume: bool, log: Path) -> None:
    """Body of the second process: the student without the teacher, output to `log`.

    It is spawned, not forked (autograd refuses to run in a child forked from a
    process that has used it), so it loads the data and the teacher itself.
    """
    from edgeast.stages.distill import run_distill

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    torch.set_num_threads(threads)
    train_set, val_set = (labelled_split(recipe.data, split) for split in ("train", "val"))
    teacher = load_model(recipe.out / "teacher" / "model")
    noise = noise_bank(Path(recipe.data.root), teacher.frontend.cfg.sample_rate)
    run_distill(recipe.distill, teacher, train_set, recipe.out / "student_baseline", noise_bank=noise, resume=resume,
                evaluate=val_accuracy(val_set), with_teacher=False)


def start_baseline_process(recipe: Recipe, threads: int, resume: bool, log: Path) -> multiprocessing.Process:
    process = multiprocessing.get_context("spawn").Process(target=train_baseline, args=(recipe, threads, resume, log))
    process.start()
    return process


HEADER = ["model", "params", "MACs / 1 s", "size", "val acc %", "test acc %", "time s"]


def print_summary(result: PipelineResult) -> None:
    table = Table(title=f"edgeast train: {result.run_dir}")
    for h in HEADER:
        table.add_column(h, justify="right" if h != "model" else "left")
    for s in result.stages.values():
        table.add_row(*s.row())
    console.print(table)


def write_report(recipe: Recipe, result: PipelineResult) -> Path:
    out = result.run_dir
    lines = [f"# edgeast run `{recipe.name}`", "", f"Data: `{recipe.data.root}`.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(s.row()) + " |" for s in result.stages.values()]
    st = result.stages
    if "teacher" in st and "student" in st:
        t, s = st["teacher"], st["student"]
        lines += ["", f"Student/teacher parameters: {s.params / t.params:.3f}; "
                      f"test accuracy gap: {100 * (t.test_acc - s.test_acc):+.2f} points."]
    if "student" in st and "student_baseline" in st:
        d, b = st["student"], st["student_baseline"]
        lines += [f"Distillation gain over the same student without the teacher: "
                  f"{100 * (d.test_acc - b.test_acc):+.2f} points (test)."]
    lines += ["", "## Plots", ""]
    for name in ["pretrain", *st]:
        for png in ("curves.png", "confusion_test.png"):
            if (out / name / png).is_file():
                lines.append(f"![{name} {png}]({name}/{png})")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
