"""``kerasft.finetune``: fine-tune a pretrained classifier on new labelled data, in one call.

The default recipe is LP-FT, the Keras transfer-learning guide's and fastai
``fine_tune``'s: train a (possibly new) head on a frozen body, then unfreeze the body
(all of it, or its top layers) and train everything at a lower rate with warmup and
cosine decay. BatchNormalization stays in inference mode throughout, early stopping
watches the validation metric, and the best weights seen in any phase are the ones
returned.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from kerasft import _onednn, _runstate, _speed, _strategies, surgery
from kerasft import data as data_lib
from kerasft import distribute as _distribute

__all__ = ["finetune", "FinetuneResult", "PhaseResult", "load_model", "RECIPES"]

RECIPES = ("lp-ft", "full", "head", "gradual")


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
class FinetuneResult:
    """The fine-tuned model and what happened on the way.

    Attributes:
        model: the fine-tuned Keras model, with the best weights seen on validation.
        phases: one :class:`PhaseResult` per phase, in order.
        monitor: the validation quantity used to pick the best weights.
        best_score: its best value (``None`` without validation data).
        best_phase: the phase in which it was reached.
        num_classes: number of classes of the task.
        label_mode: ``"sparse"``, ``"one_hot"`` or ``"binary"``.
        head_rebuilt: whether the output layer was replaced.
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
    extras: dict[str, Any] = field(default_factory=dict)

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

    def evaluate(self, test_data: Any, *, batch_size: int | None = None) -> dict[str, float]:
        """Loss and metrics of :attr:`model` on ``test_data`` (any form ``finetune`` accepts)."""
        prepared = data_lib.prepare_data(
            test_data, model=self.model, validation_split=0.0,
            batch_size=batch_size or self.batch_size, num_classes=self.num_classes,
            label_mode=self.label_mode, shuffle=False, check_classes=False,
        )
        values = self.model.evaluate(prepared.train, verbose=0, return_dict=True)
        return {k: float(v) for k, v in values.items()}

    def export(self, path: str, **kwargs: Any) -> str:
        """Export :attr:`model` with :func:`kerasft.export.export_model`; returns the path."""
        from kerasft.export import export_model

        return export_model(self.model, path, **kwargs)

    def summary(self) -> str:
        lines = [f"{'phase':<10}{'epochs':>7}{'seconds':>9}{'trainable':>12}  best {self.monitor}"]
        for p in self.phases:
            vals = p.history.get(self.monitor, [])
            best = (min(vals) if "loss" in self.monitor else max(vals)) if vals else float("nan")
            lines.append(f"{p.name:<10}{p.epochs:>7}{p.seconds:>9.1f}{p.trainable_params:>12,}  {best:.4f}")
        return "\n".join(lines)


def load_model(path: str, *, safe_mode: bool = True) -> keras.Model:
    """Load a ``.keras`` or ``.h5`` model file for fine-tuning, refusing unsafe code by default.

    Args:
        path: file path.
        safe_mode: refuse to deserialize Python code (``Lambda`` layers) in the file, as
            Keras does. Set ``False`` only for files you trust. Defaults to `True`.

    Raises:
        ValueError: a missing file, an unsupported extension, or a file Keras cannot read.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"Argument `model`: no file or directory at {path!r}.")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "saved_model.pb")):
            from kerasft.export import load_saved_model

            return load_saved_model(path)
        raise ValueError(
            f"Argument `model`: {path!r} is a directory without saved_model.pb. Pass a .keras "
            "or .h5 file, or a SavedModel directory."
        )
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".keras", ".h5", ".hdf5"):
        raise ValueError(
            f"Argument `model`: {path!r} has extension {ext!r}; kerasft loads '.keras' and "
            "'.h5' model files and SavedModel directories."
        )
    if ext == ".keras" and not zipfile.is_zipfile(path):
        raise ValueError(
            f"Argument `model`: {path!r} is not a valid .keras file (a .keras model is a zip "
            f"archive; this file is not one, {os.path.getsize(path)} bytes). Is it complete, "
            "or was it saved in another format?"
        )
    try:
        return keras.models.load_model(path, compile=False, safe_mode=safe_mode)
    except ValueError as e:
        if "safe_mode" in str(e) or "Lambda" in str(e):
            raise ValueError(
                f"Argument `model`: {path!r} contains Python code (e.g. a Lambda layer) that "
                "kerasft will not run from a file by default. If you trust the file, pass "
                f"safe_mode=False. Keras said: {e}"
            ) from None
        raise ValueError(f"Argument `model`: {path!r} could not be read as a Keras model: {e}") from None
    except Exception as e:  # corrupt zip / h5 files raise many types
        raise ValueError(
            f"Argument `model`: {path!r} could not be read as a Keras model "
            f"({type(e).__name__}: {e}). Is the file complete and a .keras/.h5 model?"
        ) from None


def _copy(model: keras.Model) -> keras.Model:
    try:
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
    except Exception as e:
        raise ValueError(
            f"kerasft could not copy model {model.name!r} ({type(e).__name__}: {e}). "
            "HINT: register custom layers with keras.saving.register_keras_serializable, "
            "or pass copy=False to fine-tune the model in place."
        ) from None
    for (_, a), (_, b) in zip(surgery.iter_layers(model), surgery.iter_layers(clone)):
        b.trainable = a.trainable
    return clone


class _BestWeights(keras.callbacks.Callback):
    """Remember the best weights on ``monitor`` across phases and restore them on request."""

    def __init__(self, monitor: str):
        super().__init__()
        self.monitor = monitor
        self.sign = -1.0 if "loss" in monitor else 1.0
        self.best = -math.inf
        self.best_weights: list[np.ndarray] | None = None
        self.best_phase: str | None = None
        self.phase = ""
        self.from_epoch = 0

    def restart(self, from_epoch: int) -> None:
        """Forget the weights seen so far; then only count epochs >= ``from_epoch``."""
        self.best, self.best_weights, self.from_epoch = -math.inf, None, from_epoch

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value) or epoch < self.from_epoch:
            return
        if self.sign * value > self.best:
            self.best = self.sign * value
            self.best_weights = self.model.get_weights()
            self.best_phase = self.phase

    @property
    def best_value(self) -> float | None:
        return None if self.best_weights is None else self.sign * self.best

    def restore(self, model: keras.Model) -> None:
        if self.best_weights is not None:
            model.set_weights(self.best_weights)


def _loss_and_metrics(label_mode: str, from_logits: bool):
    if label_mode == "one_hot":
        return (keras.losses.CategoricalCrossentropy(from_logits=from_logits),
                [keras.metrics.CategoricalAccuracy(name="accuracy")])
    if label_mode == "binary":
        return (keras.losses.BinaryCrossentropy(from_logits=from_logits),
                [keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0 if from_logits else 0.5)])
    return (keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
            [keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def _make_optimizer(name: str, learning_rate, weight_decay: float | None, clipnorm, global_clipnorm,
                    use_ema: bool = False):
    kwargs: dict[str, Any] = {"learning_rate": learning_rate}
    if use_ema:
        kwargs["use_ema"] = True
    if clipnorm is not None:
        kwargs["clipnorm"] = clipnorm
    if global_clipnorm is not None:
        kwargs["global_clipnorm"] = global_clipnorm
    name = name.lower()
    if name == "adam":
        return keras.optimizers.Adam(**kwargs)
    if name == "adamw":
        return keras.optimizers.AdamW(weight_decay=weight_decay or 1e-4, **kwargs)
    if name == "sgd":
        return keras.optimizers.SGD(momentum=0.9, nesterov=True, **kwargs)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(**kwargs)
    raise ValueError(
        f"Argument `optimizer` must be one of ['adam', 'adamw', 'sgd', 'rmsprop'] or a "
        f"callable returning a Keras optimizer. Received: optimizer={name!r}"
    )


def _warmup_cosine(peak: float, total_steps: int, warmup_fraction: float):
    # kerasft's schedule rather than Keras's CosineDecay: ReduceLROnPlateauScaled can scale it.
    from kerasft.schedules import WarmupCosineDecay

    total_steps = max(1, total_steps)
    warmup = min(int(round(warmup_fraction * total_steps)), total_steps - 1)
    return WarmupCosineDecay(peak, total_steps=total_steps, warmup_steps=warmup)


def _body_selection(model: keras.Model, head: keras.layers.Layer, unfreeze: Any) -> list[keras.layers.Layer]:
    """Leaf layers of the body to unfreeze in the fine-tuning phase."""
    leaves = [lyr for _, lyr in surgery.iter_layers(model) if not surgery._is_container(lyr)]
    body = [lyr for lyr in leaves if lyr is not head]
    weighted = [lyr for lyr in body if lyr.weights and not isinstance(lyr, keras.layers.BatchNormalization)]
    if unfreeze in ("all", None):
        return body
    if isinstance(unfreeze, bool):
        raise ValueError(f"Argument `unfreeze` must be 'all', an int or a float. Received: unfreeze={unfreeze!r}")
    if isinstance(unfreeze, int):
        if unfreeze < 1:
            raise ValueError(
                f"Argument `unfreeze` must be 'all', a positive number of weighted layers, or a "
                f"fraction in (0, 1]. Received: unfreeze={unfreeze!r}"
            )
        keep = weighted[-unfreeze:]
    elif isinstance(unfreeze, float):
        if not 0.0 < unfreeze <= 1.0:
            raise ValueError(
                f"Argument `unfreeze` as a fraction must be in (0, 1]. Received: unfreeze={unfreeze!r}"
            )
        keep = weighted[-max(1, int(round(unfreeze * len(weighted)))):]
    elif isinstance(unfreeze, str):
        try:
            keep = surgery.select_layers(model, pattern=unfreeze)
        except ValueError as e:
            raise ValueError(f"Argument `unfreeze={unfreeze!r}` selects nothing to train: "
                             f"{e}") from None
        return [lyr for lyr in keep if lyr is not head]
    else:
        raise ValueError(
            f"Argument `unfreeze` must be 'all', an int (top N weighted layers), a float "
            f"(top fraction) or a regex string. Received: unfreeze={unfreeze!r}"
        )
    if not keep:
        return []
    first = body.index(keep[0])
    return body[first:]


def _next_phase_trainable(model: keras.Model, head: keras.layers.Layer, plan: list[tuple[str, int]], index: int,
                          unfreeze: Any, train_bn: bool) -> list[keras.layers.Layer] | None:
    """Layers the fine-tuning phase after the head phase ``index`` will train, else ``None``.

    Lets the feature cache compute the frozen bottom's features once for both phases.
    """
    if plan[index][0] != "head" or index + 1 >= len(plan) or plan[index + 1][0] != "finetune" or not plan[index + 1][1]:
        return None
    try:
        body = _body_selection(model, head, unfreeze)
    except ValueError:
        return None  # raised again, with its message, when that phase starts
    return [lyr for lyr in body if train_bn or not isinstance(lyr, keras.layers.BatchNormalization)] + [head]


def _log(verbose: int, msg: str) -> None:
    if verbose:
        print(msg, flush=True)


def finetune(
    model: keras.Model | str,
    data: Any,
    *,
    validation_data: Any = None,
    validation_split: float = 0.2,
    recipe: str | Sequence[dict[str, Any]] | os.PathLike = "lp-ft",
    head_epochs: int = 5,
    epochs: int = 10,
    lr: float | str = 1e-2,
    finetune_lr: float | None = None,
    warmup: float = 0.1,
    unfreeze: str | int | float = "all",
    train_bn: bool = False,
    batch_size: int = 32,
    optimizer: str = "adam",
    weight_decay: float | None = None,
    clipnorm: float | None = None,
    global_clipnorm: float | None = None,
    lr_mult: float | Sequence[float] | None = None,
    layer_decay: float | None = None,
    layer_groups: Any = None,
    l2sp: float | None = None,
    clip_weights: float | tuple[float, Any] | None = None,
    use_ema: bool = False,
    reduce_on_plateau: bool | dict[str, Any] | None = None,
    num_classes: int | None = None,
    label_mode: str | None = None,
    from_logits: bool | None = None,
    new_head: bool | None = None,
    head_dropout: float = 0.0,
    head_activation: str | None = None,
    loss: Any = None,
    metrics: Sequence[Any] | None = None,
    monitor: str | None = None,
    patience: int | None = 5,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    prune: float | dict[str, Any] | None = None,
    tensorboard: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    cache_features: bool | str = "auto",
    cache_budget: float = 1024**3,
    jit_compile: bool | str = "auto",
    mixed_precision: bool | str | None = None,
    steps_per_execution: int | str = "auto",
    distribute: Any = None,
    seed: int = 0,
    copy: bool = True,
    safe_mode: bool = True,
    verbose: int = 1,
) -> FinetuneResult:
    """Fine-tune a pretrained Keras classifier on new labelled data.

    Phase 1 (``"head"``) trains the output layer with everything else frozen; phase 2
    (``"finetune"``) unfreezes the body (``unfreeze``) and trains at ``finetune_lr``
    with linear warmup and cosine decay. BatchNormalization layers stay in inference
    mode in both phases unless ``train_bn=True``. Early stopping watches ``monitor``,
    and the best weights of the whole run are restored at the end.

    Example:

    ```python
    import kerasft
    result = kerasft.finetune("saved_models/mnist_cnn.keras", (x, y))
    result.evaluate((x_test, y_test))
    ```

    Args:
        model: a Sequential or Functional Keras 3 model (a nested backbone is fine), or a
            path to a ``.keras``/``.h5`` file or SavedModel directory.
        data: ``(x, y)`` arrays, a ``tf.data.Dataset`` of ``(x, y)`` (batched or not),
            or a tensorflow-datasets builder/split.
        validation_data: same forms; when ``None``, ``validation_split`` of ``data`` is
            held out (seeded, stratified). Defaults to `None`.
        validation_split: held-out fraction when ``validation_data`` is ``None``; ``0``
            trains without validation (no early stopping). Defaults to `0.2`.
        recipe: ``"lp-ft"`` (head, then body), ``"full"`` (everything at once),
            ``"head"`` (linear probe), ``"gradual"`` (the head for ``head_epochs``, then
            the body's layer groups unfrozen top-down, evenly over ``epochs``, each
            phase at its own rate, in one ``fit`` so that optimizer state carries
            over), or an explicit phase schedule for ``epochs`` epochs: a list
            ``[{"layers": regex(es), "epoch": start, "lr": rate}, ...]`` or the path
            of a YAML/JSON file of one (see ``kerasft.callbacks.load_phases``).
            Defaults to `"lp-ft"`.
        head_epochs: epochs of the head phase. Defaults to `5`.
        epochs: epochs of the fine-tuning phase (of the only phase for ``"full"``).
            Defaults to `10`.
        lr: learning rate of the head phase, or ``"find"`` to take the ``valley``
            suggestion of ``kerasft.lr_find`` (run with the head phase's trainable
            weights; the sweep is kept in ``result.extras["lr_find"]``). The default is
            higher than Keras's usual 1e-3 because a new head on few examples gets few
            steps (see the strategies benchmark in README). Defaults to `1e-2`.
        finetune_lr: peak learning rate after unfreezing. Defaults to ``lr / 10``.
        warmup: fraction of the fine-tuning steps spent warming up linearly.
            Defaults to `0.1`.
        unfreeze: what the fine-tuning phase unfreezes: ``"all"``, the top N weighted
            layers (int), the top fraction of them (float), or a regex over layer paths.
            Defaults to `"all"`.
        train_bn: let BatchNormalization layers train (batch statistics, updated moving
            averages) once unfrozen. Defaults to `False`.
        batch_size: batch size (global, across replicas). Defaults to `32`.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` or ``"rmsprop"``. Defaults to `"adam"`.
        weight_decay: decoupled weight decay for ``"adamw"``. Defaults to `None`.
        clipnorm: per-variable gradient norm clip. Defaults to `None`.
        global_clipnorm: global gradient norm clip. Defaults to `None`.
        lr_mult: discriminative rates after unfreezing (fastai's ``slice(lr / lr_mult,
            lr)``): layer groups get rates spread geometrically from
            ``finetune_lr / lr_mult`` (bottom) to ``finetune_lr`` (head), through a
            ``keras.optimizers.MultiOptimizer``; or one multiplier per group.
            Defaults to `None`.
        layer_decay: layer-wise rate decay instead: group ``k`` levels below the top
            trains at ``finetune_lr * layer_decay ** k``. Defaults to `None`.
        layer_groups: how to cut the model into groups for ``lr_mult``,
            ``layer_decay`` and ``"gradual"``: regexes or ``{name: regex}`` (see
            ``kerasft.layerwise.layer_groups``). Defaults to `None` (blocks by name).
        l2sp: strength of the L2-SP penalty pulling pretrained weights toward their
            starting values (a rebuilt head is left free). Defaults to `None`.
        clip_weights: keep weights in ``[-c, c]``: ``c`` for every layer but
            normalization layers, or ``(c, layer regex(es))``. Defaults to `None`.
        use_ema: keep an exponential moving average of the weights (Keras's optimizer
            ``use_ema``); validation, best-weights selection and the returned model
            use the averaged weights. Defaults to `False`.
        reduce_on_plateau: lower the rate (scaling its schedule) when ``monitor``
            stalls: ``True`` (halve after 2 epochs) or a dict of
            ``kerasft.callbacks.ReduceLROnPlateauScaled`` arguments. Defaults to `None`.
        num_classes: number of classes; read off the labels by default. Defaults to `None`.
        label_mode: ``"sparse"``, ``"one_hot"`` or ``"binary"``; detected by default.
            Defaults to `None`.
        from_logits: whether the head outputs logits; detected from its activation.
            Defaults to `None`.
        new_head: ``True`` always rebuilds the output layer, ``False`` never does (an
            error if the class count differs), ``None`` rebuilds it when the class count
            differs. Defaults to `None`.
        head_dropout: dropout before a rebuilt head. Defaults to `0.0`.
        head_activation: activation of a rebuilt head; ``None`` keeps the old head's
            kind (logits stay logits, probabilities stay probabilities). Defaults to `None`.
        loss: overrides the loss chosen from the labels. Defaults to `None`.
        metrics: overrides the metrics (``["accuracy"]``-like). Defaults to `None`.
        monitor: quantity for early stopping and best-weights restore. Defaults to
            ``"val_loss"`` with validation data, else ``"loss"``.
        patience: epochs without improvement before a phase stops; ``None`` never stops
            early. Defaults to `5`.
        callbacks: extra Keras callbacks, passed to every phase. Defaults to `None`.
        prune: prune the weights by magnitude during the last phase and return the
            stripped model (zeros in its kernels): a target sparsity such as ``0.8``, or
            a dict of :func:`kerasft.pruning.pruning_plan` options (``target_sparsity``,
            ``end_fraction``, ``block_size``, ``sparsity_m_by_n``, ``layers``...). By
            default the largest layers that the phase trains, together holding 95% of
            their weights, are pruned (the head and small early layers stay dense),
            sparsity ramps up over the first 70% of the phase's steps, and the best
            weights are picked among the epochs at full sparsity. The result is recorded in
            ``result.extras["pruning"]``. Recipes ``"lp-ft"``, ``"full"`` and
            ``"head"`` only. Defaults to `None`.
        tensorboard: directory for TensorBoard event files: losses, metrics and learning
            rate per epoch, numbered across phases, and where each phase begins (see
            :class:`kerasft.tensorboard.TensorBoardLogger`). Defaults to `None`.
        checkpoint_dir: directory for resumable checkpoints (weights, optimizer state,
            epoch, finished phases, best weights), written every epoch. Calling
            ``finetune`` again with the same arguments after an interruption skips the
            finished phases and continues the interrupted one where it stopped. A
            directory written by a different call is refused. Defaults to `None`.
        cache_features: while the bottom of the network is frozen and deterministic
            and the input pipeline has no random ops, compute its outputs once and
            train only the layers above on them (same results, much faster head
            phases). ``"auto"`` caches where that is exact, ``False`` never, ``True``
            raises where it would change results (augmentation). See
            :mod:`kerasft.caching`. Defaults to `"auto"`.
        cache_budget: bytes of cached features kept in memory; more go to a
            ``tf.data`` cache file in a temporary directory. Defaults to 1 GiB.
        jit_compile: XLA-compile the training step: ``"auto"`` on GPU/TPU only (XLA
            was 7x slower on CPU), ``True`` or ``False``. Defaults to `"auto"`.
        mixed_precision: ``None`` (float32), ``True``/``"auto"`` (``mixed_float16``
            on GPU, ``mixed_bfloat16`` on TPU and bfloat16-capable CPUs), or a policy
            name. The output layer stays float32. Defaults to `None`.
        steps_per_execution: training steps per call into TensorFlow; ``"auto"``
            groups up to 32 when training on cached features. Defaults to `"auto"`.
        distribute: a ``tf.distribute`` strategy, or ``"auto"`` (multi-worker from
            ``TF_CONFIG``, TPU, several GPUs): the model is copied, compiled and trained
            under its scope; ``batch_size`` is the global batch (see
            :mod:`kerasft.distribute` on scaling rates). Defaults to `None`.
        seed: seed of the split, shuffling, new-head initialisation and dropout.
            Defaults to `0`.
        copy: fine-tune a copy, leaving ``model`` untouched. Defaults to `True`.
        safe_mode: when loading from a file, refuse Python code in it. Defaults to `True`.
        verbose: 0 silent, 1 progress bars and a line per phase, 2 a line per epoch.
            Defaults to `1`.

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        ValueError: bad option values, data that does not fit the model, labels out of
            range, a model without a Dense head, nothing left to train.
        TypeError: a subclassed model or data of an unsupported type.
        RuntimeError: the model would crash TensorFlow's oneDNN kernels (see README).
    """
    call_args = dict(locals())
    strategy = _distribute.resolve_strategy(distribute)
    if strategy is not None and isinstance(lr, str) and lr == "find":
        raise ValueError(
            f"Argument `lr='find'` cannot run under `distribute` ({type(strategy).__name__}): the "
            "LR finder trains on one device. HINT: run kerasft.lr_find without a strategy "
            "first and pass its suggestion as lr=."
        )
    if strategy is not None and not _distribute.in_scope(strategy):
        with strategy.scope():  # variables of the copy, the head and the optimizer
            return finetune(**dict(call_args, distribute=strategy))
    kind, recipe_phases = _strategies.normalize_recipe(recipe, RECIPES)
    for arg, value, low in (("head_epochs", head_epochs, 0), ("epochs", epochs, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"Argument `{arg}` must be an integer >= {low}. Received: {arg}={value!r}")
    for arg, value in (("lr", None if lr == "find" else lr), ("finetune_lr", finetune_lr)):
        if value is not None and (not isinstance(value, (int, float)) or not 0 < value < 10):
            raise ValueError(f"Argument `{arg}` must be a number in (0, 10). Received: {arg}={value!r}")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"Argument `warmup` must be a fraction in [0, 1). Received: warmup={warmup!r}")
    if patience is not None and (not isinstance(patience, int) or patience < 0):
        raise ValueError(f"Argument `patience` must be a non-negative int or None. Received: patience={patience!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(f"Argument `verbose` must be 0, 1 or 2. Received: verbose={verbose!r}")
    _strategies.check_options(
        kind=kind, lr_mult=lr_mult, layer_decay=layer_decay, l2sp=l2sp, clip_weights=clip_weights,
        use_ema=use_ema, reduce_on_plateau=reduce_on_plateau, unfreeze=unfreeze, callbacks=callbacks,
    )
    _speed.check_options(cache_features=cache_features, cache_budget=cache_budget, jit_compile=jit_compile,
                         mixed_precision=mixed_precision, steps_per_execution=steps_per_execution)
    prune_options = None
    if prune is not None:
        from kerasft import pruning as pruning_lib

        prune_options = pruning_lib._finetune_options(
            prune, recipe=kind, lr_mult=lr_mult, layer_decay=layer_decay, l2sp=l2sp,
            clip_weights=clip_weights, checkpoint_dir=checkpoint_dir,
        )
    if lr != "find" and finetune_lr is None:
        finetune_lr = lr / 10

    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, safe_mode=safe_mode)
        copy = False
    surgery.check_operable(model)
    keras.utils.set_random_seed(seed)
    head = surgery.find_head(model)
    old_activation = surgery.head_activation(model)

    prepared = data_lib.prepare_data(
        data, model=model, validation_data=validation_data, validation_split=validation_split,
        batch_size=batch_size, seed=seed, num_classes=num_classes, label_mode=label_mode,
        head_units=head.units,
    )
    spec = prepared.spec
    units = 1 if spec.label_mode == "binary" else spec.num_classes
    rebuild = new_head if new_head is not None else head.units != units
    if new_head is False and head.units != units:
        raise ValueError(
            f"Argument `new_head=False`, but the head {head.name!r} has {head.units} units and "
            f"the data has {spec.num_classes} classes ({spec.label_mode} labels). Pass "
            "new_head=None to rebuild it."
        )
    if copy and not rebuild:
        model = _copy(model)
        head = surgery.find_head(model)
    if rebuild:
        if head_activation is None:
            if old_activation == "linear":
                head_activation = "linear"
            else:
                head_activation = "sigmoid" if units == 1 else "softmax"
        if copy:
            model = _copy(model)
        model = surgery.replace_head(model, units, activation=head_activation,
                                     dropout=head_dropout, seed=seed)
        head = surgery.find_head(model)
    activation = surgery.head_activation(model)
    if from_logits is None:
        if activation not in ("linear", "softmax", "sigmoid"):
            raise ValueError(
                f"The head of model {model.name!r} has activation {activation!r}; kerasft cannot "
                "tell whether it outputs logits. Pass from_logits=True or False."
            )
        from_logits = activation == "linear"
    auto_loss, auto_metrics = _loss_and_metrics(spec.label_mode, from_logits)
    loss = loss if loss is not None else auto_loss
    has_val = prepared.validation is not None
    monitor = monitor or ("val_loss" if has_val else "loss")
    if monitor.startswith("val_") and not has_val:
        raise ValueError(
            f"Argument `monitor={monitor!r}` needs validation data, but validation_split=0 and "
            "no validation_data were given. Use monitor='loss' or give validation data."
        )

    _onednn.check_model(model, trains_body=kind != "head")
    if strategy is not None:
        _distribute.check_model_variables(model, strategy)
    speed = _speed.SpeedPlan(model, prepared, cache_features=cache_features, cache_budget=cache_budget,
                             jit_compile=jit_compile, mixed_precision=mixed_precision,
                             steps_per_execution=steps_per_execution, seed=seed,
                             distributed=strategy is not None, verbose=verbose)
    strategy_report = _strategies.regularize(model, head, bool(rebuild), l2sp, clip_weights)

    def make_optimizer(rate):
        return _make_optimizer(optimizer, rate, weight_decay, clipnorm, global_clipnorm, use_ema=use_ema)

    if lr == "find":
        found = _strategies.find_lr(model, head, prepared.train, loss=loss, kind=kind,
                                    train_bn=train_bn, make_optimizer=make_optimizer)
        strategy_report["lr_find"] = found
        lr = found.suggestions["valley"]
        finetune_lr = lr / 10 if finetune_lr is None else finetune_lr
        _log(verbose, f"kerasft: lr_find suggests lr {lr:.2e} (valley); finetune_lr {finetune_lr:.2e}")
    if kind == _strategies.GRADUAL:
        recipe_phases = _strategies.gradual_phases(model, head, head_epochs, epochs, layer_groups)
    best = _BestWeights(monitor)
    board = None
    if tensorboard is not None:
        from kerasft.tensorboard import TensorBoardLogger

        board = TensorBoardLogger(tensorboard)
    phases_plan = _plan(kind, head_epochs, epochs)
    prune_index = max((i for i, (_, e) in enumerate(phases_plan) if e > 0), default=None)
    pruning_run = None
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = _runstate.RunCheckpoint(checkpoint_dir, {
            "model": model.name, "params": int(model.count_params()), "recipe": str(recipe),
            "phases": [[p, e] for p, e in phases_plan], "lr": lr, "finetune_lr": finetune_lr,
            "batch_size": batch_size, "seed": seed, "n_train": prepared.n_train,
            "num_classes": spec.num_classes, "unfreeze": str(unfreeze), "optimizer": str(optimizer),
        })
        checkpoint.restore_best(best)
    nan_event = None
    results: list[PhaseResult] = []
    _log(verbose, f"kerasft: {prepared.n_train} training / {prepared.n_validation} validation examples, "
                  f"{spec.num_classes} classes ({spec.label_mode} labels); head "
                  f"{'rebuilt' if rebuild else 'kept'} ({head.name}, {units} units, "
                  f"{'logits' if from_logits else 'probabilities'})")
    for index, (phase, phase_epochs) in enumerate(phases_plan):
        if phase_epochs == 0:
            continue
        done = checkpoint.completed(index) if checkpoint is not None else None
        if done is not None:
            saved, weights = done
            model.set_weights(weights)
            results.append(PhaseResult(**saved["result"]))
            _log(verbose, f"kerasft phase {index + 1}/{len(phases_plan)} '{phase}': finished in an "
                          f"earlier run (checkpoint {checkpoint.directory})")
            continue
        if phase == "head":
            surgery.freeze(model)
            surgery.set_trainable(model, {_path_of(model, head): True})
            learning_rate: Any = lr
            peak = lr
        else:
            surgery.freeze(model)
            to_train = _body_selection(model, head, unfreeze if phase == "finetune" else "all")
            ids = {id(x) for x in to_train} | {id(head)}
            state = {p: (id(lyr) in ids) and (train_bn or not isinstance(lyr, keras.layers.BatchNormalization))
                     for p, lyr in surgery.iter_layers(model) if not surgery._is_container(lyr)}
            surgery.set_trainable(model, state)
            peak = finetune_lr if phase == "finetune" else lr
            learning_rate = _warmup_cosine(peak, phase_epochs * prepared.steps_per_epoch, warmup)
        if prune_options is not None and index == prune_index:
            pruning_run, first_full = pruning_lib._finetune_plan(
                model, prune_options, phase_epochs * prepared.steps_per_epoch,
                prepared.steps_per_epoch, head=head,
            )
            model = pruning_run.model
            best.restart(from_epoch=first_full)  # the result must have the target sparsity
        if phase in (_strategies.GRADUAL, _strategies.PHASES):
            stage = _strategies.gradual_stage(
                model, recipe_phases, lr=lr, finetune_lr=finetune_lr, lr_mult=lr_mult,
                layer_decay=layer_decay, total_epochs=phase_epochs,
                steps_per_epoch=prepared.steps_per_epoch, warmup=warmup, train_bn=train_bn,
                make_optimizer=make_optimizer, verbose=verbose,
            )
            strategy_report["phases"] = [dict(p, lr=r) for p, r in zip(recipe_phases, stage.rates)]
            peak = max(stage.rates)
        if not model.trainable_weights:
            raise ValueError(
                f"Nothing to train in phase {phase!r}: every weight of model {model.name!r} is "
                "frozen. HINT: check `unfreeze=` and that the head has weights."
            )
        if phase in (_strategies.GRADUAL, _strategies.PHASES):
            opt = stage.optimizer
        else:
            opt = _strategies.phase_optimizer(
                model, learning_rate, make_optimizer, spread=phase != "head", lr_mult=lr_mult,
                layer_decay=layer_decay, layer_groups=layer_groups,
            )
        pruned_next = prune_options is not None and prune_index == index + 1  # a new model then
        later = None if pruned_next else _next_phase_trainable(model, head, phases_plan, index, unfreeze, train_bn)
        setup = speed.setup_phase(model, index, cacheable=phase not in (_strategies.GRADUAL, _strategies.PHASES),
                                  later_trainable=later)
        setup.model.compile(optimizer=opt, loss=loss, metrics=list(metrics) if metrics else auto_metrics,
                            **setup.compile_kwargs)
        counts = surgery.count_params(model)
        _log(verbose, f"kerasft phase {index + 1}/{len(phases_plan)} '{phase}': {phase_epochs} epochs, "
                      f"lr {peak:g}{' (warmup+cosine)' if phase != 'head' else ''}, {counts}")
        best.phase = phase
        cbs: list[keras.callbacks.Callback] = [best]
        if pruning_run is not None:
            cbs[:0] = pruning_run.callbacks
        if use_ema:  # first: validation and `best` see the averaged weights
            from kerasft.callbacks import _SwapEMAWeights

            cbs.insert(0, _SwapEMAWeights(swap_on_epoch=True))
        if checkpoint is not None:
            resumed_at = checkpoint.in_progress(index)
            if resumed_at is not None:
                _log(verbose, f"kerasft: resuming phase '{phase}' after epoch {resumed_at} "
                              f"from {checkpoint.backup_dir(index)}")
            cbs.extend(checkpoint.callbacks(index, best))
        guard = _runstate.NaNGuard(phase)
        cbs.append(guard)
        gradual = phase in (_strategies.GRADUAL, _strategies.PHASES)
        if gradual:
            cbs.append(stage.callback)
        if patience is not None:
            cbs.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=patience,
                                                     mode="min" if "loss" in monitor else "max",
                                                     start_from_epoch=stage.start_from_epoch if gradual else best.from_epoch))
        plateau = _strategies.plateau_kwargs(reduce_on_plateau, monitor)
        if plateau is not None:
            from kerasft.callbacks import ReduceLROnPlateauScaled

            cbs.append(ReduceLROnPlateauScaled(**plateau))
        cbs.extend(callbacks or [])
        if board is not None:
            board.begin_phase(phase, epochs=phase_epochs, learning_rate=f"{peak:g}",
                              trainable_params=counts.trainable)
            cbs.append(board)
        speed.before_fit(setup)
        start = time.perf_counter()
        hist = setup.model.fit(setup.train, validation_data=setup.validation, epochs=phase_epochs,
                               callbacks=cbs, verbose=verbose, shuffle=False)
        seconds = time.perf_counter() - start
        best.restore(model)
        history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        if phase in (_strategies.GRADUAL, _strategies.PHASES):  # report the final trainable set
            counts = surgery.count_params(model)
        results.append(PhaseResult(phase, len(history.get("loss", [])), history, seconds,
                                   counts.trainable, float(peak), prepared.steps_per_epoch))
        if guard.event is not None:
            nan_event = dict(guard.event, learning_rate=float(peak))
            warnings.warn(
                f"kerasft: the loss became {guard.event['loss']} at step {guard.event['step']} of "
                f"epoch {guard.event['epoch']} in phase {phase!r} (peak learning rate {peak:g}). "
                "Training stopped and the last weights with a finite loss were restored; later "
                f"phases were skipped. HINT: try a lower learning rate (e.g. {peak / 10:g}), "
                "gradient clipping (global_clipnorm=1.0), or check the inputs for extreme values.",
                RuntimeWarning, stacklevel=2,
            )
            break
        if checkpoint is not None:
            checkpoint.finish_phase(index, {"result": dataclasses.asdict(results[-1])},
                                    model.get_weights())
    if board is not None:
        board.close()
    speed.close()
    if not results:
        raise ValueError(
            f"Arguments `head_epochs={head_epochs}` and `epochs={epochs}` leave nothing to train "
            f"for recipe={recipe!r}."
        )
    best.restore(model)
    if not getattr(model, "compiled", False):  # every phase was restored from checkpoint_dir
        model.compile(loss=loss, metrics=list(metrics) if metrics else auto_metrics)
    if pruning_run is not None:
        model, pruning_record = pruning_lib._finetune_finish(pruning_run, model)
        model.compile(loss=loss, metrics=list(metrics) if metrics else
                      _loss_and_metrics(spec.label_mode, from_logits)[1])
        strategy_report["pruning"] = pruning_record
        _log(verbose, f"kerasft: pruned {len(pruning_record['layers'])} layers to "
                      f"{pruning_record['sparsity']:.1%} sparsity; returning the stripped model")
    result = FinetuneResult(
        model=model, phases=results, monitor=monitor, best_score=best.best_value,
        best_phase=best.best_phase, num_classes=spec.num_classes, label_mode=spec.label_mode,
        head_rebuilt=bool(rebuild), batch_size=batch_size,
    )
    if nan_event is not None:
        result.extras["nan"] = nan_event
    result.extras.update(strategy_report)
    result.extras["speed"] = speed.report()
    if verbose:
        _log(verbose, f"kerasft: done; best {monitor} {result.best_score} in phase {result.best_phase!r}")
    return result


def _path_of(model: keras.Model, layer: keras.layers.Layer) -> str:
    for path, lyr in surgery.iter_layers(model):
        if lyr is layer:
            return path
    raise ValueError(f"Layer {layer.name!r} is not in model {model.name!r}.")


def _plan(recipe: str, head_epochs: int, epochs: int) -> list[tuple[str, int]]:
    if recipe == "lp-ft":
        return [("head", head_epochs), ("finetune", epochs)]
    if recipe == "head":
        return [("head", epochs)]
    if recipe == _strategies.GRADUAL:
        return [(_strategies.GRADUAL, head_epochs + epochs)]
    if recipe == _strategies.PHASES:
        return [(_strategies.PHASES, epochs)]
    return [("full", epochs)]
