"""What a run shows and leaves behind: a progress bar, metrics.csv, TensorBoard events, curves.png.

Only rank 0 logs. On a terminal the progress bar is a rich bar (loss,
clips/s, ETA); when stdout is not a terminal or under CI it prints one line
every `line_every` steps and at each epoch end instead.
"""
from __future__ import annotations

import csv
import io
import math
import os
import sys
import time
from pathlib import Path

from edgeast.engine.state import atomic_write_text

METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"
EVAL_PREFIX = "eval_"


def _format_eta(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressDisplay:
    """A rich progress bar on a terminal, else plain lines."""

    def __init__(self, name: str, total_steps: int, start_step: int, line_every: int, enabled: bool) -> None:
        self.name, self.total, self.line_every, self.enabled = name, total_steps, line_every, enabled
        self.start_step, self.start_time = start_step, time.perf_counter()
        self.bar = None
        if enabled and sys.stdout.isatty() and not os.environ.get("CI"):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self.task = self.bar.add_task(name, total=total_steps, completed=start_step, info="")
            self.bar.start()

    def update(self, step: int, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif self.enabled and (step % self.line_every == 0 or step == self.total):
            rate = (time.perf_counter() - self.start_time) / max(1, step - self.start_step)
            self.line(f"step {step}/{self.total} {info} eta {_format_eta(rate * (self.total - step))}")

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(f"{self.name}: {text}")
        else:
            print(f"{self.name}: {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a metrics.csv, each with only the columns it has a value for (``step`` an int)."""
    with open(path, newline="") as f:
        return [{k: int(v) if k == "step" else float(v) for k, v in row.items() if k and v not in ("", None)}
                for row in csv.DictReader(f)]


class MetricsLog:
    """Scalar rows (step, epoch, lr, loss, metrics, clips_per_s, eval_*) to metrics.csv and TensorBoard.

    Resuming from step S keeps the CSV rows up to S and purges later TensorBoard
    events, so the history reads as one uninterrupted run.
    """

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None = None) -> None:
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.rows: list[dict[str, float]] = []
        self.columns: list[str] = ["step", "epoch"]
        self.writer = None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            for values in read_metrics(self.path):
                if values.get("step", math.inf) <= resume_step:
                    self._remember(values)
        self._rewrite()
        from torch.utils.tensorboard import SummaryWriter
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=purge)

    def _remember(self, row: dict[str, float]) -> bool:
        """Keep `row`; True if it brought new columns."""
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        self.columns += new
        return bool(new)

    def _rewrite(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())

    def add(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {k: int(v) if k == "step" else float(v) for k, v in row.items()}
        if self._remember(row):
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n").writerow(row)
        step = int(row["step"])
        for key, value in row.items():
            if key in ("step", "epoch"):
                continue
            tag = f"eval/{key[len(EVAL_PREFIX):]}" if key.startswith(EVAL_PREFIX) else f"train/{key}"
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def plot_curves(rows: list[dict[str, float]], path: Path, title: str = "") -> None:
    """Training loss (and eval metrics, if any) against the step, as a PNG."""
    from matplotlib.figure import Figure

    train = [r for r in rows if "loss" in r]
    evals = sorted({k for r in rows for k in r if k.startswith(EVAL_PREFIX)})
    fig = Figure(figsize=(11 if evals else 6, 4), layout="constrained")
    axes = fig.subplots(1, 2 if evals else 1, squeeze=False)[0]
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    axes[0].set(xlabel="step", ylabel="loss", title=f"{title} loss".strip())
    if train and min(r["loss"] for r in train) > 0:
        axes[0].set_yscale("log")
    if evals:
        for key in evals:
            points = [(r["step"], r[key]) for r in rows if key in r]
            axes[1].plot(*zip(*points), marker="o", label=key[len(EVAL_PREFIX):])
        axes[1].set(xlabel="step", title="evaluation")
        axes[1].legend()
    fig.savefig(path, dpi=100)
