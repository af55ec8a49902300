"""Does self-supervised pretraining help the teacher? One run, one table.

    python bench/train_quality.py                      # low-label recipe: its SSAST, 2000 steps
    python bench/train_quality.py --objectives maeast:2000,ssast:2000/pos_init=sincos
    python bench/train_quality.py --recipe train/recipes/quickstart.yaml --distill --seeds 1

The teacher is fine-tuned once from random init and once per pretraining objective
(`name[:steps][/field=value...]`: pretraining steps and objective settings), with the same
fine-tuning recipe and budget, and fine-tuned again with `--seeds` different seeds
(pretraining runs once, with the recipe's seed): with few labelled clips one fine-tuning
run of a pretrained start can land several points from the next (bench/RESULTS.md), so
the table gives each start's mean and range over seeds. All runs share the recipe's
dataset (held-out speakers in val/test) and its front-end normalization, fitted once on
the labelled training clips. With `--distill` the first objective's teacher is also distilled into the
student, beside the same student trained without it. Prints a markdown table for
bench/RESULTS.md and plots every run's test accuracy per start (`OUT/train_quality.png`).
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from edgeast.config import load_config
from edgeast.stages.pipeline import StageSummary, run_pipeline
from edgeast.stages.recipe import Recipe


def run(recipe_path: Path, out: Path, overrides: list[str], stages: list[str]) -> tuple[dict, float]:
    recipe = load_config(Recipe, recipe_path, [f"run_dir={out}", *overrides])
    start = time.time()
    result = run_pipeline(recipe, stages)
    return result.stages, time.time() - start


def run_seeds(
    recipe_path: Path, out: Path, overrides: list[str], stages: list[str], seeds: int
) -> tuple[dict, list[StageSummary], float]:
    """Run `stages` in `out` with the recipe's seed, then fine-tune again with seeds 1.. beside it.

    The extra runs share the first run's pretraining (a link to its folder) and normalization."""
    first, seconds = run(recipe_path, out, overrides, stages)
    teachers = [first["teacher"]]
    for seed in range(1, seeds):
        again = out.with_name(f"{out.name}_seed{seed}")
        again.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "frontend.json", again / "frontend.json")
        if (out / "pretrain").exists() and not (again / "pretrain").exists():
            os.symlink((out / "pretrain").resolve(), again / "pretrain")
        result, more = run(recipe_path, again, [*overrides, f"seed={seed}"], ["finetune"])
        teachers.append(result["teacher"])
        seconds += more
    return first, teachers, seconds


def spread(values: list[float]) -> str:
    """`mean` for one value, `mean (min-max)` for several, in percent."""
    mean = 100 * sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ({100 * min(values):.2f}-{100 * max(values):.2f})"


def plot_starts(rows: list[tuple[str, list[StageSummary], float]], path: Path) -> None:
    """Test accuracy per teacher start: every fine-tuning run as a dot, the mean as a bar."""
    from matplotlib.figure import Figure

    teachers = [(name.removeprefix("teacher, "), runs) for name, runs, _ in rows if name.startswith("teacher")]
    fig = Figure(figsize=(1.6 + 1.4 * len(teachers), 4), layout="constrained")
    ax = fig.subplots()
    for i, (name, runs) in enumerate(teachers):
        tests = [100 * s.test_acc for s in runs]
        ax.bar(i, sum(tests) / len(tests), color="lightsteelblue")
        ax.plot([i] * len(tests), tests, "o", color="black", markersize=4)
    ax.set_xticks(range(len(teachers)), [name.replace(" ", "\n", 1) for name, _ in teachers], fontsize=8)
    lowest = min(100 * s.test_acc for _, runs in teachers for s in runs)
    ax.set(ylabel="test accuracy %", ylim=(max(0.0, lowest - 5), 100), title="teacher start vs test accuracy")
    fig.savefig(path, dpi=100)


def parse_objective(spec: str) -> tuple[str, list[str]]:
    """`name[:steps][/key=value...]` -> (name, recipe overrides); keys are the objective's config fields."""
    head, *fields = spec.split("/")
    name, _, steps = head.partition(":")
    overrides = [f"pretrain.objective={name}"] + ([f"pretrain.engine.max_steps={int(steps)}"] if steps else [])
    # The recipe's objective_cfg belongs to its own objective; a named one starts from its defaults.
    return name, overrides + ["pretrain.objective_cfg={}"] + [f"pretrain.objective_cfg.{field}" for field in fields]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=Path("train/recipes/lowlabel_pretrain.yaml"))
    ap.add_argument("--out", type=Path, default=Path("runs/bench_train_quality"))
    ap.add_argument(
        "--objectives",
        default=None,
        help="comma list of name[:steps][/field=value...] (default: the recipe's own pretraining)",
    )
    ap.add_argument("--distill", action="store_true", help="also distill the first objective's teacher")
    ap.add_argument("--seeds", type=int, default=3, help="fine-tuning runs per start (seeds 0..N-1), mean reported")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override key=value")
    args = ap.parse_args()
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")

    rows: list[tuple[str, list[StageSummary], float]] = []
    scratch, teachers, seconds = run_seeds(
        args.recipe, args.out / "scratch", [*args.overrides, "finetune.init=scratch"], ["finetune"], args.seeds
    )
    rows.append(("teacher, random init", teachers, seconds))
    normalization = args.out / "scratch" / "frontend.json"  # fitted on the labelled clips: every run uses it
    if args.objectives is None:  # the recipe's pretraining as written, named in the table
        pretrain = load_config(Recipe, args.recipe, args.overrides).pretrain
        fields = "".join(f"/{key}={value}" for key, value in pretrain.objective_cfg.items())
        steps = f":{pretrain.engine.max_steps}" if pretrain.engine.max_steps else ""
        args.objectives = f"{pretrain.objective}{steps}{fields}"
    for i, spec in enumerate(args.objectives.split(",")):
        name, objective = parse_objective(spec)
        out = args.out / spec.replace(":", "_").replace("/", "_")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(normalization, out / "frontend.json")
        stages = ["pretrain", "finetune"] + (["distill"] if args.distill and i == 0 else [])
        overrides = [*args.overrides, *objective, "finetune.init=pretrain"]
        result, teachers, seconds = run_seeds(args.recipe, out, overrides, stages, args.seeds)
        rows.append((f"teacher, {spec} pretraining", teachers, seconds))
        if "student" in result:
            rows.append(("student, distilled", [result["student"]], 0.0))
            rows.append(("student, no teacher", [result["student_baseline"]], 0.0))

    base = sum(s.test_acc for s in rows[0][1]) / len(rows[0][1])
    print(f"\ncommand: python {' '.join(shlex.quote(a) for a in sys.argv)}\n")
    print(f"teachers: mean (min-max) over {args.seeds} fine-tuning seed(s); students: the recipe's seed\n")
    print("| model | params | val acc % | test acc % | mean test vs random init | wall s (stages run) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs, seconds in rows:
        test = sum(s.test_acc for s in runs) / len(runs)
        gain = f"{100 * (test - base):+.2f}" if name.startswith("teacher") else ""
        val, tests = spread([s.val_acc for s in runs]), spread([s.test_acc for s in runs])
        print(f"| {name} | {runs[0].params / 1e6:.3f}M | {val} | {tests} | {gain} | {seconds:.0f} |")
    plot_starts(rows, args.out / "train_quality.png")
    print(f"\nplot: {args.out / 'train_quality.png'}")


if __name__ == "__main__":
    main()
