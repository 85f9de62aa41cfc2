"""Evaluating a model: its outputs on labelled data, made into an evaluation report.

:func:`evaluate` reads data in any form ``finetune`` takes; :func:`evaluate_model` runs
the model over arrays or batched ``(x, y)`` pairs and hands labels and outputs to
:func:`~kerasft.evaluation.figures.report_from_predictions`, having read off the model
whether it outputs logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from kerasft.evaluation.arrays import as_arrays, resolve_task
from kerasft.evaluation.figures import report_from_predictions
from kerasft.evaluation.report import EvaluationReport
from kerasft.evaluation.tta import flip_averaged

__all__ = ["evaluate", "evaluate_model"]


def evaluate_model(
    model: keras.Model,
    x: Any,
    y: Any = None,
    *,
    batch_size: int = 32,
    task: str = "auto",
    from_logits: bool | None = None,
    class_names: Sequence[str] | None = None,
    thresholds: float | Sequence[float] | None = None,
    top_k: int | None = None,
    target_scale: float | Sequence[float] | None = None,
    target_offset: float | Sequence[float] | None = None,
) -> EvaluationReport:
    """Run `model` over data and report on its outputs (see `report_from_predictions`).

    With arrays, `model.predict(x)` is compared with `y`. With a batched `tf.data`
    pipeline (or any iterable of `(x, y)` batches), each batch is predicted and its
    labels kept alongside, in one pass, so a pipeline that reshuffles every epoch
    still pairs each label with its own prediction.

    Example:

    ```python
    report = evaluate_model(model, x_test, y_test, class_names=names)
    print(report)
    report = evaluate_model(model, test_ds)  # batched (x, y) pairs
    ```

    Args:
        model: a Keras model with one output.
        x: inputs (arrays), or a batched `tf.data.Dataset` / iterable of `(x, y)`.
        y: labels, with array inputs only. Defaults to `None`.
        batch_size: batch size of `model.predict` for array inputs. Defaults to `32`.
        task: see `report_from_predictions`. Defaults to `"auto"`.
        from_logits: whether the model outputs logits. Defaults to `None`: read off
            the last layer (a softmax/sigmoid activation or a `Softmax` layer means
            probabilities, a linear activation logits), else off the compiled loss's
            `from_logits`.
        class_names: see `report_from_predictions`. Defaults to `None`.
        thresholds: see `report_from_predictions`. Defaults to `None`.
        top_k: see `report_from_predictions`. Defaults to `None`.
        target_scale: see `report_from_predictions`. Defaults to `None`.
        target_offset: see `report_from_predictions`. Defaults to `None`.

    Returns:
        An `EvaluationReport`.

    Raises:
        ValueError: if `y` is missing for arrays or given with a dataset, a batch is not
            an `(x, y)` pair (sample weights are not supported) or is unbatched, the
            model has several outputs, `from_logits` cannot be told for a
            classification task, or `report_from_predictions` rejects the data.
    """
    y_true, y_pred = _predict(model, x, y, batch_size)
    if from_logits is None:
        from_logits = _outputs_are_logits(model)
    if from_logits is None:
        checked_true, checked_pred = as_arrays(y_true, y_pred)
        if resolve_task(checked_true, checked_pred, task) != "regression":
            raise ValueError(
                "Argument `from_logits` is None and cannot be told from the model: its "
                "last layer has no softmax/sigmoid/linear activation and its loss has no "
                "`from_logits`. Pass from_logits=True (outputs are logits) or False."
            )
        from_logits = False
    return report_from_predictions(
        y_true,
        y_pred,
        task=task,
        from_logits=from_logits,
        class_names=class_names,
        thresholds=thresholds,
        top_k=top_k,
        target_scale=target_scale,
        target_offset=target_offset,
    )


def evaluate(
    model: keras.Model,
    data: Any,
    *,
    task: str = "auto",
    batch_size: int = 32,
    class_names: Sequence[str] | None = None,
    thresholds: float | Sequence[float] | None = None,
    label_columns: Any = None,
    from_logits: bool | None = None,
    tta: bool = False,
) -> EvaluationReport:
    """The evaluation report of ``model`` on labelled ``data``, in any form ``finetune`` takes.

    ``data`` is read as :func:`kerasft.finetune` reads it (``(x, y)`` arrays, tuples or
    dicts of arrays for several inputs, a ``tf.data`` pipeline, a tensorflow-datasets
    builder, a DataFrame with ``label_columns``); a KerasHub task gets raw strings or
    images and preprocesses them itself.

    Example:

    ```python
    report = kerasft.evaluate(model, (x_test, y_test))
    print(report)                 # per-class table, confusion matrix
    report["accuracy"], report.to_json()
    ```

    Args:
        model: a Keras model with one output.
        data: labelled data.
        task: see :func:`report_from_predictions`. Defaults to `"auto"`.
        batch_size: batch size of the predictions. Defaults to `32`.
        class_names: names of the classes (or labels, outputs). Defaults to `None`.
        thresholds: decision thresholds (binary, multi-label). Defaults to `None`.
        label_columns: the label column(s) when ``data`` is a DataFrame. Defaults to `None`.
        from_logits: whether the model outputs logits; read off its head by default.
            Defaults to `None`.
        tta: test-time augmentation: average the outputs on each image and on its
            horizontal flip (images only). Defaults to `False`.

    Returns:
        An :class:`EvaluationReport`.

    Raises:
        ValueError: ``tta=True`` for a model whose input is not an image.
    """
    from kerasft.data import InputSignature, read_examples
    from kerasft.data.inputs import for_keras

    hub = "keras_hub" in type(model).__module__ or getattr(model, "preprocessor", None) is not None
    signature = None if hub else InputSignature.of(model)
    x, y = read_examples(data, signature=signature, argument="data", label_columns=label_columns)
    x = for_keras(x)
    if tta:
        if from_logits is None:
            from_logits = _outputs_are_logits(model)
        model = flip_averaged(model)
    return evaluate_model(
        model,
        x,
        y,
        batch_size=batch_size,
        task=task,
        from_logits=from_logits,
        class_names=class_names,
        thresholds=thresholds,
    )


def _single_output(outputs: Any) -> np.ndarray:
    if isinstance(outputs, dict):
        outputs = list(outputs.values()) if len(outputs) != 1 else next(iter(outputs.values()))
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != 1:
            raise ValueError(
                f"Argument `model` has {len(outputs)} outputs; a report covers one. "
                "HINT: evaluate keras.Model(model.inputs, model.outputs[i]) for output i."
            )
        outputs = outputs[0]
    return np.asarray(outputs)


def _predict(model, x, y, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    if y is not None:
        if hasattr(x, "element_spec"):
            raise ValueError(
                "Argument `y` must be None when `x` is a tf.data.Dataset: the labels come "
                "from its (x, y) batches."
            )
        return np.asarray(y), _single_output(model.predict(x, batch_size=batch_size, verbose=0))
    if hasattr(x, "__array__"):
        raise ValueError(
            f"Argument `y` is required when `x` is an array (received x of shape "
            f"{np.shape(x)}); or pass a dataset of (x, y) batches as `x`."
        )
    labels, outputs = [], []
    for i, batch in enumerate(x):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            size = len(batch) if isinstance(batch, (tuple, list)) else 1
            raise ValueError(
                f"Argument `x`: batch {i} must be an (x, y) pair. Received a batch of {size} "
                "element(s); sample weights are not supported."
            )
        batch_y = np.asarray(batch[1])
        if batch_y.ndim == 0:
            raise ValueError(
                "Argument `x`: the dataset yields single examples (scalar labels); batch it "
                "first, e.g. dataset.batch(32)."
            )
        outputs.append(_single_output(model.predict_on_batch(batch[0])))
        labels.append(batch_y)
    if not labels:
        raise ValueError("Argument `x`: the dataset is empty: there is nothing to evaluate.")
    return np.concatenate(labels), np.concatenate(outputs)


def _outputs_are_logits(model) -> bool | None:
    """True/False when the model's last layer (or its loss) tells; None otherwise."""
    layer = model
    while hasattr(layer, "outputs") and getattr(layer, "layers", None):
        layer = layer.layers[-1]  # Sequential/functional: the last layer makes the output
    if layer is not model or hasattr(model, "outputs"):
        if isinstance(layer, keras.layers.Softmax):
            return False
        activation = getattr(layer, "activation", None)
        if activation in (keras.activations.softmax, keras.activations.sigmoid):
            return False
        if activation is keras.activations.linear:
            return True
    from_logits = getattr(getattr(model, "loss", None), "from_logits", None)
    return None if from_logits is None else bool(from_logits)
