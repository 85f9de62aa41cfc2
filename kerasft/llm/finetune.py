"""Supervised fine-tuning of a causal LM in one call: data in, a fine-tuned model out.

:func:`finetune_causal_lm` (what ``kerasft.finetune`` runs for a KerasHub ``CausalLM`` or
a ``.gguf`` path) tokenizes the data with the model's chat template and loss masks
(:mod:`kerasft.llm.sft`), packs it into rows, adds LoRA/DoRA adapters (optionally on an
int8 base) with :func:`kerasft.peft.apply_lora`, and trains the
:class:`~kerasft.llm.trainer.SFTModel` view of the model with AdamW, warmup and cosine
decay. Around ``fit``: the same progress lines as ``kerasft.finetune``, a NaN guard
(the first non-finite loss stops training and the last finite weights come back),
best weights on the validation loss when there is validation data, and resumable
checkpoints (``checkpoint_dir``). :func:`plan_sft` stops before training and returns
the :class:`SFTPlan`.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import os
import time
from typing import Any

import keras
import numpy as np

from kerasft._fileio import atomic_file
from kerasft.engine.result import NaNEvent
from kerasft.llm import sft
from kerasft.llm.options import SFTConfig, from_facade
from kerasft.llm.result import SFTResult
from kerasft.llm.trainer import SFTModel

__all__ = [
    "finetune_causal_lm",
    "plan_sft",
    "SFTPlan",
    "ALL_LINEAR",
    "is_causal_lm",
    "finetune_from_facade",
    "plan_from_facade",
]

# ``lora_targets="all-linear"`` (PEFT's name): every projection of the Llama-family blocks.
ALL_LINEAR = (
    "query",
    "key",
    "value",
    "attention_output",
    "feedforward_intermediate_dense",
    "feedforward_gate_dense",
    "feedforward_output_dense",
)


@dataclasses.dataclass
class SFTPlan:
    """What a supervised fine-tuning run will do, worked out before training.

    Attributes:
        examples, validation_examples: examples trained on / held out.
        kind: ``"pairs"``, ``"messages"`` or ``"text"``.
        rows, sequence_length, fill: training rows, their length, the share of positions
            holding a token (packing makes it close to 1).
        tokens, target_tokens: tokens per epoch, and those the loss is taken on.
        batch_size, gradient_accumulation, steps_per_epoch, epochs: the schedule
            (``steps_per_epoch`` counts batches; an update every ``gradient_accumulation``).
        recipe, trainable, total: what trains, and the parameter counts.
        options: the non-default options.
    """

    examples: int
    validation_examples: int
    kind: str
    rows: int
    sequence_length: int
    fill: float
    tokens: int
    target_tokens: int
    batch_size: int
    gradient_accumulation: int
    steps_per_epoch: int
    epochs: int
    recipe: str
    trainable: int
    total: int
    options: dict[str, Any]

    def __str__(self) -> str:
        packed = f"{self.rows} rows of {self.sequence_length} ({self.fill:.0%} filled)"
        lines = [
            f"kerasft SFT plan: {self.examples} examples ({self.kind}; {self.validation_examples} "
            f"held out) -> {packed}",
            f"  tokens/epoch {self.tokens:,}, loss on {self.target_tokens:,}; batch "
            f"{self.batch_size} rows x {self.gradient_accumulation} accumulated, "
            f"{self.steps_per_epoch} steps/epoch, {self.epochs} "
            f"epoch{'s' if self.epochs != 1 else ''}",
            f"  recipe {self.recipe!r}: {self.trainable:,} trainable of {self.total:,} parameters "
            f"({100 * self.trainable / max(1, self.total):.2f}%)",
        ]
        if self.options:
            lines.append(f"  options: {self.options}")
        return "\n".join(lines)


def is_causal_lm(model: Any) -> bool:
    """Whether ``model`` is a KerasHub ``CausalLM`` (checked without importing KerasHub)."""
    import sys

    hub = sys.modules.get("keras_hub")
    return hub is not None and isinstance(model, hub.models.CausalLM)


def _load(model: Any, config: SFTConfig) -> Any:
    """The causal LM to train: ``model`` (copied if asked), or one read from a .gguf/.keras path."""
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if path.endswith(".gguf"):
            from kerasft.llm.gguf import load_gguf

            return load_gguf(path)
        return keras.models.load_model(path)
    if not is_causal_lm(model):
        raise TypeError(
            "Argument `causal_lm` must be a KerasHub CausalLM (a Llama-family model such as the "
            f"one kerasft.llm.load_gguf returns) or a .gguf path. Received: {type(model).__name__}"
        )
    return copy_causal_lm(model) if config.copy else model


def copy_causal_lm(causal_lm: Any) -> Any:
    """A copy of a KerasHub causal LM with its own weights; the preprocessor is shared."""
    backbone = causal_lm.backbone
    twin = type(backbone).from_config(backbone.get_config())
    for new, old in zip(twin.weights, backbone.weights):
        new.assign(old)
    return type(causal_lm)(backbone=twin, preprocessor=causal_lm.preprocessor, name=causal_lm.name)


def _check_model(causal_lm: Any) -> Any:
    backbone = getattr(causal_lm, "backbone", None)
    missing = [
        a
        for a in ("token_embedding", "transformer_layers", "layer_norm")
        if not hasattr(backbone, a)
    ]
    if missing:
        raise TypeError(
            f"Argument `causal_lm`: the backbone {type(backbone).__name__} has no {missing}; "
            "kerasft trains Llama-family causal LMs (Llama, Mistral, Qwen, SmolLM...)."
        )
    tokenizer = getattr(getattr(causal_lm, "preprocessor", None), "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            f"Argument `causal_lm` ({type(causal_lm).__name__}) has no preprocessor with a "
            "tokenizer; supervised fine-tuning reads text. HINT: load the model with its "
            "preprocessor."
        )
    return tokenizer


def _template(causal_lm: Any, config: SFTConfig) -> str | None:
    from kerasft.llm.chat import chat_template_of

    return chat_template_of(causal_lm) if config.chat_template == "auto" else config.chat_template


@dataclasses.dataclass
class _Prepared:
    causal_lm: Any
    train: sft.PackedData
    validation: sft.PackedData | None
    plan: SFTPlan
    adapters: Any


def _split(examples: list[sft.Example], fraction: float, seed: int) -> tuple[list, list]:
    if not fraction:
        return examples, []
    order = np.random.default_rng(seed).permutation(len(examples))
    held = max(1, int(round(fraction * len(examples))))
    if held >= len(examples):
        raise ValueError(f"Argument `validation_split={fraction}` leaves no example to train on.")
    return [examples[i] for i in order[held:]], [examples[i] for i in order[:held]]


def _rows(
    examples: list[sft.Example], length: int, config: SFTConfig, pad_id: int
) -> sft.PackedData:
    if config.packing:
        return sft.pack(examples, length, pad_id=pad_id, seed=config.seed)
    return sft.pad(examples, length, pad_id=pad_id)


def _adapt(causal_lm: Any, config: SFTConfig) -> Any:
    """Add the recipe's adapters (or unfreeze all for ``"full"``); return the LoraResult or None."""
    if not config.adapters:
        causal_lm.trainable = True
        return None
    from kerasft import peft

    targets = ALL_LINEAR if config.lora_targets == "all-linear" else config.lora_targets
    # Keras's Model.quantize runs a full garbage collection for every layer it quantizes
    # (Layer.__delattr__): seconds each in a process holding a vocabulary and TF graphs.
    # Freezing the objects that exist already makes those collections cheap.
    gc.freeze()
    try:
        result = peft.apply_lora(
            causal_lm,
            rank=config.lora_rank,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            targets=targets,
            method=config.recipe,
            train=(),
            quantize=config.quantize,
        )
    finally:
        gc.unfreeze()
    if (
        result.model is not causal_lm
    ):  # a rebuilt graph would train weights the causal LM does not use
        raise ValueError(
            "Argument `lora_targets` selects layers that need adapter wrappers outside the "
            "transformer blocks; kerasft adapts causal LMs in place. HINT: target the blocks' "
            "projections (the default, or 'all-linear')."
        )
    return result


def _count(model: Any) -> tuple[int, int]:
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    return trainable, sum(int(np.prod(v.shape)) for v in model.weights)


def prepare_sft(model: Any, data: Any, config: SFTConfig) -> _Prepared:
    """Load or copy the model, tokenize and pack the data, add adapters, build the plan."""
    causal_lm = _load(model, config)
    tokenizer = _check_model(causal_lm)
    template = _template(causal_lm, config)
    limit = config.sequence_length + 1 if config.sequence_length else None
    kind, examples = sft.tokenize_examples(
        data, tokenizer, chat_template=template, loss_on=config.loss_on, max_length=limit
    )
    train, held = _split(examples, config.validation_split, config.seed)
    if config.validation_data is not None:
        _, held = sft.tokenize_examples(
            config.validation_data,
            tokenizer,
            chat_template=template,
            loss_on=config.loss_on,
            max_length=limit,
        )
    length = config.sequence_length or sft.auto_sequence_length(
        train + held, packing=config.packing
    )
    pad_id = int(tokenizer.pad_token_id or 0)
    rows = _rows(train, length, config, pad_id)
    validation = sft.pack(held, length, pad_id=pad_id) if held else None
    keras.utils.set_random_seed(config.seed)
    adapters = _adapt(causal_lm, config)
    trainable, total = _count(causal_lm)
    steps = math.ceil(len(rows.token_ids) / config.batch_size)
    plan = SFTPlan(
        examples=len(train),
        validation_examples=len(held),
        kind=kind,
        rows=len(rows.token_ids),
        sequence_length=length,
        fill=rows.fill,
        tokens=rows.tokens,
        target_tokens=rows.target_tokens,
        batch_size=config.batch_size,
        gradient_accumulation=config.gradient_accumulation,
        steps_per_epoch=steps,
        epochs=config.epochs,
        recipe=config.recipe,
        trainable=trainable,
        total=total,
        options=config.non_defaults(),
    )
    return _Prepared(causal_lm, rows, validation, plan, adapters)


def _optimizer(config: SFTConfig, total_steps: int) -> keras.optimizers.Optimizer:
    from kerasft.schedules import WarmupCosineDecay

    schedule = WarmupCosineDecay(
        config.lr,
        total_steps=max(1, total_steps),
        warmup_steps=int(round(config.warmup * total_steps)),
    )
    common = dict(
        learning_rate=schedule,
        global_clipnorm=config.global_clipnorm,
        gradient_accumulation_steps=config.gradient_accumulation
        if config.gradient_accumulation > 1
        else None,
    )
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(weight_decay=config.weight_decay, **common)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(**common)
    return keras.optimizers.SGD(momentum=0.9, **common)


class _Guard(keras.callbacks.Callback):
    """NaN guard and best weights: only the trainable variables are copied (adapters are small)."""

    def __init__(self, watch_validation: bool, peak_rate: float):
        super().__init__()
        self.watch_validation = watch_validation
        self.peak_rate = peak_rate
        self.event: NaNEvent | None = None
        self.best: float | None = None
        self._good: list[np.ndarray] | None = None
        self._best_weights: list[np.ndarray] | None = None
        self._epoch = 0

    def _weights(self) -> list[np.ndarray]:
        return [keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables]

    def _set(self, values: list[np.ndarray]) -> None:
        for v, value in zip(self.model.trainable_variables, values):
            v.assign(value)

    def on_train_begin(self, logs=None):
        self._good = self._weights()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if self.event is None and loss is not None and not math.isfinite(float(loss)):
            self.event = NaNEvent("sft", self._epoch + 1, batch + 1, float(loss), self.peak_rate)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.event is not None:
            return
        self._good = self._weights()
        value = (logs or {}).get("val_loss")
        if (
            self.watch_validation
            and value is not None
            and math.isfinite(value)
            and (self.best is None or value < self.best)
        ):
            self.best, self._best_weights = float(value), self._good

    def on_train_end(self, logs=None):
        if self.event is not None and self._good is not None:
            self._set(self._good)
        elif self._best_weights is not None:
            self._set(self._best_weights)


class _Checkpoint(keras.callbacks.Callback):
    """Trainable and optimizer variables and the history, written at the end of every epoch."""

    def __init__(self, directory: str, fingerprint: dict[str, Any]):
        super().__init__()
        self.directory = directory
        self.fingerprint = fingerprint
        self.history: dict[str, list[float]] = {}

    @property
    def _state(self) -> str:
        return os.path.join(self.directory, "sft_state.json")

    def restore(self, model: SFTModel) -> int:
        """Load the last epoch written, if any; return the number of epochs done."""
        if not os.path.exists(self._state):
            return 0
        with open(self._state) as f:
            state = json.load(f)
        if state["fingerprint"] != self.fingerprint:
            raise ValueError(
                f"Argument `checkpoint_dir={self.directory!r}` holds the checkpoint of a different "
                "call (other data, model or options). HINT: use a new directory, or delete this "
                "one."
            )
        with np.load(os.path.join(self.directory, "sft_weights.npz")) as f:
            arrays = [f[f"arr_{i}"] for i in range(len(f.files))]
        trainable = model.trainable_variables
        model.optimizer.build(trainable)
        for v, value in zip(list(trainable) + list(model.optimizer.variables), arrays):
            v.assign(value)
        self.history = state["history"]
        return int(state["epochs_done"])

    def on_epoch_end(self, epoch, logs=None):
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(float(v))
        arrays = [
            keras.ops.convert_to_numpy(v)
            for v in list(self.model.trainable_variables) + list(self.model.optimizer.variables)
        ]
        os.makedirs(self.directory, exist_ok=True)
        with atomic_file(os.path.join(self.directory, "sft_weights.npz")) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, *arrays)
        state = {"fingerprint": self.fingerprint, "epochs_done": epoch + 1, "history": self.history}
        with atomic_file(self._state) as tmp:
            with open(tmp, "w") as f:
                json.dump(state, f)


def _fingerprint(prepared: _Prepared, config: SFTConfig) -> dict[str, Any]:
    digest = hashlib.blake2b(
        prepared.train.token_ids.tobytes() + prepared.train.loss_weights.tobytes(), digest_size=12
    ).hexdigest()
    options = {k: repr(v) for k, v in config.non_defaults().items() if k != "checkpoint_dir"}
    return {"data": digest, "options": options, "parameters": prepared.plan.total}


def finetune_causal_lm(
    model: Any, data: Any, *, config: SFTConfig | None = None, **keywords: Any
) -> SFTResult:
    """Supervised fine-tuning of a causal LM: LoRA by default, loss on completions, packed rows.

    ``kerasft.finetune(causal_lm, data)`` calls this. The data are tokenized with the
    model's chat template (``(prompt, completion)`` pairs become a user and an assistant
    turn), the loss is taken on the completions / assistant turns only, and short
    examples are packed into rows of ``sequence_length`` tokens without attention from
    one to another. Adapters (rank 8 on the query/value projections of every block, on
    an int8 base with ``quantize="int8"``) train with AdamW, linear warmup and cosine
    decay; progress prints as ``kerasft.finetune``'s does.

    Example:

    ```python
    causal_lm = kerasft.llm.load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    pairs = [("Review: a joyless slog.\\nFresh or rotten?", "rotten"), ...]
    result = kerasft.finetune(causal_lm, pairs, epochs=3)
    result.evaluate(test_pairs, choices=["fresh", "rotten"]).accuracy
    result.export("reviews.Q8_0.gguf")
    ```

    Args:
        model: a KerasHub ``CausalLM`` with its preprocessor (Llama family), or the path
            of a ``.gguf`` / ``.keras`` file.
        data: ``(prompt, completion)`` pairs, conversations (lists of ``{"role",
            "content"}`` messages), plain strings, or a dict/DataFrame with
            ``prompt``/``completion``, ``messages`` or ``text`` columns.
        config: an :class:`~kerasft.llm.options.SFTConfig`; ``keywords`` override its
            fields. Defaults to `None` (the defaults).
        **keywords: any field of :class:`~kerasft.llm.options.SFTConfig`:
            ``recipe`` (``"lora"``, ``"dora"``, ``"full"``), ``epochs`` (3), ``lr`` (1e-3),
            ``warmup`` (0.1), ``batch_size`` (4 rows), ``gradient_accumulation`` (1),
            ``sequence_length`` (`None`: the longest example, at least 256 when packing),
            ``packing`` (`True`), ``loss_on`` (``"completion"`` or ``"all"``),
            ``chat_template`` (``"auto"``), ``remat`` (`False`), ``lora_rank`` (8),
            ``lora_alpha`` (`None`: scale 1), ``lora_dropout`` (0), ``lora_targets``
            (`None`: query/value; ``"all-linear"``; regexes), ``quantize`` (`None` or
            ``"int8"``), ``optimizer`` (``"adamw"``), ``weight_decay`` (0),
            ``global_clipnorm`` (1.0), ``validation_data``, ``validation_split`` (0),
            ``callbacks``, ``checkpoint_dir``, ``seed`` (0), ``copy`` (`True`), ``verbose`` (1).

    Returns:
        An :class:`~kerasft.llm.result.SFTResult`; ``result.model`` is the fine-tuned
        causal LM (adapters in place; :meth:`~SFTResult.export` merges them).

    Raises:
        TypeError: a model that is not a Llama-family KerasHub causal LM.
        ValueError: bad option values, data that cannot be read, a checkpoint
            directory written by a different call.
    """
    config = dataclasses.replace(config or SFTConfig(), **keywords)
    prepared = prepare_sft(model, data, config)
    return _train(prepared, config)


def plan_sft(model: Any, data: Any, *, config: SFTConfig | None = None, **keywords: Any) -> SFTPlan:
    """What :func:`finetune_causal_lm` would do, without training (the model is copied first).

    Returns:
        An :class:`SFTPlan`; ``print`` it.
    """
    config = dataclasses.replace(config or SFTConfig(), **{**keywords, "copy": True})
    return prepare_sft(model, data, config).plan


def _log(config: SFTConfig, message: str) -> None:
    if config.verbose:
        print(message, flush=True)


def _train(prepared: _Prepared, config: SFTConfig) -> SFTResult:
    plan, rows, causal_lm = prepared.plan, prepared.train, prepared.causal_lm
    _log(
        config,
        f"kerasft: {plan.examples} training / {plan.validation_examples} validation examples, "
        f"causal LM {causal_lm.name!r} ({plan.kind}, loss on {config.loss_on} tokens)",
    )
    _log(config, str(plan))
    trainer = SFTModel(causal_lm, remat=config.remat)
    trainer.compile(optimizer=_optimizer(config, plan.steps_per_epoch * plan.epochs))
    guard = _Guard(watch_validation=prepared.validation is not None, peak_rate=config.lr)
    callbacks = [guard, *(config.callbacks or [])]
    checkpoint, done = _resume(trainer, prepared, config)
    if checkpoint is not None:
        callbacks.append(checkpoint)
    validation = _validation_data(prepared)
    _log(config, _phase_line(plan, config))
    start = time.perf_counter()
    history, epochs_run = _fit(trainer, rows, validation, config, callbacks, done)
    seconds = time.perf_counter() - start
    if checkpoint is not None:
        history = checkpoint.history  # the epochs of earlier, interrupted calls too
    _log_outcome(config, guard, history)
    return SFTResult(
        model=causal_lm,
        plan=plan,
        history=history,
        seconds=seconds,
        epochs_run=epochs_run,
        tokens_per_second=rows.tokens * epochs_run / seconds if seconds and epochs_run else 0.0,
        best_val_loss=guard.best,
        nan=guard.event,
        adapters=prepared.adapters,
        config=config,
    )


def _resume(
    trainer: SFTModel, prepared: _Prepared, config: SFTConfig
) -> tuple[_Checkpoint | None, int]:
    """The checkpoint callback (``None`` without ``checkpoint_dir``) and the epochs done."""
    if config.checkpoint_dir is None:
        return None, 0
    checkpoint = _Checkpoint(os.fspath(config.checkpoint_dir), _fingerprint(prepared, config))
    done = checkpoint.restore(trainer)
    if done:
        _log(config, f"kerasft: resuming after epoch {done} from {config.checkpoint_dir}")
    return checkpoint, done


def _phase_line(plan: SFTPlan, config: SFTConfig) -> str:
    epochs = f"{config.epochs} epoch{'s' if config.epochs != 1 else ''}"
    return (
        f"kerasft phase 1/1 '{config.recipe}': {epochs}, lr {config.lr:g} (warmup+cosine), "
        f"{plan.trainable:,} trainable / {plan.total - plan.trainable:,} frozen / "
        f"{plan.total:,} total"
    )


def _validation_data(prepared: _Prepared) -> tuple | None:
    """``fit``'s ``validation_data``: inputs, targets and loss weights, or ``None``."""
    if prepared.validation is None:
        return None
    v = prepared.validation
    return (v.inputs(), v.target_ids, v.loss_weights)


def _fit(
    trainer: SFTModel,
    rows: sft.PackedData,
    validation: tuple | None,
    config: SFTConfig,
    callbacks: list,
    done: int,
) -> tuple[dict[str, list[float]], int]:
    """Train the epochs after ``done``: the history of this call and its epochs run."""
    if done >= config.epochs:
        return {}, 0
    fitted = trainer.fit(
        rows.inputs(),
        rows.target_ids,
        sample_weight=rows.loss_weights,
        batch_size=config.batch_size,
        epochs=config.epochs,
        initial_epoch=done,
        validation_data=validation,
        callbacks=callbacks,
        verbose=config.verbose,
        shuffle=True,
    )
    history = {k: [float(x) for x in values] for k, values in fitted.history.items()}
    return history, len(history.get("loss", []))


def _log_outcome(config: SFTConfig, guard: _Guard, history: dict[str, list[float]]) -> None:
    """Say how training ended: a non-finite loss if one stopped it, then the loss reached."""
    if guard.event is not None:
        _log(
            config,
            f"kerasft: stopped at a non-finite loss (epoch {guard.event.epoch}, "
            f"step {guard.event.step}); the last finite weights are kept",
        )
    final = history.get("loss", [float("nan")])[-1] if history.get("loss") else float("nan")
    best = guard.best
    outcome = f"best val_loss {best:.4f}" if best is not None else f"final loss {final:.4f}"
    _log(config, f"kerasft: done; {outcome}")


def finetune_from_facade(model: Any, data: Any, keywords: dict[str, Any]) -> SFTResult:
    """``kerasft.finetune`` on a causal LM: its keywords sorted into an :class:`SFTConfig`.

    ``keywords`` are the options the call set, under their flat names
    (:func:`kerasft.configs.given_keywords`: ``lora_rank``, not ``LoraConfig.rank``).
    ``recipe`` may be an :class:`SFTConfig` (the options ``kerasft.finetune`` has no
    keyword for); the other keywords override its fields.
    """
    config, rest = _facade_config(keywords)
    return finetune_causal_lm(model, data, config=config, **from_facade(rest, {}))


def plan_from_facade(model: Any, data: Any, keywords: dict[str, Any]) -> SFTPlan:
    """``kerasft.plan`` on a causal LM (see :func:`finetune_from_facade`)."""
    config, rest = _facade_config(keywords)
    return plan_sft(model, data, config=config, **from_facade(rest, {}))


def _facade_config(keywords: dict[str, Any]) -> tuple[SFTConfig | None, dict[str, Any]]:
    recipe = keywords.get("recipe")
    if isinstance(recipe, SFTConfig):
        return recipe, {k: v for k, v in keywords.items() if k != "recipe"}
    return None, keywords
