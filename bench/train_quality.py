"""Does pretraining help the teacher, and does distillation help the student? One run, one table.

    python bench/train_quality.py                       # quickstart recipe, every objective
    python bench/train_quality.py --objectives maeast   # just one

For each pretraining objective: the quickstart pipeline (pretrain -> teacher), and once
without pretraining (teacher from random init) with the same fine-tuning budget. The
distilled and undistilled students come from the first objective's run. All runs share
the synthetic dataset and the held-out speakers of its val/test splits. Prints a markdown
table for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from edgeast.config import load_config
from edgeast.stages.pipeline import run_pipeline
from edgeast.stages.recipe import Recipe


def run(recipe_path: Path, out: Path, overrides: list[str], stages: list[str]) -> tuple[dict, float]:
    recipe = load_config(Recipe, recipe_path, [f"run_dir={out}", *overrides])
    start = time.time()
    result = run_pipeline(recipe, stages)
    return result.stages, time.time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=Path("train/recipes/quickstart.yaml"))
    ap.add_argument("--out", type=Path, default=Path("runs/bench_train_quality"))
    ap.add_argument("--objectives", default="maeast,ssast,asit")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override key=value")
    args = ap.parse_args()

    rows = []
    scratch, seconds = run(args.recipe, args.out / "scratch", [*args.overrides, "finetune.init=scratch"], ["finetune"])
    rows.append(("teacher, random init", scratch["teacher"], seconds))
    for i, objective in enumerate(args.objectives.split(",")):
        stages = ["pretrain", "finetune", "distill"] if i == 0 else ["pretrain", "finetune"]
        result, seconds = run(args.recipe, args.out / objective,
                              [*args.overrides, f"pretrain.objective={objective}", "finetune.init=pretrain"], stages)
        rows.append((f"teacher, {objective} pretraining", result["teacher"], seconds))
        if i == 0:
            rows.append(("student, distilled", result["student"], 0.0))
            rows.append(("student, no teacher", result["student_baseline"], 0.0))

    print(f"\ncommand: python {' '.join(shlex.quote(a) for a in sys.argv)}\n")
    print("| model | params | val acc % | test acc % | wall s (stage set) |")
    print("|---|---:|---:|---:|---:|")
    for name, s, seconds in rows:
        print(f"| {name} | {s.params / 1e6:.3f}M | {100 * s.val_acc:.2f} | {100 * s.test_acc:.2f} | "
              f"{seconds:.0f} |")


if __name__ == "__main__":
    main()
