"""What a fine-tuning run returns: the model, each phase's record, and typed side records.

:class:`FinetuneResult` holds the fine-tuned model and one :class:`PhaseResult` per phase.
What optional parts of the run found has its own small record: the LR finder's sweep
(``lr_find``), the pruning outcome (``pruning``), the speed decisions (``speed``), a
non-finite loss (``nan``), the regularizers attached (``regularization``) and the stages
of a gradual recipe (``stages``). ``extras`` is the former untyped dict, kept as a
deprecated alias.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

import keras

from kerasft.callbacks import monitor_mode

__all__ = ["FinetuneResult", "PhaseResult", "NaNEvent", "RegularizationRecord"]


@dataclass
class PhaseResult:
    """What one training phase did."""

    name: str
    epochs: int
    history: dict[str, list[float]]
    seconds: float
    trainable_params: int
    learning_rate: float
    steps_per_epoch: int

    @property
    def images_per_second(self) -> float:
        return 0.0 if not self.seconds else self.epochs * self.steps_per_epoch / self.seconds


@dataclass
class NaNEvent:
    """Where the loss went non-finite: phase, epoch, step (1-based), the loss and the peak rate."""

    phase: str
    epoch: int
    step: int
    loss: float
    learning_rate: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RegularizationRecord:
    """What L2-SP and weight clipping were attached to."""

    l2sp: dict[str, Any] | None = None
    clip_weights: list[str] | None = None


@dataclass
class FinetuneResult:
    """The fine-tuned model and what happened on the way.

    Attributes:
        model: the fine-tuned Keras model, with the best weights seen on validation.
        phases: one :class:`PhaseResult` per phase, in order.
        monitor: the validation quantity used to pick the best weights.
        best_score: its best value (``None`` without validation data).
        best_phase: the phase in which it was reached.
        num_classes: number of classes of the task.
        label_mode: ``"sparse"``, ``"one_hot"``, ``"binary"``, ``"multi_hot"`` or ``"continuous"``.
        head_rebuilt: whether the output layer was replaced.
        batch_size: the batch size of the run.
        plan: the :class:`kerasft.engine.plan.Plan` that ran.
        speed: the speed decisions (``kerasft.speed.SpeedRecord``).
        lr_find: the LR finder's sweep when ``lr="find"`` (``kerasft.LRFindResult``).
        pruning: the pruning outcome when ``prune=`` (``kerasft.pruning.PruningRecord``).
        nan: where the loss became non-finite, if it did.
        regularization: what L2-SP / weight clipping were attached to.
        stages: the stages of a gradual or phase-list recipe, with their rates.
        task: ``"classification"``, ``"multilabel"`` or ``"regression"``.
        thresholds: per-label decision thresholds of a multi-label task (tuned on the
            validation data by default).
        target_mean, target_std: the scale regression targets were standardised with
            during training (already folded into the returned model's head), or ``None``.
        adapters: the :class:`kerasft.peft.LoraResult` of a LoRA/DoRA recipe (targets,
            trainable report, int8 memory), else ``None``.
        options: the :class:`kerasft.engine.options.Options` of the call.
        spec: the :class:`kerasft.data.DataSpec` of the training data (task, classes,
            examples per class).
        representative: a :class:`kerasft.export.ExportSample` (up to 200 training inputs
            and 200 held-out validation examples) that :meth:`export` calibrates int8
            TFLite files on and checks TFLite files with, or ``None``.
        decision: what ``recipe="auto"`` decided and why
            (:class:`kerasft.engine.auto.AutoDecision`), else ``None``.
        probe: the linear probe's choices (:class:`kerasft.probe.ProbeChoice`), if one ran.
        selection: for a run that chose on held-out data and then trained the winner
            again on all labels, the result of the choosing run (its phases and scores).
        halving: the rates a phase tried by successive halving, each with its score on
            the validation data after half the phase (``{"lr", "score"}``; higher score is
            better), or ``None``.
        class_prior: the class proportions the model's head bias was shifted to
            (``HeadConfig(class_prior=...)``, scaled to sum to 1), or ``None``.
    """

    model: keras.Model
    phases: list[PhaseResult]
    monitor: str
    best_score: float | None
    best_phase: str | None
    num_classes: int
    label_mode: str
    head_rebuilt: bool
    batch_size: int = 32
    plan: Any = None
    speed: Any = None
    lr_find: Any = None
    pruning: Any = None
    nan: NaNEvent | None = None
    regularization: RegularizationRecord = field(default_factory=RegularizationRecord)
    stages: list[Any] | None = None
    task: str = "classification"
    thresholds: list[float] | None = None
    target_mean: list[float] | None = None
    target_std: list[float] | None = None
    adapters: Any = None
    options: Any = None
    spec: Any = None
    representative: Any = None
    decision: Any = None
    probe: Any = None
    selection: Any = None
    halving: list[dict[str, Any]] | None = None
    class_prior: list[float] | None = None

    @property
    def history(self) -> dict[str, dict[str, list[float]]]:
        """Per-phase Keras history: ``{phase name: {metric: [per-epoch values]}}``."""
        return {p.name: p.history for p in self.phases}

    @property
    def seconds(self) -> dict[str, float]:
        """Wall seconds per phase."""
        return {p.name: p.seconds for p in self.phases}

    @property
    def best_val_accuracy(self) -> float | None:
        """Best validation accuracy of any epoch, or ``None`` without validation data."""
        values = [v for p in self.phases for v in p.history.get("val_accuracy", [])]
        return max(values) if values else None

    @property
    def extras(self) -> dict[str, Any]:
        """Deprecated: the typed records as the former dict (``result.speed`` etc. instead)."""
        warnings.warn(
            "FinetuneResult.extras is deprecated; use the typed fields result.speed, "
            "result.lr_find, result.pruning, result.nan, result.regularization and result.stages.",
            DeprecationWarning,
            stacklevel=2,
        )
        out: dict[str, Any] = {}
        if self.nan is not None:
            out["nan"] = self.nan.to_dict()
        if self.regularization.l2sp is not None:
            out["l2sp"] = self.regularization.l2sp
        if self.regularization.clip_weights is not None:
            out["clip_weights"] = self.regularization.clip_weights
        if self.lr_find is not None:
            out["lr_find"] = self.lr_find
        if self.stages is not None:
            out["phases"] = [
                {"layers": s.layers, "epoch": s.epoch, "lr": s.lr} for s in self.stages
            ]
        if self.pruning is not None:
            out["pruning"] = self.pruning.to_dict()
        if self.speed is not None:
            out["speed"] = self.speed.to_dict()
        return out

    def evaluate(
        self,
        test_data: Any,
        *,
        batch_size: int | None = None,
        class_names: Any = None,
        label_columns: Any = None,
        tta: bool = False,
    ) -> Any:
        """The evaluation report of :attr:`model` on ``test_data`` (any form ``finetune`` accepts).

        Precision, recall and F1 per class with macro and weighted averages, the confusion
        matrix, top-k accuracy and ROC-AUC for classification; per-label figures at the
        run's decision thresholds for multi-label; MSE, MAE, RMSE and R2 for regression.
        ``report["accuracy"]`` (or ``["loss"]``, ``["r2"]``...) reads one figure.
        ``tta=True`` averages each image's outputs with its horizontal flip's.

        A DataFrame is split with the run's ``label_columns`` unless others are given.

        Returns:
            A :class:`kerasft.evaluation.EvaluationReport`.
        """
        from kerasft.evaluation import evaluate

        if label_columns is None and self.options is not None:
            label_columns = self.options.keywords().get("label_columns")
        return evaluate(
            self.model,
            test_data,
            task=self.evaluation_task,
            batch_size=batch_size or self.batch_size,
            class_names=class_names,
            thresholds=self.thresholds,
            label_columns=label_columns,
            tta=tta,
        )

    @property
    def evaluation_task(self) -> str:
        """The task as :mod:`kerasft.evaluation` names it."""
        if self.task == "classification":
            return "binary" if self.num_classes == 2 else "multiclass"
        return self.task

    def export(
        self,
        path: str,
        *,
        representative_data: Any = None,
        verify_data: Any = None,
        evaluation: Any = None,
        **kwargs: Any,
    ) -> str:
        """Export :attr:`model` with :func:`kerasft.export.export_model`; returns the path.

        Low-rank adapters are merged into the weights first (``kerasft.peft.merge``): the
        export is a plain model. The model card beside it describes the run (data, recipe
        and non-default options, phases). A TFLite file is calibrated (``quantize="int8"``)
        on :attr:`representative`'s training inputs and checked on its held-out examples
        unless ``representative_data`` / ``verify_data`` are given; a result without that
        sample (``representative`` is ``None``) needs ``representative_data`` for int8.

        Args:
            path: a SavedModel directory or a ``.tflite`` file.
            representative_data: int8 calibration inputs. Defaults to `None` (the run's sample).
            verify_data: held-out ``(x, y)`` for the TFLite check and the card's evaluation.
                Defaults to `None` (the run's held-out sample, else its training sample).
            evaluation: a :class:`kerasft.evaluation.EvaluationReport` for the card.
                Defaults to `None` (computed on ``verify_data`` when it has labels).
            **kwargs: further :func:`kerasft.export.export_model` arguments (``format``,
                ``class_names``, ``quantize``, ``io_dtype``, ``overwrite``).

        Returns:
            A :class:`kerasft.export.ExportedPath` (a ``str``) with ``.check`` and ``.card``.
        """
        from kerasft import peft
        from kerasft.export import export_model

        model = peft.merge(self.model) if peft.has_adapters(self.model) else self.model
        sample = self.representative
        if representative_data is None:
            representative_data = sample
        if verify_data is None:
            verify_data = sample
        return export_model(
            model,
            path,
            representative_data=representative_data,
            verify_data=verify_data,
            evaluation=evaluation,
            result=self,
            **kwargs,
        )

    def summary(self) -> str:
        """What ``recipe="auto"`` decided and why, then one line per phase.

        Each phase line gives its epochs, seconds, trainable parameters and best
        ``monitor``. After a choice on held-out data and a refit on all labels, the
        phases of the choosing run come first, so every second spent is shown.
        """
        lines = []
        if self.decision is not None:
            lines.extend(self.decision.describe())
        if self.selection is not None:
            lines.append("choosing run (on the holdout):")
            lines.extend(f"  {line}" for line in _phase_lines(self.selection))
            lines.append("on all labels:")
            lines.extend(f"  {line}" for line in _phase_lines(self))
        else:
            lines.extend(_phase_lines(self))
        return "\n".join(lines)


def _phase_lines(result: FinetuneResult) -> list[str]:
    """A header, then one line per phase: epochs, seconds, trainable parameters, best monitor."""
    best = min if monitor_mode(result.monitor) == "min" else max
    lines = [f"{'phase':<10}{'epochs':>7}{'seconds':>9}{'trainable':>12}  best {result.monitor}"]
    for p in result.phases:
        vals = p.history.get(result.monitor, [])
        value = best(vals) if vals else float("nan")
        lines.append(
            f"{p.name:<10}{p.epochs:>7}{p.seconds:>9.1f}{p.trainable_params:>12,}  {value:.4f}"
        )
    return lines
