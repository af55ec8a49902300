"""Self-supervised pretraining stage: front end + one of the SSAST / MAE-AST / ASiT objectives.

The result is an encoder-only checkpoint (`<out>/model`) that fine-tuning
starts from; the objective's heads stay in the engine's training state so an
interrupted run resumes exactly.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from rich.console import Console
from torch import Tensor, nn

from edgeast.audio.frontend import FrontendConfig, LogMelFrontend
from edgeast.engine.distributed import barrier
from edgeast.engine.logging import read_metrics
from edgeast.engine.trainer import Trainer
from edgeast.models.ast import ASTClassifier
from edgeast.models.checkpoint import save_model
from edgeast.models.keyword import KeywordModel
from edgeast.models.objectives import build_objective
from edgeast.stages.finetune import build_classifier
from edgeast.stages.recipe import ModelConfig, PretrainConfig


class PretrainTrainee(nn.Module):
    """Waves -> log-mel -> masked-prediction loss."""

    def __init__(self, frontend: LogMelFrontend, objective: nn.Module):
        super().__init__()
        self.frontend = frontend
        self.objective = objective

    def forward(self, wave: Tensor):
        return self.objective(self.frontend(wave))

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        hook = getattr(self.objective, "after_optimizer_step", None)
        if hook is not None:
            hook(step, total_steps)


INFONCE_OBJECTIVES = ("ssast", "maeast")  # their "acc" is masked-patch InfoNCE accuracy, chance 1 / num_masked


def infonce_onset(history: Path, chance: float, factor: float = 3.0) -> int | None:
    """The first logged step whose masked-patch accuracy is over ``factor`` x chance; None if none is.

    Until then every masked position makes the same prediction (a plateau whose length
    varies from run to run); a checkpoint saved soon after it ends can fine-tune worse than
    random init (bench/RESULTS.md, low-label section).
    """
    return next((row["step"] for row in read_metrics(history) if row.get("acc", 0.0) > factor * chance), None)


def late_onset_warning(objective: str, onset: int | None, steps: int, late: float = 0.6) -> str | None:
    """A one-line warning when the InfoNCE plateau took more than ``late`` of the run, else None.

    0.6 from the runs measured so far (bench/RESULTS.md): low-label MAE-AST with its onset at
    63% of the run fine-tuned 6 points under random init, at 51% level with it; quickstart
    MAE-AST runs at 42-54% all helped.
    """
    if onset is not None and onset <= late * steps:
        return None
    when = "never left chance" if onset is None else f"left chance only at step {onset} of {steps}"
    fix = ""
    if objective == "ssast":
        fix = "; or start from sinusoidal positions: --set pretrain.objective_cfg.pos_init=sincos"
    return (f"pretrain-{objective}: the masked-patch accuracy {when}: the encoder has had little training "
            f"past that plateau and may fine-tune worse than random init; train longer (more max_steps){fix}")


def run_pretrain(cfg: PretrainConfig, model_cfg: ModelConfig, frontend_cfg: FrontendConfig, train_set,
                 out: Path, *, resume: bool = False) -> tuple[KeywordModel, object]:
    """Pretrain an encoder; writes <out>/model as an encoder-only checkpoint."""
    encoder_cfg = build_classifier(model_cfg, frontend_cfg, num_classes=0).cfg
    objective = build_objective(cfg.objective, encoder_cfg, cfg.objective_cfg)
    trainee = PretrainTrainee(LogMelFrontend(frontend_cfg), objective)
    trainer = Trainer(cfg.engine, trainee, train_set, out, name=f"pretrain-{cfg.objective}")
    result = trainer.fit(resume=resume)
    classifier = ASTClassifier(replace(encoder_cfg, num_classes=0))
    classifier.encoder.load_state_dict(trainer.module.objective.encoder_state_dict())
    model = KeywordModel(LogMelFrontend(frontend_cfg), classifier, labels=[])
    if trainer.ctx.is_main:
        save_model(model, out / "model", labels=[],
                   provenance={"stage": "pretrain", "objective": cfg.objective, "recipe": asdict(cfg)})
        if cfg.objective in INFONCE_OBJECTIVES and result.history.is_file():
            onset = infonce_onset(result.history, chance=1 / objective.num_masked)
            warning = late_onset_warning(cfg.objective, onset, result.steps)
            if warning:
                Console(stderr=True).print(f"[yellow]warning:[/] {warning}")
    barrier(trainer.ctx)
    return model, result
