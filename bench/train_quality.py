"""Does self-supervised pretraining help the teacher? One run, one table.

    python bench/train_quality.py                      # low-label recipe: MAE-AST 2000 steps
    python bench/train_quality.py --objectives maeast:2000,ssast:2000/pos_init=sincos
    python bench/train_quality.py --recipe train/recipes/quickstart.yaml --distill

The teacher is fine-tuned once from random init and once per pretraining objective
(`name[:steps][/field=value...]`: pretraining steps and objective settings), with the same
fine-tuning recipe and budget. All runs share the recipe's dataset (held-out speakers
in val/test) and its front-end normalization, fitted once on the labelled training
clips. With `--distill` the first objective's teacher is also distilled into the
student, beside the same student trained without it. Prints a markdown table for
bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
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


def parse_objective(spec: str) -> tuple[str, list[str]]:
    """`name[:steps][/key=value...]` -> (name, recipe overrides); keys are the objective's config fields."""
    head, *fields = spec.split("/")
    name, _, steps = head.partition(":")
    overrides = [f"pretrain.objective={name}"] + ([f"pretrain.engine.max_steps={int(steps)}"] if steps else [])
    return name, overrides + [f"pretrain.objective_cfg.{field}" for field in fields]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=Path("train/recipes/lowlabel_pretrain.yaml"))
    ap.add_argument("--out", type=Path, default=Path("runs/bench_train_quality"))
    ap.add_argument("--objectives", default="maeast", help="comma list of name[:steps][/field=value...]")
    ap.add_argument("--distill", action="store_true", help="also distill the first objective's teacher")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override key=value")
    args = ap.parse_args()

    rows: list[tuple[str, StageSummary, float]] = []
    scratch, seconds = run(args.recipe, args.out / "scratch", [*args.overrides, "finetune.init=scratch"], ["finetune"])
    rows.append(("teacher, random init", scratch["teacher"], seconds))
    normalization = args.out / "scratch" / "frontend.json"  # fitted on the labelled clips: every run uses it
    for i, spec in enumerate(args.objectives.split(",")):
        name, objective = parse_objective(spec)
        out = args.out / spec.replace(":", "_").replace("/", "_")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(normalization, out / "frontend.json")
        stages = ["pretrain", "finetune"] + (["distill"] if args.distill and i == 0 else [])
        result, seconds = run(args.recipe, out, [*args.overrides, *objective, "finetune.init=pretrain"], stages)
        rows.append((f"teacher, {spec} pretraining", result["teacher"], seconds))
        if "student" in result:
            rows.append(("student, distilled", result["student"], 0.0))
            rows.append(("student, no teacher", result["student_baseline"], 0.0))

    base = scratch["teacher"]
    print(f"\ncommand: python {' '.join(shlex.quote(a) for a in sys.argv)}\n")
    print("| model | params | val acc % | test acc % | test vs random init | wall s (stages run) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, s, seconds in rows:
        gain = f"{100 * (s.test_acc - base.test_acc):+.2f}" if name.startswith("teacher") else ""
        print(f"| {name} | {s.params / 1e6:.3f}M | {100 * s.val_acc:.2f} | {100 * s.test_acc:.2f} | {gain} | "
              f"{seconds:.0f} |")


if __name__ == "__main__":
    main()
