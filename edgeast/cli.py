"""The `edgeast` command line: parses arguments and calls library functions.

Every command is a thin shell over a function that tests call directly.
Library errors (ValueError subclasses with a one-line message) are printed as
one red line and exit with status 2, never a traceback.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="On-device keyword spotting with Audio Spectrogram Transformers.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: synthesize the embedded default.")
app.add_typer(data_app, name="data")
console = Console(stderr=True)

RECIPE = typer.Option(..., "--recipe", "-r", help="YAML recipe, e.g. train/recipes/quickstart.yaml")
SET = typer.Option(None, "--set", "-s", help="dotted override key=value (repeatable), e.g. finetune.engine.lr=1e-3")


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(2)


def _run(fn, *args, **kwargs):
    """Call a library function; turn its clear errors into one line and exit 2."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, OSError) as err:
        _fail(err)


def _recipe(path: Path, overrides: list[str] | None, extra: list[str] = ()):
    from edgeast.config import load_config
    from edgeast.stages.recipe import Recipe

    return _run(load_config, Recipe, path, list(overrides or []) + list(extra))


@app.command()
def train(recipe: Path = RECIPE, stages: Optional[str] = typer.Option(None, help="comma list of pretrain,finetune,distill"),
          set_: Optional[list[str]] = SET, resume: bool = typer.Option(False, help="continue interrupted stages")):
    """Pretrain, fine-tune a teacher and distill a student, as the recipe says."""
    from edgeast.stages.pipeline import run_pipeline

    cfg = _recipe(recipe, set_)
    _run(run_pipeline, cfg, stages.split(",") if stages else None, resume)


@app.command()
def pretrain(recipe: Path = RECIPE, set_: Optional[list[str]] = SET, resume: bool = typer.Option(False)):
    """Self-supervised pretraining only (SSAST / MAE-AST / ASiT)."""
    from edgeast.stages.pipeline import run_pipeline

    _run(run_pipeline, _recipe(recipe, set_), ["pretrain"], resume)


@app.command("eval")
def eval_(artifact: Path = typer.Argument(..., help="checkpoint directory, .pte or .onnx"),
          data: Path = typer.Option(..., help="dataset root (Speech Commands layout or folder per class)"),
          split: str = typer.Option("test", help="train | val | test"),
          task: str = typer.Option("auto", help="speech commands task: auto | ks1 | 35"),
          kind: str = typer.Option("speech_commands", help="speech_commands | folders"),
          as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
          confusion: Optional[Path] = typer.Option(None, help="write the confusion matrix PNG here")):
    """Accuracy, per-class precision/recall and the confusion matrix of a model on a split."""
    from edgeast.stages.data import labelled_split
    from edgeast.stages.evaluate import evaluate_artifact
    from edgeast.stages.recipe import DataConfig

    dataset = _run(labelled_split, DataConfig(root=str(data), kind=kind, task=task, in_memory=False), split)
    report = _run(evaluate_artifact, artifact, dataset, split)
    if confusion:
        report.plot_confusion(confusion)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{artifact} on {data} [{split}]: accuracy {100 * report.accuracy:.2f}% ({report.total} clips)")
    for col in ("class", "precision", "recall", "support"):
        table.add_column(col)
    p, r = report.precision(), report.recall()
    for i, label in enumerate(report.labels):
        table.add_row(label, f"{100 * p[i]:.1f}", f"{100 * r[i]:.1f}", str(int(report.confusion[i].sum())))
    Console().print(table)


@app.command()
def models():
    """Sizes and tokenizers: parameters and MACs for a 1 s window (100 frames)."""
    from rich.table import Table

    from edgeast.models.profile import model_table

    rows = model_table()
    table = Table(title="AST sizes (128 mel x 100 frames = 1 s)")
    for col in rows[0]:
        table.add_column(col, justify="left" if col in ("size", "tokenizer") else "right")
    for row in rows:
        table.add_row(*[f"{v:,}" if isinstance(v, int) else str(v) for v in row.values()])
    Console().print(table)


@app.command("import")
def import_(kind: str = typer.Argument(..., help="ssast | maeast | hf"),
            src: Path = typer.Argument(..., help="the published file (.pth/.pt) or Hugging Face folder"),
            out: Path = typer.Argument(..., help="checkpoint directory to write")):
    """Import published SSAST / MAE-AST / Hugging Face AST weights as an edgeast checkpoint."""
    from edgeast.models.importers import import_checkpoint

    path = _run(import_checkpoint, kind, src, out)
    console.print(f"[green]wrote[/] {path}")


@data_app.command("synth")
def synth(out: Path = typer.Argument(..., help="output dataset folder"),
          keywords: str = typer.Option("yes,no,up,down,left,right,on,off,stop,go", help="comma list; phrases allowed"),
          language: str = typer.Option("en", help="espeak-ng language, e.g. de, es, fr"),
          unknown: Optional[str] = typer.Option(None, help="comma list of non-keyword words (default: per language)"),
          unlabeled: int = typer.Option(0, help="also write N clips of sentences for pretraining"),
          set_: Optional[list[str]] = SET, seed: int = typer.Option(0)):
    """Synthesize a keyword dataset in the Speech Commands layout with espeak-ng (no download)."""
    from edgeast.config import apply_overrides, from_dict
    from edgeast.data.synth import SynthConfig, synthesize_dataset

    fields = {"keywords": [k.strip() for k in keywords.split(",") if k.strip()], "language": language,
              "unlabeled": unlabeled, "seed": seed}
    if unknown:
        fields["unknown_words"] = [w.strip() for w in unknown.split(",") if w.strip()]
    cfg = _run(from_dict, SynthConfig, apply_overrides(fields, list(set_ or [])))
    _run(synthesize_dataset, out, cfg)


@app.command()
def demo(run_dir: Path = typer.Option(Path("runs/quickstart"), help="where the run goes"),
         recipe: Path = typer.Option(Path("train/recipes/quickstart.yaml")),
         set_: Optional[list[str]] = SET):
    """The embedded default end to end: synthesize, pretrain, teacher, student, int8 export, stream."""
    from edgeast.demo import run_demo

    cfg = _recipe(recipe, set_, [f"run_dir={run_dir}"])
    _run(run_demo, cfg)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":
    sys.exit(app())
