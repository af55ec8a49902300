"""`make demo`: the embedded default end to end on a CPU.

synthesize keyword speech -> pretrain -> teacher -> distilled student ->
int8 ExecuTorch + ONNX export (with parity check) -> stream a synthesized
keyword sentence through the exported model and print the detections.
"""
from __future__ import annotations

import time

from rich.console import Console

from edgeast.stages.pipeline import run_pipeline
from edgeast.stages.recipe import Recipe

console = Console()


def run_demo(recipe: Recipe) -> dict:
    start = time.time()
    result = run_pipeline(recipe)
    summary = {"train": {k: v.__dict__ for k, v in result.stages.items()}}
    summary["export"] = export_student(recipe)
    summary["stream"] = stream_demo(recipe)
    console.print(f"[bold green]demo finished[/] in {time.time() - start:.0f} s; report: {result.run_dir / 'report.md'}")
    return summary


def export_student(recipe: Recipe) -> dict:
    """int8 .pte + .onnx of the student, calibrated on training clips, parity on held-out clips."""
    from edgeast.export.exporter import export_checkpoint

    out = recipe.out / "export"
    report = export_checkpoint(recipe.out / "student" / "model", out, int8=True, data=recipe.data, overwrite=True)
    return report.to_dict()


def stream_demo(recipe: Recipe) -> list[dict]:
    """Detections on a synthesized stream of held-out keywords, from the int8 .pte."""
    from edgeast.runtime.files import demo_stream

    return demo_stream(recipe.out / "export" / "model.pte", recipe.data.root, recipe.out / "export")
