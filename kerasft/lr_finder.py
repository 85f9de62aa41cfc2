"""Learning-rate finder: a short training run at exponentially growing rates.

Leslie Smith's range test as fastai's ``lr_find`` does it: train one batch per rate
from ``start_lr`` to ``end_lr``, track the smoothed loss, stop once it diverges, then
suggest rates from the curve (``valley``, ``steep``, ``minimum``). The sweep runs on a
copy of the optimizer, and every model variable (weights, batch-norm statistics, dropout
seeds) is put back bit for bit afterwards, so calling it costs nothing but time.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import keras
import numpy as np

__all__ = ["LRFindResult", "lr_find", "suggest_learning_rates"]


class LRFindResult(NamedTuple):
    """What ``lr_find`` measured.

    Attributes:
        learning_rates: the rate of each step taken.
        losses: the smoothed (debiased exponential average) training loss after each step.
        suggestions: ``{"valley": ..., "steep": ..., "minimum": ...}`` learning rates.
        raw_losses: the loss of each batch, unsmoothed.
        plot_path: where the plot was saved, or ``None``.
    """

    learning_rates: np.ndarray
    losses: np.ndarray
    suggestions: dict[str, float]
    raw_losses: np.ndarray
    plot_path: str | None = None


def _valley(lrs: np.ndarray, losses: np.ndarray) -> int:
    """fastai's ``valley``: a point 1/2 of the way into the longest decreasing run.

    The longest run is found as a longest decreasing subsequence; the suggestion sits
    between its first and second thirds, where the loss falls fastest and reliably.
    """
    n = len(losses)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return min(max(max_start + int(sections) + int(sections / 2), 0), n - 1)


def suggest_learning_rates(learning_rates, losses) -> dict[str, float]:
    """Name rates from a loss-vs-rate curve, as fastai does.

    The first tenth and the last five points are dropped first (the start is noise,
    the end diverges), and so is everything from the first non-finite loss on.

    - ``valley``: inside the longest stretch where the loss keeps going down
      (fastai's default, usually the safest).
    - ``steep``: where the loss falls fastest per decade of rate.
    - ``minimum``: a tenth of the rate with the lowest loss.

    Example:

    >>> lrs = np.geomspace(1e-5, 1.0, 50)
    >>> losses = np.concatenate([np.linspace(2.0, 0.5, 40), np.linspace(0.6, 3.0, 10)])
    >>> s = suggest_learning_rates(lrs, losses)
    >>> sorted(s), bool(s["minimum"] == lrs[39] / 10)
    (['minimum', 'steep', 'valley'], True)

    Args:
        learning_rates: increasing rates, one per step.
        losses: (smoothed) loss at each rate.

    Returns:
        A dict with keys ``valley``, ``steep`` and ``minimum``.

    Raises:
        ValueError: when fewer than 3 finite points remain.
    """
    lrs = np.asarray(learning_rates, dtype="float64")
    losses = np.asarray(losses, dtype="float64")
    n = len(losses)
    lo, hi = n // 10, n - 5
    if hi - lo >= 3:
        lrs, losses = lrs[lo:hi], losses[lo:hi]
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
        lrs, losses = lrs[: bad[0]], losses[: bad[0]]
    if len(losses) < 3:
        raise ValueError(
            f"Too few finite losses ({len(losses)}) to suggest a learning rate. HINT: run "
            "lr_find with more steps or a smaller `start_lr`."
        )
    grads = np.diff(losses) / np.diff(np.log(lrs))
    return {
        "valley": float(lrs[_valley(lrs, losses)]),
        "steep": float(lrs[int(np.argmin(grads))]),
        "minimum": float(lrs[int(np.argmin(losses))] / 10),
    }


def _batches(data: Any, batch_size: int, seed: int):
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        return iter(data.repeat())
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        arrays = tuple(np.asarray(a) for a in data)
        if len({len(a) for a in arrays}) != 1:
            raise ValueError(
                "Argument `data` as arrays must have the same number of examples in each. "
                f"Received lengths: {[len(a) for a in arrays]}"
            )
        ds = tf.data.Dataset.from_tensor_slices(arrays)
        ds = ds.shuffle(len(arrays[0]), seed=seed, reshuffle_each_iteration=True)
        return iter(ds.batch(batch_size).repeat())
    raise TypeError(
        "Argument `data` must be a batched tf.data.Dataset of (x, y) or a tuple of arrays "
        f"(x, y) or (x, y, sample_weight). Received: {type(data).__name__}"
    )


def _sweep_optimizer(model: keras.Model, optimizer: Any, start_lr: float):
    """A fresh optimizer of the requested kind at a float, settable rate."""
    if optimizer is None:
        template = getattr(model, "optimizer", None)
        template = getattr(template, "inner_optimizer", template)
        if isinstance(template, keras.optimizers.MultiOptimizer):
            template = template.optimizers[0]
        if template is None:
            return keras.optimizers.Adam(learning_rate=start_lr)
    else:
        template = keras.optimizers.get(optimizer)
    config = dict(template.get_config(), learning_rate=start_lr, name="lr_find")
    return type(template).from_config(config)


def _check_arguments(
    model: Any,
    loss: Any,
    start_lr: Any,
    end_lr: Any,
    num_steps: Any,
    smoothing: Any,
    diverge_threshold: Any,
    plot: Any,
) -> None:
    """Refuse out-of-range sweep settings and a model the sweep cannot train."""
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"Argument `{name}` must be a finite number > 0. Received: {name}={value!r}"
            )
    if end_lr <= start_lr:
        raise ValueError(
            "Argument `end_lr` must be > `start_lr`. "
            f"Received: start_lr={start_lr}, end_lr={end_lr}"
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 10:
        raise ValueError(
            f"Argument `num_steps` must be an integer >= 10. Received: num_steps={num_steps!r}"
        )
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(
            f"Argument `smoothing` must be in [0, 1). Received: smoothing={smoothing!r}"
        )
    if diverge_threshold <= 1.0:
        raise ValueError(
            "Argument `diverge_threshold` must be > 1. "
            f"Received: diverge_threshold={diverge_threshold!r}"
        )
    if plot is not None and not os.fspath(plot).lower().endswith(".png"):
        raise ValueError(
            f"Argument `plot` must be a path ending in '.png'. Received: plot={plot!r}"
        )
    if not isinstance(model, keras.Model):
        raise TypeError(f"Argument `model` must be a keras.Model. Received: model={model!r}")
    if loss is None and not (getattr(model, "compiled", False) and getattr(model, "loss", None)):
        raise ValueError(
            f"Model {model.name!r} is not compiled with a loss, so lr_find cannot train it. "
            "HINT: pass loss=, e.g. lr_find(model, data, loss='sparse_categorical_crossentropy')."
        )


def _loss_function(model: keras.Model, loss: Any) -> Any:
    """``compute_loss(x, y, y_pred, sample_weight)`` for the sweep.

    ``loss`` plus the model's own losses when ``loss`` is given, else the compiled loss.
    """
    if loss is not None:
        loss_fn = keras.losses.get(loss)
        is_loss_object = isinstance(loss_fn, keras.losses.Loss)

        def compute_loss(x, y, y_pred, sw):
            if is_loss_object:
                value = loss_fn(y, y_pred, sample_weight=sw)
            else:
                # A function such as keras.losses.mean_squared_error takes no weights.
                per_example = loss_fn(y, y_pred)
                if sw is not None:
                    per_example = per_example * keras.ops.cast(sw, per_example.dtype)
                value = keras.ops.mean(per_example)
            return value + sum(model.losses) if model.losses else value
    else:

        def compute_loss(x, y, y_pred, sw):
            return model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sw, training=True)

    return compute_loss


def lr_find(
    model: keras.Model,
    data: Any,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    loss: Any = None,
    optimizer: Any = None,
    plot: str | os.PathLike | None = None,
    batch_size: int = 32,
    stop_div: bool = True,
    diverge_threshold: float = 4.0,
    smoothing: float = 0.98,
    seed: int = 0,
) -> LRFindResult:
    """Find a good learning rate with an exponential sweep, leaving the model unchanged.

    Step ``i`` trains one batch at ``start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))``.
    The loss is smoothed with a debiased exponential average (``smoothing``); with
    ``stop_div`` the sweep stops once the smoothed loss exceeds ``diverge_threshold``
    times its best or is not finite. Training uses a fresh optimizer of the kind the
    model was compiled with (Adam if none) and the compiled loss plus the model's own
    losses (regularizers); every model variable is restored afterwards and the model's
    own optimizer is never touched.

    Example:

    ```python
    result = kerasft.lr_find(model, train_ds, plot="lr_find.png")
    model.compile(keras.optimizers.Adam(result.suggestions["valley"]), loss)
    ```

    Args:
        model: the model; compiled, or give ``loss``.
        data: a batched ``tf.data.Dataset`` of ``(x, y)`` (repeated as needed) or
            arrays ``(x, y)`` / ``(x, y, sample_weight)``.
        start_lr: first rate. Defaults to `1e-7`.
        end_lr: last rate. Defaults to `10.0`.
        num_steps: batches in the sweep, at least 10. Defaults to `100`.
        loss: loss to use instead of the compiled one. Defaults to `None`.
        optimizer: optimizer (name, instance or config) to sweep with; its rate is
            overridden. Defaults to `None` (a copy of the model's).
        plot: path of a PNG of loss against rate with the suggestions. Defaults to `None`.
        batch_size: batch size when ``data`` are arrays. Defaults to `32`.
        stop_div: stop when the loss diverges. Defaults to `True`.
        diverge_threshold: divergence means smoothed loss > this times the best.
            Defaults to `4.0`.
        smoothing: weight of the past in the loss average, in ``[0, 1)``. Defaults to `0.98`.
        seed: shuffling seed when ``data`` are arrays. Defaults to `0`.

    Returns:
        An ``LRFindResult(learning_rates, losses, suggestions, raw_losses, plot_path)``.

    Raises:
        ValueError: for out-of-range arguments, an uncompiled model without ``loss``, a
            model with nothing to train, or too few finite losses to suggest a rate.
        TypeError: for ``data`` of another kind.
    """
    import tensorflow as tf

    _check_arguments(model, loss, start_lr, end_lr, num_steps, smoothing, diverge_threshold, plot)
    trainable = list(model.trainable_variables)
    if not trainable:
        raise ValueError(f"Model {model.name!r} has no trainable weights; nothing to sweep.")

    compute_loss = _loss_function(model, loss)
    sweep_opt = _sweep_optimizer(model, optimizer, float(start_lr))
    batches = _batches(data, batch_size, seed)

    @tf.function(reduce_retracing=True)
    def train_step(batch):
        x, y, sw = keras.utils.unpack_x_y_sample_weight(batch)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            value = compute_loss(x, y, y_pred, sw)
        grads = tape.gradient(value, trainable)
        sweep_opt.apply(grads, trainable)
        return value

    saved = [keras.ops.convert_to_numpy(v).copy() for v in model.variables]
    lrs, raw, smooth = [], [], []
    try:
        sweep_opt.build(trainable)
        avg, best = 0.0, math.inf
        ratio = end_lr / start_lr
        for i in range(num_steps):
            lr = start_lr * ratio ** (i / (num_steps - 1))
            sweep_opt.learning_rate = lr
            value = float(train_step(next(batches)))
            avg = smoothing * avg + (1 - smoothing) * value
            smoothed = avg / (1 - smoothing ** (i + 1))
            lrs.append(lr)
            raw.append(value)
            smooth.append(smoothed)
            if not math.isfinite(smoothed):
                break
            best = min(best, smoothed)
            if stop_div and smoothed > diverge_threshold * best:
                break
    finally:
        for v, value in zip(model.variables, saved):
            v.assign(value)

    lrs_a, smooth_a = np.asarray(lrs), np.asarray(smooth)
    suggestions = suggest_learning_rates(lrs_a, smooth_a)
    plot_path = None
    if plot is not None:
        from kerasft.plots import plot_lr_find

        plot_path = plot_lr_find(lrs_a, smooth_a, suggestions, os.fspath(plot))
    return LRFindResult(lrs_a, smooth_a, suggestions, np.asarray(raw), plot_path)
