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


@app.command("export")
def export_(checkpoint: Path = typer.Argument(..., help="checkpoint directory (e.g. runs/quickstart/student/model)"),
            out: Path = typer.Option(Path("runs/export"), help="output folder for model.pte / model.onnx / model.json"),
            int8: bool = typer.Option(False, "--int8", help="quantize the encoder to int8 (front end stays float)"),
            fmt: str = typer.Option("pte,onnx", "--format", help="comma list of pte, onnx"),
            calib: Optional[Path] = typer.Option(None, help="training data: calibration (train split) and parity "
                                                            "(test split) clips; needed for an int8 .pte"),
            window: float = typer.Option(1.0, help="input window in seconds"),
            min_agreement: float = typer.Option(0.99, help="int8 top-1 agreement below this fails the export"),
            overwrite: bool = typer.Option(False, help="replace model files in an existing output folder"),
            force: bool = typer.Option(False, help="keep files that fail the parity check")):
    """Export a checkpoint to a self-contained ExecuTorch (.pte, XNNPACK) and/or ONNX model on raw PCM."""
    from edgeast.export.exporter import export_checkpoint

    report = _run(export_checkpoint, checkpoint, out, data=calib, int8=int8,
                  formats=[f.strip() for f in fmt.split(",") if f.strip()], window_samples=round(window * 16000),
                  min_agreement=min_agreement, overwrite=overwrite, force=force)
    Console().print(report.table())


def _thresholds(items: list[str] | None) -> dict[str, float] | None:
    """`kw=0.8` strings -> {kw: 0.8}."""
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            _fail(ValueError(f"--threshold {item!r}: use keyword=score, e.g. --threshold yes=0.8"))
    return out


def _detector_options(threshold: list[str] | None, hop: float | None, vad_db: float | None = None):
    """The `--threshold`, `--hop` and `--vad-db` flags as the runtime's `DetectorOptions`."""
    from edgeast.runtime.detector_options import DetectorOptions

    return DetectorOptions(thresholds=_thresholds(threshold), hop_s=hop, vad_threshold_db=vad_db)


THRESHOLD = typer.Option(None, "--threshold", "-t", help="per-keyword threshold kw=0.8 (repeatable)")
HOP = typer.Option(None, "--hop", help="seconds between windows (default: the model's, 0.1)")


@app.command()
def listen(artifact: Path = typer.Argument(..., help=".pte, .onnx or checkpoint directory"),
           device: Optional[str] = typer.Option(None, help="input device index or name (see `edgeast devices`)"),
           threshold: Optional[list[str]] = THRESHOLD, hop: Optional[float] = HOP,
           save_detections: Optional[Path] = typer.Option(None, help="write each detection's audio here"),
           record: Optional[Path] = typer.Option(None, help="also record everything heard to this wav"),
           duration: Optional[float] = typer.Option(None, help="stop after this many seconds"),
           as_json: bool = typer.Option(False, "--json", help="JSON lines instead of the live view"),
           vad_db: Optional[float] = typer.Option(None, help="skip windows quieter than this (dBFS)")):
    """Live keyword spotting from the microphone (Ctrl-C to stop)."""
    from edgeast.runtime.microphone import listen as run

    dev = int(device) if device is not None and device.isdigit() else device
    _run(run, artifact, device=dev, save_detections=save_detections, record=record, duration_s=duration,
         json_lines=as_json, live=not as_json, options=_detector_options(threshold, hop, vad_db))


@app.command()
def devices():
    """The audio input devices `edgeast listen` can open."""
    from edgeast.runtime.microphone import list_devices

    for d in _run(list_devices):
        print(d)


@app.command()
def stream(artifact: Path = typer.Argument(..., help=".pte, .onnx or checkpoint directory"),
           files: list[Path] = typer.Argument(..., help="audio files"),
           realtime: bool = typer.Option(False, help="pace the stream in real time"),
           as_json: bool = typer.Option(False, "--json", help="JSON lines of detections"),
           threshold: Optional[list[str]] = THRESHOLD, hop: Optional[float] = HOP):
    """Run the streaming detector over audio files."""
    from edgeast.runtime.files import stream_files

    report = _run(stream_files, artifact, files, realtime=realtime, json_lines=as_json,
                  options=_detector_options(threshold, hop))
    if not as_json:  # stream_files printed the detections as it went
        console.print(f"real-time factor {report.real_time_factor:.4f}; {len(report.skipped)} unreadable file(s) skipped")


@app.command("eval-stream")
def eval_stream(artifact: Path = typer.Argument(..., help=".pte or .onnx (calibration writes its model.json)"),
                data: Path = typer.Option(..., help="dataset whose test split gives the keyword clips"),
                out: Path = typer.Option(Path("runs/eval_stream"), help="report folder"),
                minutes: float = typer.Option(10.0, help="minutes of keyword stream and of keyword-free stream"),
                snr_db: float = typer.Option(10.0, help="speech-to-noise ratio"),
                target_fa: float = typer.Option(1.0, help="false accepts per hour to calibrate thresholds for"),
                calibrate: bool = typer.Option(False, help="write the calibrated thresholds into the model's sidecar")):
    """Wake-word metrics: miss rate vs false accepts per hour, DET curve, threshold calibration."""
    from edgeast.runtime.benchmark_stream import StreamConfig
    from edgeast.runtime.wakeword_metrics import eval_stream as run

    cfg = StreamConfig(keyword_minutes=minutes, background_minutes=minutes, snr_db=snr_db)
    result = _run(run, artifact, data, out, cfg=cfg, target_fa_per_hour=target_fa, write_calibration=calibrate)
    print(result.to_markdown())
    console.print(f"report: {out / 'report.md'}, DET curve: {out / 'det.png'}")


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
