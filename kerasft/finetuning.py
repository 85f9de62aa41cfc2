"""``kerasft.finetune``: fine-tune a pretrained classifier on new labelled data, in one call.

The default recipe, ``"auto"``, decides from the model and the data: a linear head fitted
to convergence on the frozen body's features (a linear probe), then a fine-tune from it
budgeted in optimizer steps at the model family's rate (BatchNormalization training,
so that its statistics follow the new data), the probe and the fine-tune compared on
held-out data where there is enough of it, and the winner trained again on all labels
when the data is small. The fixed recipes (``"lp-ft"``, the Keras transfer-learning
guide's and fastai ``fine_tune``'s; ``"full"``, ``"head"``, ``"gradual"``, LoRA) remain
one keyword away.

This module is the facade: :func:`finetune` sorts its keywords into
:class:`kerasft.engine.options.Options`, prepares the run (model, data, task, plan) and
hands it to the :class:`kerasft.engine.runner.Runner` with the hooks the options ask
for; :func:`plan` stops before training and returns the plan.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

import keras

from kerasft.engine.hooks import default_hooks
from kerasft.engine.loading import load_model
from kerasft.engine.options import Options
from kerasft.engine.plan import Plan
from kerasft.engine.result import FinetuneResult, PhaseResult
from kerasft.engine.runner import Runner, prepare_run
from kerasft.speed.distribute import resolve_strategy

__all__ = ["finetune", "plan", "FinetuneResult", "PhaseResult", "load_model"]


def finetune(
    model: keras.Model | str,
    data: Any,
    *,
    validation_data: Any = None,
    validation_split: float | None = None,
    recipe: str | Sequence[dict[str, Any]] | os.PathLike | None = None,
    head_epochs: int | None = None,
    epochs: int | None = None,
    lr: float | str | None = None,
    finetune_lr: float | None = None,
    warmup: float | None = None,
    unfreeze: str | int | float | None = None,
    train_bn: bool | None = None,
    batch_size: int | None = None,
    optimizer: str | None = None,
    weight_decay: float | None = None,
    clipnorm: float | None = None,
    global_clipnorm: float | None = None,
    lr_mult: float | Sequence[float] | None = None,
    layer_decay: float | None = None,
    layer_groups: Any = None,
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    lora_dropout: float = 0.0,
    lora_targets: Any = None,
    lora_train: Sequence[str] = ("head",),
    quantize: str | None = None,
    l2sp: float | None = None,
    clip_weights: float | tuple[float, Any] | None = None,
    use_ema: bool = False,
    reduce_on_plateau: bool | dict[str, Any] | None = None,
    task: str = "auto",
    num_classes: int | None = None,
    label_mode: str | None = None,
    label_columns: str | Sequence[str] | None = None,
    head: str | None = None,
    class_weight: str | dict[int, float] | None = None,
    standardize_targets: bool = False,
    thresholds: str | Sequence[float] | None = "tune",
    label_smoothing: float = 0.0,
    augment: Any = None,
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
    feature_store: Any = None,
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

    The default recipe, ``"auto"``, decides from the model and the data (see
    :mod:`kerasft.engine.auto`; ``kerasft.plan`` prints what it decided and why): it fits
    the head in closed form on the frozen body's features (a converged linear probe,
    choosing a text backbone's pooling), then fine-tunes the whole network from there at
    the model family's rate for a budget counted in optimizer steps, scores the probe and
    every epoch on held-out data where there is enough of it, keeps the best, and trains
    the winner again on all labels when the data is small. BatchNormalization layers
    train during that fine-tune (their statistics follow the new data) unless
    ``train_bn=False``. The other recipes (``"lp-ft"``,
    ``"full"``, ``"gradual"``...) run fixed phases with the defaults listed below.

    Example:

    ```python
    import kerasft
    result = kerasft.finetune("saved_models/mnist_cnn.keras", (x, y))
    result.evaluate((x_test, y_test))
    ```

    Args:
        model: a Sequential or Functional Keras 3 model (a nested backbone is fine), or a
            path to a ``.keras``/``.h5`` file or SavedModel directory. A KerasHub
            ``CausalLM`` or a ``.gguf`` file gets supervised fine-tuning instead (see
            :func:`kerasft.llm.finetune_causal_lm`; ``recipe`` may be a ``kerasft.llm.SFTConfig``).
        data: ``(x, y)`` where ``x`` is an array, a tuple or dict of arrays (several
            inputs), raw strings (a model starting with ``TextVectorization``, or a KerasHub
            task with its preprocessor), integer token ids or variable-length sequences
            (padded); a pandas DataFrame with ``label_columns``; a ``tf.data.Dataset`` of
            ``(x, y)`` (batched or not, ``x`` a tensor, tuple or dict); or a
            tensorflow-datasets builder/split.
        validation_data: same forms; when ``None``, ``validation_split`` of ``data`` is
            held out (seeded, stratified). Defaults to `None`.
        validation_split: held-out fraction when ``validation_data`` is ``None``; ``0``
            trains without validation (no early stopping). Defaults to `None`: decided by
            ``"auto"`` (none below 200 examples, else 20%), `0.2` for the other recipes.
        recipe: ``"lp-ft"`` (head, then body), ``"full"`` (everything at once),
            ``"head"`` (linear probe), ``"gradual"`` (the head for ``head_epochs``, then
            the body's layer groups unfrozen top-down, evenly over ``epochs``, each
            phase at its own rate, in one ``fit`` so that optimizer state carries
            over), or an explicit phase schedule for ``epochs`` epochs: a list
            ``[{"layers": regex(es), "epoch": start, "lr": rate}, ...]`` or the path
            of a YAML/JSON file of one (see ``kerasft.unfreezing.load_phases``); or
            ``"lora"`` / ``"dora"`` (low-rank adapters beside the frozen pretrained weights,
            trained with the head at ``finetune_lr`` for ``epochs``), ``"lp-lora"`` /
            ``"lp-dora"`` (the head first for ``head_epochs`` at ``lr``, then the adapters);
            or ``"auto"``, which decides from the model and the data (above).
            Defaults to `None`: ``"auto"``, or ``"lp-ft"`` when ``head_epochs`` or
            ``lr="find"`` is given (options of its head phase).
        head_epochs: epochs of a head phase trained by gradient (not ``"auto"``, whose
            head is fitted in closed form). Defaults to `None` (`5`).
        epochs: epochs of the fine-tuning phase (of the only phase for ``"full"``).
            Defaults to `None`: ``"auto"`` turns its step budget into epochs; `10` for
            the other recipes.
        lr: learning rate of the head phase, or ``"find"`` to take the ``valley``
            suggestion of ``kerasft.lr_find`` (run with the head phase's trainable
            weights; the sweep is kept in ``result.lr_find``); for ``"auto"``, the
            fine-tune's peak rate. Defaults to `None`: ``"auto"`` picks the rate by model
            family and size; `1e-2` for the other recipes (higher than Keras's usual 1e-3
            because a new head on few examples gets few steps; docs/strategies.md).
        finetune_lr: peak learning rate after unfreezing. Defaults to ``lr / 10``.
        warmup: fraction of the fine-tuning steps spent warming up linearly.
            Defaults to `None` (`0.1`).
        unfreeze: what the fine-tuning phase unfreezes: ``"all"``, the top N weighted
            layers (int), the top fraction of them (float), or a regex over layer paths.
            Defaults to `None`: ``"auto"`` unfreezes a transformer's top half of attention
            blocks and everything else entirely; ``"all"`` for the other recipes.
        train_bn: let BatchNormalization layers train (batch statistics, updated moving
            averages) once unfrozen. Defaults to `None`: ``"auto"`` lets them train in its
            fine-tune; `False` (inference mode, as the Keras transfer-learning guide
            keeps them) for the other recipes.
        batch_size: batch size (global, across replicas). Defaults to `None`: ``"auto"``
            takes a power of two in [8, 32] that gives about ten steps an epoch; `32` for
            the other recipes.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` or ``"rmsprop"``. Defaults to `None`:
            ``"auto"`` takes AdamW for transformers, Adam otherwise; ``"adam"`` for the
            other recipes.
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
        lora_rank: rank of the low-rank adapters of the ``"lora"``/``"dora"`` recipes.
            Defaults to `8`.
        lora_alpha: adapter scale numerator (scale ``lora_alpha / lora_rank``); ``None``
            gives a scale of 1. Defaults to `None`.
        lora_dropout: dropout on the adapters' input. Defaults to `0.0`.
        lora_targets: layers that get adapters: regexes over layer paths or names, or
            layer classes; ``None`` picks the attention query/value projections of a
            transformer, else the Dense and 1x1 convolution layers below the head
            (see :func:`kerasft.peft.apply_lora`). Defaults to `None`.
        lora_train: layers trained in full beside the adapters (PEFT's
            ``modules_to_save``): ``"head"``, ``"norm"`` or path regexes. Defaults to `("head",)`.
        quantize: ``"int8"`` quantizes the frozen base under the adapters (QLoRA-style,
            Keras's ``Model.quantize``); LoRA recipes only. Defaults to `None`.
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
        task: ``"auto"`` reads it off the labels and the head (see :mod:`kerasft.data.labels`):
            ``"classification"`` (integer, one-hot or binary labels), ``"multilabel"`` (a 0/1
            label matrix: sigmoid head, binary cross-entropy) or ``"regression"`` (float
            targets: linear head, mean squared error; ``loss="huber"`` for Huber).
            Defaults to `"auto"`.
        num_classes: number of classes (labels, outputs); read off the labels by default.
            Defaults to `None`.
        label_mode: ``"sparse"``, ``"one_hot"``, ``"binary"``, ``"multi_hot"`` or
            ``"continuous"``; detected by default. Defaults to `None`.
        label_columns: the label column(s) when ``data`` is a pandas DataFrame; the other
            columns are the inputs (by name for a model with named inputs). Defaults to `None`.
        head: the output to fine-tune, for a model with several outputs (the returned model
            keeps that output only). Defaults to `None`.
        class_weight: ``"balanced"`` or ``{class id: weight}`` against class imbalance; for
            multi-label data, ``"balanced"`` weights each label's positives by its
            negatives/positives ratio. Defaults to `None`.
        standardize_targets: train a regression head on targets scaled to mean 0 and
            standard deviation 1; the scale is folded back into the head at the end (the
            model predicts in the targets' units) and kept on ``result.target_mean`` /
            ``target_std``. Defaults to `False`.
        thresholds: multi-label decision thresholds: ``"tune"`` picks per label the one
            that maximises F1 on the validation data, ``None`` keeps 0.5, or one value
            per label. Kept on ``result.thresholds`` and used by ``result.evaluate``.
            Defaults to `"tune"`.
        label_smoothing: smooth class labels by this much (Keras's ``label_smoothing``:
            one-hot targets become ``y * (1 - s) + s / num_classes``). Defaults to `0.0`.
        augment: augmentation of the training batches in the input pipeline (never in
            the exported model): ``None``, ``"light"``, ``"light+flip"``, ``"randaugment"``,
            ``"mixup"``, ``"cutmix"``, ``"feature_mixup"`` (MixUp of what the trainable
            layers take: cached features stay cached), or a list of Keras preprocessing
            layers. Input augmentation applies to images (see :mod:`kerasft.augment`).
            Defaults to `None`.
        from_logits: whether the head outputs logits; detected from its activation.
            Defaults to `None`.
        new_head: ``True`` always rebuilds the output layer, ``False`` never does (an
            error if the class count differs), ``None`` rebuilds it when the class count
            differs. Defaults to `None`.
        head_dropout: dropout before a rebuilt head. Defaults to `0.0`.
        head_activation: activation of a rebuilt head; ``None`` keeps the old head's
            kind (logits stay logits, probabilities stay probabilities). Defaults to `None`.
        loss: overrides the loss chosen from the labels; ``"focal"`` picks the focal
            cross-entropy that fits the labels (with ``class_weight`` as its per-class
            alpha). Defaults to `None`.
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
            ``result.pruning``. Recipes ``"lp-ft"``, ``"full"`` and
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
            :mod:`kerasft.speed.caching`. Defaults to `"auto"`.
        cache_budget: bytes of cached features kept in memory; more go to a
            ``tf.data`` cache file in a temporary directory. Defaults to 1 GiB.
        feature_store: a :class:`kerasft.speed.FeatureStore` shared by several calls:
            cached features are looked up there before they are computed (keyed by
            the frozen layers, their weights' values and the inputs' values), so calls
            on the same pretrained model and data compute them once. ``kerasft.search``
            gives one to all its trials. Defaults to `None`.
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
            :mod:`kerasft.speed.distribute` on scaling rates). Defaults to `None`.
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
        RuntimeError: the model would crash TensorFlow's oneDNN kernels (see docs/onednn.md).
    """
    if _is_causal_lm(model):  # supervised fine-tuning of a language model: see kerasft.llm
        from kerasft.llm.finetune import finetune_from_facade

        return finetune_from_facade(model, data, locals())
    options = Options.from_keywords(**{k: v for k, v in locals().items() if k not in ("model", "data")})
    strategy = resolve_strategy(options.speed.distribute)
    # The pretrained weights, for training a winner again on all labels (recipe="auto").
    original = model.get_weights() if options.auto and not options.run.copy and isinstance(model, keras.Model) else None
    # Under a strategy, the copy, the new head and the optimizers are created in its scope.
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        run = prepare_run(model, data, options)
        hooks = default_hooks(run.options, run.monitor, run.data.spec)
        result = Runner(run, hooks, strategy).run()
        if run.decision is None or not run.decision.refit:
            return result
        if original is not None:
            model.set_weights(original)
        return _refit(model, data, options, result, strategy)


def _refit(model: Any, data: Any, options: Options, chosen: FinetuneResult, strategy: Any) -> FinetuneResult:
    """Train the winner of a holdout choice again on all labels (``recipe="auto"`` on small data).

    The probe is fitted again on every example with the features and strength it chose
    (choosing them again could pick otherwise); the fine-tune, if it won, runs for the
    epochs that won, at the same batch size, with no holdout.
    """
    epochs, score = _winning_epochs(chosen)
    checkpoint = options.run.checkpoint_dir
    refit = options.replace(
        validation_split=0.0, epochs=epochs, batch_size=chosen.options.data.batch_size,
        checkpoint_dir=None if checkpoint is None else os.path.join(os.fspath(checkpoint), "refit"))
    run = prepare_run(model, data, refit)
    winner = "the probe" if epochs == 0 else f"the fine-tune after {epochs} epochs"
    reason = (f"refit: {winner} won on the holdout ({chosen.monitor} {score:.4g}); trained again on all "
              f"{run.data.n_train} labels")
    run.decision = dataclasses.replace(chosen.decision, reasons=(*chosen.decision.reasons, reason))
    run.plan.decision = run.decision
    run.given_probe = chosen.probe
    run.log(f"kerasft: {reason}")
    result = Runner(run, default_hooks(run.options, run.monitor, run.data.spec), strategy).run()
    result.selection = chosen
    return result


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
    print(kerasft.plan("saved_models/mnist_cnn.keras", (x, y), recipe="gradual"))
    ```

    Args:
        model: as for :func:`finetune`.
        data: as for :func:`finetune`.
        **keywords: any keyword of :func:`finetune`.

    Returns:
        A :class:`kerasft.engine.plan.Plan`; ``print`` it for a table.

    Raises:
        ValueError / TypeError: as :func:`finetune` would, before training.
    """
    if _is_causal_lm(model):
        from kerasft.llm.finetune import plan_from_facade

        return plan_from_facade(model, data, keywords)
    options = Options.from_keywords(**{**keywords, "copy": True})
    return prepare_run(model, data, options).plan


def _is_causal_lm(model: Any) -> bool:
    """A KerasHub CausalLM or a llama.cpp ``.gguf`` path (KerasHub is not imported to find out)."""
    hub = sys.modules.get("keras_hub")
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model).endswith(".gguf")
    return hub is not None and isinstance(model, hub.models.CausalLM)
