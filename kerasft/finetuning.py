"""``kerasft.finetune``: fine-tune a pretrained classifier on new labelled data, in one call.

The default recipe, ``"auto"``, decides from the model and the data: a linear head fitted
to convergence on the frozen body's features (a linear probe), then a fine-tune from it
budgeted in optimizer steps at the model family's rate (BatchNormalization training,
so that its statistics follow the new data), the probe and the fine-tune compared on
held-out data where there is enough of it, and the winner trained again on all labels
when the data is small. The fixed recipes (``"lp-ft"``, the Keras transfer-learning
guide's and fastai ``fine_tune``'s; ``"full"``, ``"head"``, ``"gradual"``, LoRA) remain
one keyword away.

This module is the facade: :func:`finetune` takes the common options as flat keywords
and the rest as the configs of :mod:`kerasft.configs` (old flat keywords still work,
with a ``DeprecationWarning``), builds :class:`kerasft.engine.options.Options` from
them, prepares the run (model, data, task, plan) and hands it to the
:class:`kerasft.engine.runner.Runner` with the hooks the options ask for; :func:`plan`
stops before training and returns the plan.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

import keras

from kerasft.configs import (
    HeadConfig,
    LayerwiseConfig,
    LoraConfig,
    OptimizerConfig,
    RegularizationConfig,
    RunConfig,
    SpeedConfig,
    given_keywords,
    sort_keywords,
)
from kerasft.engine import prior
from kerasft.engine.auto import epochs_text
from kerasft.engine.defaults import default_hooks
from kerasft.engine.hooks import TargetScale
from kerasft.engine.loading import load_model
from kerasft.engine.options import Options
from kerasft.engine.plan import Plan
from kerasft.engine.result import FinetuneResult, PhaseResult
from kerasft.engine.runner import Runner, prepare_run
from kerasft.speed.distribute import resolve_strategy

__all__ = ["finetune", "plan", "FinetuneResult", "PhaseResult", "load_model"]


def finetune(
    model: keras.Model | str | os.PathLike,
    data: Any,
    *,
    recipe: str | Sequence[dict[str, Any]] | os.PathLike | None = None,
    epochs: int | None = None,
    head_epochs: int | None = None,
    lr: float | str | None = None,
    finetune_lr: float | None = None,
    unfreeze: str | int | float | None = None,
    batch_size: int | None = None,
    validation_data: Any = None,
    validation_split: float | None = None,
    optimizer: str | OptimizerConfig | None = None,
    monitor: str | None = None,
    patience: int | None = 5,
    reduce_on_plateau: bool | dict[str, Any] | None = None,
    class_weight: str | dict[int, float] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    seed: int = 0,
    verbose: int = 1,
    copy: bool = True,
    head: HeadConfig | None = None,
    layerwise: LayerwiseConfig | None = None,
    lora: LoraConfig | None = None,
    regularization: RegularizationConfig | None = None,
    speed: SpeedConfig | None = None,
    run: RunConfig | None = None,
    **legacy: Any,
) -> FinetuneResult:
    """Fine-tune a pretrained Keras classifier on new labelled data.

    The default recipe, ``"auto"``, decides from the model and the data (see
    :mod:`kerasft.engine.auto`; ``kerasft.plan`` prints what it decided and why): it fits
    the head in closed form on the frozen body's features (a converged linear probe,
    choosing a text backbone's pooling), then fine-tunes the whole network from there at
    the model family's rate for a budget counted in optimizer steps, scores the probe and
    every epoch on held-out data where there is enough of it, keeps the best, and trains
    the winner again on all labels when the data is small. BatchNormalization layers
    train during that fine-tune (their statistics follow the new data) unless
    ``layerwise=kerasft.LayerwiseConfig(train_bn=False)``. The other recipes
    (``"lp-ft"``, ``"full"``, ``"gradual"``...) run fixed phases with the defaults listed
    below.

    The options most runs set are flat keywords; the others come in one config object
    per concern (:mod:`kerasft.configs`), each checked when it is built and reusable
    across calls: ``head=`` :class:`~kerasft.HeadConfig` (task, labels, head, loss,
    metrics), ``layerwise=`` :class:`~kerasft.LayerwiseConfig` (layer-wise rates,
    warmup, BatchNormalization), ``lora=`` :class:`~kerasft.LoraConfig`,
    ``optimizer=`` :class:`~kerasft.OptimizerConfig` (weight decay, clipping, EMA),
    ``regularization=`` :class:`~kerasft.RegularizationConfig` (L2-SP, weight clipping,
    augmentation, pruning), ``speed=`` :class:`~kerasft.SpeedConfig` and ``run=``
    :class:`~kerasft.RunConfig` (TensorBoard, checkpoints, ``safe_mode``).

    Example:

    ```python
    import kerasft
    result = kerasft.finetune("saved_models/mnist_cnn.keras", (x, y))
    result.evaluate((x_test, y_test))
    lora = kerasft.finetune("saved_models/mnist_cnn.keras", (x, y), recipe="lp-lora",
                            lora=kerasft.LoraConfig(rank=4), epochs=3)
    ```

    Args:
        model: a Sequential or Functional Keras 3 model (a nested backbone is fine), or a
            path to a ``.keras``/``.h5`` file or SavedModel directory. A KerasHub
            ``CausalLM`` or a ``.gguf`` file gets supervised fine-tuning instead (see
            :func:`kerasft.llm.finetune_causal_lm`; ``recipe`` may be a ``kerasft.llm.SFTConfig``).
        data: ``(x, y)`` where ``x`` is an array, a tuple or dict of arrays (several
            inputs), raw strings (a model starting with ``TextVectorization``, or a KerasHub
            task with its preprocessor), integer token ids or variable-length sequences
            (padded); a pandas DataFrame (its label columns in
            ``HeadConfig(label_columns=...)``); a ``tf.data.Dataset`` of ``(x, y)``
            (batched or not, ``x`` a tensor, tuple or dict); or a tensorflow-datasets
            builder/split.
        recipe: ``"lp-ft"`` (head, then body), ``"full"`` (everything at once),
            ``"head"`` (linear probe), ``"gradual"`` (the head for ``head_epochs``, then
            the body's layer groups unfrozen top-down, evenly over ``epochs``, each
            phase at its own rate, in one ``fit`` so that optimizer state carries
            over), or an explicit phase schedule for ``epochs`` epochs: a list
            ``[{"layers": regex(es), "epoch": start, "lr": rate}, ...]`` or the path
            of a YAML/JSON file of one (see ``kerasft.unfreezing.load_phases``); or
            ``"lora"`` / ``"dora"`` (low-rank adapters beside the frozen pretrained
            weights, trained with the head at ``finetune_lr`` for ``epochs``; see
            ``lora``), ``"lp-lora"`` / ``"lp-dora"`` (the head first for ``head_epochs``
            at ``lr``, then the adapters); or ``"auto"``, which decides from the model
            and the data (above). Defaults to `None`: ``"auto"``, or ``"lp-ft"`` when
            ``head_epochs``, ``lr="find"`` or pruning is given (options of its phases).
        epochs: epochs of the fine-tuning phase (of the only phase for ``"full"``).
            Defaults to `None`: ``"auto"`` turns its step budget into epochs; `10` for
            the other recipes.
        head_epochs: epochs of a head phase trained by gradient (not ``"auto"``, whose
            head is fitted in closed form). Defaults to `None` (`5`).
        lr: learning rate of the head phase, or ``"find"`` to take the ``valley``
            suggestion of ``kerasft.lr_find`` (run with the head phase's trainable
            weights; the sweep is kept in ``result.lr_find``); for ``"auto"``, the
            fine-tune's peak rate. Defaults to `None`: ``"auto"`` picks the rate by model
            family and size; `1e-2` for the other recipes (higher than Keras's usual 1e-3
            because a new head on few examples gets few steps; docs/strategies.md).
        finetune_lr: peak learning rate after unfreezing. Defaults to ``lr / 10``.
        unfreeze: what the fine-tuning phase unfreezes: ``"all"``, the top N weighted
            layers (int), the top fraction of them (float), or a regex over layer paths.
            Defaults to `None`: ``"auto"`` unfreezes a transformer's top half of attention
            blocks and everything else entirely; ``"all"`` for the other recipes.
        batch_size: batch size (global, across replicas). Defaults to `None`: ``"auto"``
            takes a power of two in [8, 32] that gives about ten steps an epoch; `32` for
            the other recipes.
        validation_data: same forms as ``data``; when ``None``, ``validation_split`` of
            ``data`` is held out (seeded, stratified). Defaults to `None`.
        validation_split: held-out fraction when ``validation_data`` is ``None``; ``0``
            trains without validation (no early stopping). Defaults to `None`: decided by
            ``"auto"`` (none below 200 examples, 500 for a transformer, else 20%), `0.2`
            for the other recipes.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` or ``"rmsprop"``, or a
            :class:`~kerasft.OptimizerConfig` (weight decay, gradient clipping, EMA of
            the weights). Defaults to `None`: ``"auto"`` takes AdamW for transformers,
            Adam otherwise; ``"adam"`` for the other recipes.
        monitor: quantity for early stopping and best-weights restore. Defaults to
            ``"val_loss"`` with validation data, else ``"loss"``.
        patience: epochs without improvement before a phase stops; ``None`` never stops
            early. Defaults to `5`.
        reduce_on_plateau: lower the rate (scaling its schedule) when ``monitor``
            stalls: ``True`` (halve after 2 epochs) or a dict of
            ``kerasft.callbacks.ReduceLROnPlateauScaled`` arguments. Defaults to `None`.
        class_weight: ``"balanced"`` or ``{class id: weight}`` against class imbalance; for
            multi-label data, ``"balanced"`` weights each label's positives by its
            negatives/positives ratio. Defaults to `None`.
        callbacks: extra Keras callbacks, passed to every phase. Defaults to `None`.
        seed: seed of the split, shuffling, new-head initialisation and dropout.
            Defaults to `0`.
        verbose: 0 silent, 1 progress bars and a line per phase, 2 a line per epoch.
            Defaults to `1`.
        copy: fine-tune a copy, leaving ``model`` untouched. Defaults to `True`.
        head: a :class:`~kerasft.HeadConfig`: the task, number of classes, label mode
            and columns, the output to fine-tune, a rebuilt head's dropout and
            activation, loss, metrics, target standardization, multi-label thresholds,
            label smoothing. Defaults to `None` (all read off the labels and the head).
        layerwise: a :class:`~kerasft.LayerwiseConfig`: ``lr_mult``, ``layer_decay``,
            ``layer_groups``, ``train_bn``, ``warmup``. Defaults to `None` (one rate,
            10% warmup, the recipe's BatchNormalization mode).
        lora: a :class:`~kerasft.LoraConfig` for the LoRA/DoRA recipes: ``rank``,
            ``alpha``, ``dropout``, ``targets``, ``train``, ``quantize``. Defaults to
            `None` (rank 8 on the attention query/value projections, or the Dense and
            1x1 convolution layers below the head).
        regularization: a :class:`~kerasft.RegularizationConfig`: ``l2sp``,
            ``clip_weights``, ``augment``, ``prune``. Defaults to `None` (none).
        speed: a :class:`~kerasft.SpeedConfig`: feature caching, XLA, mixed
            precision, steps per execution, ``tf.distribute``, a shared feature store.
            Defaults to `None` (caching where exact; XLA and mixed precision on GPU/TPU
            only when asked).
        run: a :class:`~kerasft.RunConfig`: ``tensorboard``, ``checkpoint_dir``,
            ``safe_mode``. Defaults to `None`.
        **legacy: the flat keywords of earlier versions (``lora_rank=4``,
            ``label_smoothing=0.1``, ``tensorboard="runs"``...), each still accepted and
            gathered into its config with a ``DeprecationWarning`` naming the new
            spelling (:data:`kerasft.configs.LEGACY` lists them).

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        ValueError: bad option values, a setting given both as an old keyword and in its
            config, data that does not fit the model, labels out of range, a model
            without a Dense head, nothing left to train.
        TypeError: an unknown keyword, a subclassed model or data of an unsupported type.
        RuntimeError: the model would crash TensorFlow's oneDNN kernels (see docs/onednn.md).
    """
    flat, configs = sort_keywords(
        dict(
            recipe=recipe,
            epochs=epochs,
            head_epochs=head_epochs,
            lr=lr,
            finetune_lr=finetune_lr,
            unfreeze=unfreeze,
            batch_size=batch_size,
            validation_data=validation_data,
            validation_split=validation_split,
            optimizer=optimizer,
            monitor=monitor,
            patience=patience,
            reduce_on_plateau=reduce_on_plateau,
            class_weight=class_weight,
            callbacks=callbacks,
            seed=seed,
            verbose=verbose,
            copy=copy,
            head=head,
            layerwise=layerwise,
            lora=lora,
            regularization=regularization,
            speed=speed,
            run=run,
            **legacy,
        ),
        caller="finetune",
        deprecated=True,
    )
    if _is_causal_lm(model):  # supervised fine-tuning of a language model: see kerasft.llm
        from kerasft.llm.finetune import finetune_from_facade

        return finetune_from_facade(model, data, given_keywords(flat, configs))
    options = Options.build(flat, configs)
    strategy = resolve_strategy(options.speed.distribute)
    # The pretrained weights, for training a winner again on all labels (recipe="auto").
    original = (
        model.get_weights()
        if options.auto and not options.run.copy and isinstance(model, keras.Model)
        else None
    )
    # Under a strategy, the copy, the new head and the optimizers are created in its scope.
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        prepared = prepare_run(model, data, options)
        hooks = default_hooks(prepared.options, prepared.monitor, prepared.data.spec)
        result = Runner(prepared, hooks, strategy).run()
        if prepared.decision is not None and prepared.decision.refit:
            result = _refit(model, data, options, result, strategy, original)
    return _to_prior(result)


def _to_prior(result: FinetuneResult) -> FinetuneResult:
    """Shift the returned model to ``HeadConfig(class_prior=...)``, once, after any refit."""
    result.class_prior = prior.apply(result.model, result.spec, result.options)
    if result.class_prior is not None and result.options.run.verbose:
        print(
            "kerasft: head bias shifted from the labels' class proportions to class_prior "
            f"{[round(p, 4) for p in result.class_prior]}",
            flush=True,
        )
    return result


def _refit(
    model: Any,
    data: Any,
    options: Options,
    chosen: FinetuneResult,
    strategy: Any,
    original: list | None,
) -> FinetuneResult:
    """Train the winner of a holdout choice on all labels (``recipe="auto"`` on small data).

    A probe that won is fitted again as with no holdout: its features (the pooling) and
    L2 strength chosen by cross-validation on every label. A fine-tune that won after a
    whole schedule over half the budget (``decision.refit_epochs``) continues from the
    weights it won with, on every label, for the rest of the budget, when
    ``decision.refit_continues`` (a second warmup and schedule at the same rate and
    batch size, no probe: convolutional and dense networks without L2-SP,
    :func:`kerasft.engine.auto.continues_winner`); else it trains again for the whole
    budget. A fine-tune trained again, or one that won over the epochs given, starts
    from the pretrained weights (``original`` puts them back on a model trained in
    place) and the probe it started from, fitted again with the features and strength
    chosen before, at the same batch size.
    """
    epochs, score = _winning_epochs(chosen)
    whole = chosen.decision.refit_epochs if epochs else None
    continues = whole is not None and chosen.decision.refit_continues
    full = (max(1, whole - epochs) if continues else whole) if whole is not None else epochs
    checkpoint = options.run.checkpoint_dir
    refit = options.replace(
        # nothing is held out: a fixed budget, whose last weights are returned
        monitor=None
        if str(options.monitor.monitor or "").startswith("val_")
        else options.monitor.monitor,
        validation_split=0.0,
        epochs=full,
        batch_size=chosen.options.data.batch_size,
        checkpoint_dir=None if checkpoint is None else os.path.join(os.fspath(checkpoint), "refit"),
    )
    if continues:  # from the fine-tune's weights (a copy of them, unless copy=False)
        run = prepare_run(chosen.model, data, refit)
    else:
        if original is not None:  # trained in place by the choosing run
            model.set_weights(original)
        run = prepare_run(model, data, refit)
    won = f"won on the holdout ({chosen.monitor} {score:.4g}{_within_margin(chosen, score)})"
    if not epochs:
        what = (
            f"the probe {won}; trained again on all {run.data.n_train} labels (its pooling and "
            "L2 strength chosen again by cross-validation)"
        )
    elif continues:
        what = (
            f"the fine-tune after {epochs_text(epochs)} {won}; it continues on all "
            f"{run.data.n_train} labels for the rest of the budget, {epochs_text(full)} more "
            f"({whole} in all)"
        )
    else:
        budget = f" for the whole budget, {epochs_text(full)}" if whole is not None else ""
        what = (
            f"the fine-tune after {epochs_text(epochs)} {won}; trained again on all "
            f"{run.data.n_train} labels{budget}"
        )
    reason = f"refit: {what}"
    changes: dict[str, Any] = {"reasons": (*chosen.decision.reasons, reason)}
    if whole is not None:  # what the returned fine-tune trains
        changes.update(
            epochs=full,
            steps=full * run.data.steps_per_epoch,
            refit_epochs=None,
            refit_continues=False,
            continues=continues,
        )
    decision = dataclasses.replace(chosen.decision, **changes)
    # A fine-tune that continues has no probe in its plan and keeps the one it grew from;
    # one trained again grows from that probe fitted again. A probe that won is chosen
    # again, by cross-validation on every label: its pooling and strength on a fifth
    # more examples. Otherwise the plan already trains what won.
    if continues:
        run.replan(decision)
        run.probe = chosen.probe
        if run.task.spec.target_std is not None:  # the winner's head predicts in units
            TargetScale.unfold(run)
    else:
        run.decision = run.plan.decision = decision
        run.given_probe = chosen.probe if epochs else None
    run.log(f"kerasft: {reason}")
    refitted = Runner(run, default_hooks(run.options, run.monitor, run.data.spec), strategy).run()
    refitted.selection = chosen
    return refitted


def _within_margin(result: FinetuneResult, score: float) -> str:
    """The refit line's words when the probe's margin decided the choice, else ``""``.

    ``"; the probe's 0.975 was within the margin, 0.16"`` for accuracy; for a loss,
    ``"; the probe's 80.57 was within the margin: the fine-tune's was under 1.45 times it"``.
    """
    margin = getattr(result.decision, "probe_margin", 0.0)
    probe = next((p for p in result.phases if p.name == "probe"), None)
    if not margin or result.best_phase in (None, "probe") or probe is None:
        return ""
    value = (probe.history.get(result.monitor) or [None])[0]
    if value is None:
        return ""
    if result.decision.probe_margin_relative:  # of a loss: a fraction of the probe's
        if not value <= score:
            return ""
        return (
            f"; the probe's {value:.4g} was within the margin: the fine-tune's was under "
            f"{1 + margin:.2f} times it"
        )
    if not value >= score:
        return ""
    return f"; the probe's {value:.4g} was within the margin, {margin:.2g}"


def _winning_epochs(result: FinetuneResult) -> tuple[int, float]:
    """``(epochs of the fine-tune that won, its score)``; ``(0, score)`` when the probe won."""
    score = result.best_score if result.best_score is not None else float("nan")
    if result.best_phase in (None, "probe"):
        return 0, score
    phase = next(p for p in result.phases if p.name == result.best_phase)
    return phase.epochs, score


def plan(model: keras.Model | str | os.PathLike, data: Any, **keywords: Any) -> Plan:
    """What ``finetune(model, data, **keywords)`` would do, without training.

    The model is loaded or copied and the data checked as ``finetune`` does; the plan
    lists each phase (and each stage of a gradual recipe) with its epochs, the
    parameters it trains and its peak rate. ``model`` is left untouched.

    Example:

    ```python
    print(kerasft.plan("saved_models/mnist_cnn.keras", (x, y), recipe="gradual",
                       layerwise=kerasft.LayerwiseConfig(lr_mult=100)))
    ```

    Args:
        model: as for :func:`finetune`.
        data: as for :func:`finetune`.
        **keywords: any keyword of :func:`finetune`: flat ones, configs, or the old
            flat keywords (with the same ``DeprecationWarning``).

    Returns:
        A :class:`kerasft.engine.plan.Plan`; ``print`` it for a table.

    Raises:
        ValueError / TypeError: as :func:`finetune` would, before training.
    """
    flat, configs = sort_keywords(keywords, caller="plan", deprecated=True)
    if _is_causal_lm(model):
        from kerasft.llm.finetune import plan_from_facade

        return plan_from_facade(model, data, given_keywords(flat, configs))
    options = Options.build({**flat, "copy": True}, configs)
    return prepare_run(model, data, options).plan


def _is_causal_lm(model: Any) -> bool:
    """A KerasHub CausalLM or a llama.cpp ``.gguf`` path (KerasHub is not imported to find out)."""
    hub = sys.modules.get("keras_hub")
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model).endswith(".gguf")
    return hub is not None and isinstance(model, hub.models.CausalLM)
