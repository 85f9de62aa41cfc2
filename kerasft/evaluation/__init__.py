"""Evaluation reports: the figures that say whether a fine-tune worked, from labels and outputs.

Loss and accuracy hide what matters after a fine-tune: which classes got worse, whether
the scores rank well, which threshold to use. `report_from_predictions` turns labels and a
model's outputs into an `EvaluationReport` for a multiclass, binary, multilabel or
regression task; `evaluate_model` runs the model over arrays or a `tf.data` pipeline
first. Every figure is scikit-learn's (the `sklearn.metrics` function is called on the
same arrays); the loss is the cross-entropy (or MSE) Keras computes, redone in numpy.
Precision, recall and F1 are 0 where they are undefined (nothing predicted, or nothing to
find): scikit-learn's `zero_division=0`.

Modules: `report` (the `EvaluationReport` record and its printed table), `arrays`
(labels and outputs checked, the task read off them), `figures` (`report_from_predictions`),
`thresholds` (`tune_thresholds`), `tta` (`flip_averaged`, test-time augmentation) and
`run` (`evaluate_model` and `evaluate`: a model run over data).
"""

from kerasft.evaluation.figures import report_from_predictions
from kerasft.evaluation.report import TASKS, EvaluationReport
from kerasft.evaluation.run import evaluate, evaluate_model
from kerasft.evaluation.thresholds import tune_thresholds
from kerasft.evaluation.tta import flip_averaged

__all__ = [
    "TASKS",
    "evaluate",
    "flip_averaged",
    "EvaluationReport",
    "evaluate_model",
    "report_from_predictions",
    "tune_thresholds",
]

# `doctest.testmod(kerasft.evaluation)` runs the examples of the names defined in the
# modules above, as it did when they were all defined here.
__test__ = {
    "EvaluationReport": EvaluationReport,
    "report_from_predictions": report_from_predictions,
    "tune_thresholds": tune_thresholds,
}
