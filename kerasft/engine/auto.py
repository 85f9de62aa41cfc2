"""``recipe="auto"``: what trains, how long, at which rate, decided from the model and the data.

A recipe of constants ("5 head epochs, then 10 more at 1e-3, batch 32, 20% held out")
is tuned to the data it was tried on. With 40 examples that is 2 optimizer steps an
epoch; with a transformer it is a CNN's learning rate. ``"auto"`` decides instead, from
what it reads off the model (its family, its size) and the data (examples, classes,
task), and writes down each decision and its reason in the plan:

1. **A converged linear probe first** (:mod:`kerasft.probe`): the head is fitted in
   closed form on the frozen body's features, its L2 strength chosen by 5-fold
   cross-validation (and, for a head kept from pretraining, whether the penalty pulls
   towards zero or towards that head); for a KerasHub text classifier the pooling of
   the token outputs (the ``[CLS]`` pooler or the masked mean) is chosen the same way.
   That is the LP of LP-FT, and the yardstick the fine-tune must beat.
2. **Then a fine-tune of the whole network from the probe**, at the family's rate (AdamW
   with layer-wise decay for transformers; Adam, scaled down with size, for
   convolutional networks; Adam for the rest), linear warmup and cosine decay, for a
   budget counted in optimizer steps (converted to epochs of the batch size that fits
   the data: at least about ten steps an epoch; a convolutional or dense network's
   covers at least 15 epochs, more than the steps above 640 training examples at batch
   32; a model with embeddings counts twice the steps, :data:`EMBEDDING_STEPS`, and a
   classifier with embeddings keeps its peak rate after the warmup, :func:`_schedule`,
   and starts from the probe's head with its kernel halved, :func:`_head_scale`). A
   convolutional network with :data:`SMALL_DATA` labelled examples or more
   trains at three times its rate: labels enough to move the body further. Given
   validation data, convolutional and dense networks try two rates, the family's and
   three times it, by successive halving: both train the first half of the budget, the
   better on the validation data trains the second half (1.5 times one fine-tune's
   steps). On a holdout of their own labels they keep the family's rate: a choice at half
   the budget on a few dozen held-out examples chose no better than either rate alone.
3. **Selection that the data can support.** From :data:`SMALL_DATA` examples up (a
   transformer: :data:`SMALL_DATA_TRANSFORMER`), 20% is held out (stratified); the
   probe and the fine-tune (its last epoch) are scored on it, and the better wins (so
   the result is never worse on validation than the probe). A convolutional network
   that trains at three times its rate, choosing on accuracy or on a mean squared error
   before a refit, keeps its fine-tune unless the probe is better by more than two
   standard errors (:func:`_probe_margin`): a holdout of a few dozen examples tells them
   apart by chance. So does a dense classifier with embeddings
   (:func:`_embeddings_fine_tune`).
   Below :data:`REFIT_LIMIT` examples the winner is then trained on all labels, since
   a fifth of a small data set is too much to leave out: the choosing run fine-tunes a
   whole schedule over half the budget, enough to say whether a fine-tune beats the
   probe; a probe that won is chosen again by cross-validation on all labels, and a
   fine-tune that won continues from its weights on all labels for the other half
   (a transformer's trains again for the whole budget: :func:`continues_winner`).
   Below :data:`SMALL_DATA` examples a validation set would hold a few dozen examples at
   most, too few to choose on (Perez et al., 2021): the probe is cross-validated, and
   the fine-tune trains on every label for the budget, with no selection, except for a
   dense network without embeddings classifying, which returns its probe alone
   (:func:`_probe_only`). A transformer's line is higher: its fine-tune that wins is
   trained again for the whole budget anyway, so below :data:`SMALL_DATA_TRANSFORMER`
   (a holdout under 100) the choosing run, a third of the call, is left out.
4. **Work sized to the data**: a KerasHub text task trains at the sequence length its
   texts need (the 98th percentile of their token counts), not the preprocessor's
   padding length, which is put back on the returned task.

Every value a user passes (``epochs=``, ``lr=``, ``batch_size=``, ``optimizer=``,
``validation_split=``...) overrides the decision for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from kerasft import _keras_compat as compat
from kerasft import layerwise, surgery

__all__ = [
    "ModelProfile",
    "AutoDecision",
    "profile_model",
    "decide",
    "auto_batch_size",
    "auto_validation_split",
    "needed_sequence_length",
    "SMALL_DATA",
    "SMALL_DATA_TRANSFORMER",
    "small_data",
    "REFIT_LIMIT",
    "continues_winner",
]

# Fewer examples than this: no holdout to choose on (a 20% split would hold < 40).
SMALL_DATA = 200
# A transformer's line instead (a 20% split would hold < 100). Its choosing run is a
# third of the call, and a winning fine-tune trains again for the whole budget
# (continues_winner), which is what it trains outright with nothing held out: MiniLM on
# 400 Rotten Tomatoes labels (rt400, dev, seeds 0-2) scored the same to the last digit,
# 72.60/71.60/70.60, in 0.58 of the time (66-68 s against 111-118 s). For convolutional
# and dense networks the same line won on dev cases drawn for it and lost on the held-out
# ones (docs/finetune.md), so theirs stays at SMALL_DATA.
SMALL_DATA_TRANSFORMER = 500
# Fewer than this (and a holdout was used): train the winner again on all labels. At
# 2,400-4,000 labels a fifth kept out cost about a point (diamonds_dg_2400, dev: seeds
# 0-2 47.10/47.60/48.20 keeping it, 47.40/48.95/48.60 refitting, with the dense floor
# below); from 5,000 up the holdout is left out, untried. MiniLM on 2,400 Rotten Tomatoes
# labels: 77.0/78.8 refitting against 76.9/78.6 keeping it (seeds 0-1), in 1.54 times the time.
REFIT_LIMIT = 5000
# Fewer labels than this: a CNN regressor's fine-tune starts from a head drawn afresh
# (_fresh_head).
FRESH_HEAD_LIMIT = 500
# Fine-tuning budgets in optimizer steps, and the epochs they may span, per family.
# (Budgets and rates come from the dev cases of benchmarks/matrix.py; docs/matrix.md.)
# A convolutional or dense network sees its data at least 15 times. With 2,500 labels
# (fashion04_59_500, dev) 300 steps is 5 epochs: seeds 0-2 scored 95.10/95.65/95.75 there,
# 96.60/96.80/96.85 at 15 epochs (seed 0 at 30: 96.95), a plain 30-epoch fit
# 96.75/96.30/96.70; held-out mnist_fashion300 went from 80.65/81.50/81.70 to
# 85.05/86.00/84.60 (plain fit30: 85.55/84.10/84.70). The same floor for a dense
# network (5 epochs before) gained nothing alone on diamonds_dg_2400 (dev) and 0.7 a
# seed with the refit there (REFIT_LIMIT); held-out, the GloVe model went from
# 66.20/66.60/67.30 to 67.00/67.50/68.80 on 1,000 labels, and, with the refit, from
# 70.50/69.70/70.10 to 72.40/73.10/73.00 on 4,000.
_BUDGET = {"transformer": (60, 3, 5), "cnn": (300, 15, 30), "mlp": (300, 15, 30)}
# A dense network with embeddings gets twice the steps: a step moves only the vectors of
# the words in its batch. The GloVe bag-of-words model (2-core AMD EPYC VM, seeds 0-2):
# 20 Newsgroups 40 a class (dev) 47.6/45.5/48.9 -> 51.2/49.6/51.9 (plain 30-epoch fit
# 54.7/53.1/51.6); held out, R8 40 a class 92.0/91.8/91.3 -> 92.4/92.6/91.7, R8 100 a
# class 93.9/93.5/93.7 -> 94.5/93.8/94.2, and 20 Newsgroups 100 a class, Rotten Tomatoes
# 2,000 and 4,000 unchanged (15 epochs were more steps already). At least 30 epochs
# instead lost 1.5 a seed on Rotten Tomatoes 4,000 in twice the time.
EMBEDDING_STEPS = 600
# A classifier with embeddings starts its fine-tune from the probe's head with the kernel
# times this, its bias kept (_head_scale).
EMBEDDING_HEAD_SCALE = 0.5
_RATE = {"transformer": 1e-4, "cnn": 3e-4, "mlp": 1e-3}
_LAYER_DECAY = {"transformer": 0.9}
_WEIGHT_DECAY = {"transformer": 0.01}
_OPTIMIZER = {"transformer": "adamw", "cnn": "adam", "mlp": "adam"}
# CNN rates fall with size: 3e-4 up to 2M parameters, then as 1/sqrt(parameters).
_CNN_REFERENCE_PARAMS = 2_000_000
# Given validation data, convolutional and dense networks also try this multiple of
# their rate (successive halving): a target far from the pretraining data wants the
# body to move further than a near one does, and the data say which case this is. A
# convolutional network with SMALL_DATA labelled examples or more trains at it outright.
_HOT = 3.0
_TEXT_LENGTH_QUANTILE = 98


@dataclass(frozen=True)
class ModelProfile:
    """What ``auto`` reads off a model.

    Attributes:
        family: ``"transformer"`` (attention blocks: KerasHub backbones, ViTs),
            ``"cnn"`` (convolutions) or ``"mlp"`` (dense layers, embeddings).
        params: all parameters.
        blocks: layer groups with weights below the head (transformer blocks, conv stages).
        keras_hub: whether the model is a KerasHub task.
        text: whether it is a KerasHub text classifier (its pooling can be chosen).
        top_blocks: for a transformer, a regex over layer paths selecting its top half of
            attention blocks and every layer above them; else ``None``.
        attention_blocks: the number of attention blocks.
        batch_norm: whether it has BatchNormalization layers.
        embeddings: whether it has ``Embedding`` layers (token vectors, as a bag-of-words
            text model has).
    """

    family: str
    params: int
    blocks: int
    keras_hub: bool = False
    text: bool = False
    top_blocks: str | None = None
    attention_blocks: int = 0
    batch_norm: bool = True
    embeddings: bool = False

    def describe(self) -> str:
        blocks = f"{self.blocks} block{'s' if self.blocks != 1 else ''}"
        return f"{_KINDS[self.family]} of {self.params:,} parameters in {blocks}"


_KINDS = {
    "transformer": "a transformer",
    "cnn": "a convolutional network",
    "mlp": "a dense network",
}
_CONVOLUTIONS = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
)


def _is_attention(layer: Any) -> bool:
    return isinstance(layer, keras.layers.MultiHeadAttention) or (
        type(layer).__module__.startswith("keras_hub") and "Attention" in type(layer).__name__
    )


def profile_model(model: keras.Model, head: keras.layers.Layer) -> ModelProfile:
    """The family, size and depth of ``model`` (whose classifier is ``head``)."""
    from kerasft.engine.task import is_keras_hub_task
    from kerasft.pooling import is_text_task

    layers = compat.flatten_layers(model)
    if any(_is_attention(lyr) for lyr in layers):
        family = "transformer"
    elif any(isinstance(lyr, _CONVOLUTIONS) for lyr in layers):
        family = "cnn"
    else:
        family = "mlp"
    groups = [g for g in layerwise.layer_groups(model) if not any(lyr is head for lyr in g[1])]
    blocks = sum(1 for _, members in groups if any(lyr.weights for lyr in members))
    top, attention = _top_attention_blocks(model, groups) if family == "transformer" else (None, 0)
    return ModelProfile(
        family,
        surgery.count_params(model).total,
        blocks,
        is_keras_hub_task(model),
        is_text_task(model),
        top,
        attention,
        any(isinstance(lyr, keras.layers.BatchNormalization) for lyr in layers),
        any(isinstance(lyr, keras.layers.Embedding) for lyr in layers),
    )


def _top_attention_blocks(model: keras.Model, groups: list) -> tuple[str | None, int]:
    """A regex for the top half of the attention blocks and every leaf layer after them."""
    import re

    attention = [
        members
        for _, members in groups
        if any(_is_attention(part) for lyr in members for part in compat.flatten_layers(lyr))
    ]
    if len(attention) < 2:
        return None, len(attention)
    first = attention[len(attention) - math.ceil(len(attention) / 2)][0]
    leaves = surgery.leaf_layers(model)
    start = next(i for i, (_, lyr) in enumerate(leaves) if lyr is first)
    paths = [re.escape(path) for path, lyr in leaves[start:] if lyr.weights]
    return "(^|/)(" + "|".join(paths) + ")$", len(attention)


# ------------------------------------------------------------------------------ data sizes


def small_data(family: str | None) -> int:
    """The fewest labelled examples from which ``auto`` holds a fifth out to choose on."""
    return SMALL_DATA_TRANSFORMER if family == "transformer" else SMALL_DATA


def auto_validation_split(n: int | None, family: str | None = None) -> float:
    """The fraction held out: none below :func:`small_data` examples, else 20% (10% from 10,000)."""
    if n is None:
        return 0.2
    if n < small_data(family):
        return 0.0
    return 0.2 if n < 10_000 else 0.1


def auto_batch_size(n_train: int | None) -> int:
    """A batch that gives about ten steps an epoch or more: a power of two in [8, 32]."""
    if n_train is None:
        return 32
    return int(min(32, max(8, 2 ** math.floor(math.log2(max(n_train / 10, 1))))))


def needed_sequence_length(
    preprocessor: Any, texts: Any, *, sample: int = 2000, seed: int = 0
) -> int | None:
    """The sequence length that holds the 98th percentile of ``texts``' token counts.

    Counted with ``preprocessor``'s own tokenizer on up to ``sample`` texts, plus the
    special tokens, rounded up to a multiple of 16 and never above the preprocessor's
    ``sequence_length``; ``None`` when that cannot be read (non-string inputs, another
    kind of preprocessor).
    """
    tokenizer = getattr(preprocessor, "tokenizer", None)
    limit = getattr(preprocessor, "sequence_length", None)
    if tokenizer is None or not isinstance(limit, int):
        return None
    values = texts if not isinstance(texts, dict) else next(iter(texts.values()))
    array = np.asarray(values)
    if array.ndim != 1 or array.dtype.kind not in "USO" or len(array) == 0:
        return None
    if len(array) > sample:
        array = array[np.random.default_rng(seed).choice(len(array), sample, replace=False)]
    try:
        ids = tokenizer([str(t) for t in array])
        counts = np.asarray(
            [len(row) for row in (ids.to_list() if hasattr(ids, "to_list") else ids)]
        )
    except (
        Exception
    ):  # a tokenizer that does not take a list of strings: keep the preprocessor's length
        return None
    needed = int(np.percentile(counts, _TEXT_LENGTH_QUANTILE)) + 2  # [CLS] and [SEP]
    return int(min(limit, max(16, 16 * math.ceil(needed / 16))))


# -------------------------------------------------------------------------------- decision


@dataclass(frozen=True)
class AutoDecision:
    """What ``recipe="auto"`` decided for one model and data set, and why.

    Attributes:
        profile: the :class:`ModelProfile`.
        n_examples: labelled examples given (training and held out).
        selection: ``"none"`` (small data: cross-validated probe, fixed fine-tune),
            ``"holdout, then refit"``, ``"holdout"`` or ``"validation data"``.
        optimizer, rate, layer_decay, weight_decay, warmup: the fine-tune's optimizer.
        epochs: fine-tuning epochs; ``steps`` the optimizer steps they make.
        refit_epochs: when the winner is trained on all labels, the whole budget, of
            which the choosing run's fine-tune trained ``epochs``, a whole schedule over
            half of it; else ``None``.
        refit_continues: with ``refit_epochs``, whether a fine-tune that wins continues
            on all labels for the rest of the budget (:func:`continues_winner`) or
            trains again for all of it.
        continues: the refit of a fine-tune that won such a choice: it continues from
            the weights that won, on all labels, for ``epochs`` more (the rest of the
            budget), with no probe before.
        batch_size: the batch size.
        candidates: other peak rates tried beside ``rate`` by successive halving on the
            validation data given (each trains the first half of the budget; the better
            continues).
        unfreeze: what the fine-tune trains (``"all"``, or a regex over layer paths).
        train_bn: whether BatchNormalization layers train in the fine-tune.
        sequence_length: the length text is trained at (``None``: the preprocessor's).
        reasons: one line per decision, for the plan.
        probe_margin: by how much the probe must beat the fine-tune on the holdout to
            win (:func:`_probe_margin`); 0: the better wins.
        probe_margin_relative: whether ``probe_margin`` is a fraction of the probe's
            holdout loss (a mean squared error) rather than points of accuracy.
        fresh_head: whether the fine-tune after the probe starts from a head drawn afresh
            (its bias at the targets' mean) rather than from the probe's (:func:`_fresh_head`);
            the probe stays a candidate.
        schedule: the fine-tune's schedule after its warmup: ``"warmup_cosine"`` (decay
            to zero) or ``"warmup_constant"`` (the peak to the end, :func:`_schedule`).
        head_scale: the fine-tune after the probe starts from the probe's head with its
            kernel times this, its bias kept (:func:`_head_scale`); 1: the probe's head.
    """

    profile: ModelProfile
    n_examples: int
    selection: str
    optimizer: str
    rate: float
    layer_decay: float | None
    weight_decay: float | None
    warmup: float
    epochs: int
    steps: int
    batch_size: int
    unfreeze: Any = "all"
    sequence_length: int | None = None
    reasons: tuple[str, ...] = field(default=())
    train_bn: bool = True
    candidates: tuple[float, ...] = ()
    refit_epochs: int | None = None
    refit_continues: bool = False
    continues: bool = False
    probe_margin: float = 0.0
    probe_margin_relative: bool = False
    fresh_head: bool = False
    schedule: str = "warmup_cosine"
    head_scale: float = 1.0

    @property
    def refit(self) -> bool:
        return self.selection == "holdout, then refit"

    def describe(self) -> list[str]:
        """The plan's and the summary's lines: a heading, then one line per reason."""
        return ["recipe='auto' decided:", *(f"  - {reason}" for reason in self.reasons)]


def _selection(
    n_examples: int, n_train: int, given_validation: bool, family: str
) -> tuple[str, str]:
    """How the probe and the fine-tune are chosen between, and the plan's line for it."""
    if given_validation:
        selection = "validation data"
        why = (
            "selection: the probe and the fine-tune (its last epoch) are scored on the "
            "validation data given"
        )
    elif n_train == n_examples:
        selection = "none"
        why = (
            f"selection: none; {n_examples} examples are too few to hold some out and choose on "
            f"(< {small_data(family)}): the probe is cross-validated"
        )
    elif n_examples < REFIT_LIMIT:
        selection = "holdout, then refit"
        why = (
            f"selection: {n_examples - n_train} held out to choose between the probe and the "
            "fine-tune (its last epoch); the winner is then trained again on all labels"
        )
    else:
        selection = "holdout"
        why = (
            f"selection: {n_examples - n_train} held out to choose between the probe and the "
            "fine-tune (its last epoch); kept out: with this much data the holdout costs little"
        )
    return selection, why


def _budget(
    family: str,
    steps_per_epoch: int,
    batch_size: int,
    given: int | None,
    embeddings: bool = False,
) -> tuple[int, str]:
    """Fine-tuning epochs (the family's step budget, or as given), and the plan's line.

    A dense network with embeddings counts :data:`EMBEDDING_STEPS` steps.
    """
    target, low, high = _BUDGET[family]
    kind = _KINDS[family]
    if embeddings and family == "mlp":
        target, kind = EMBEDDING_STEPS, "a model with embeddings"
    epochs = int(min(high, max(low, round(target / steps_per_epoch))))
    if given is not None:
        epochs = int(given)
        why = f"budget: {epochs_text(epochs)} as given ({epochs * steps_per_epoch} steps)"
    elif epochs == low and low * steps_per_epoch > target:
        why = (
            f"budget: {epochs_text(epochs)} of {steps_per_epoch} steps at batch {batch_size}: "
            f"{kind} sees its data at least {low} times, more than about {target} "
            "optimizer steps"
        )
    else:
        why = (
            f"budget: about {target} optimizer steps for {kind}: "
            f"{epochs_text(epochs)} of {steps_per_epoch} steps at batch {batch_size}"
        )
    return epochs, why


def epochs_text(n: int) -> str:
    """``"1 epoch"``, ``"15 epochs"``: how the plan's lines count epochs."""
    return f"{n} epoch{'s' if n != 1 else ''}"


def _cnn_rate(params: int) -> float:
    return _RATE["cnn"] * min(1.0, math.sqrt(_CNN_REFERENCE_PARAMS / max(params, 1)))


def decide(
    profile: ModelProfile,
    *,
    n_examples: int,
    n_train: int,
    batch_size: int,
    given_validation: bool,
    user: dict[str, Any],
    sequence_length: int | None = None,
    user_length: int | None = None,
    task: str | None = None,
) -> AutoDecision:
    """Decide the fine-tune of a model of ``profile`` on ``n_examples`` labelled examples.

    Args:
        profile: the model's :class:`ModelProfile`.
        n_examples: labelled examples given (before any holdout).
        n_train: examples the fine-tune trains on (after the holdout).
        batch_size: the batch size in use.
        given_validation: whether the user gave validation data.
        user: the options the user set (``epochs``, ``lr``, ``optimizer``...), which win.
        sequence_length: the text length chosen, if any; ``user_length`` the
            preprocessor's.
        task: ``"classification"`` (single-label: the holdout is scored by accuracy),
            ``"multilabel"`` or ``"regression"`` (scored by its loss); ``None``: unknown.

    Returns:
        An :class:`AutoDecision`.
    """
    family = profile.family
    reasons = [f"model: {profile.describe()}"]
    selection, why = _selection(n_examples, n_train, given_validation, family)
    probe_only = _probe_only(profile, selection, task, user)
    if selection == "none" and not probe_only:
        why += ", the fine-tune trains on all labels"
    reasons.append(why)
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    epochs, why = _budget(
        family, steps_per_epoch, batch_size, user.get("epochs"), profile.embeddings
    )
    refit_epochs = None
    if _chooses_on_half(selection, epochs, user):
        refit_epochs, epochs = epochs, epochs // 2
        then = (
            f"if it wins, it continues on all labels for the other {refit_epochs - epochs}"
            if continues_winner(family, user)
            else f"a refit of it all {refit_epochs}"
        )
        why += (
            f"; the choosing run's fine-tune trains a whole schedule over half of them "
            f"({epochs_text(epochs)}) to be scored against the probe, {then}"
        )
    if probe_only:
        epochs = 0
        why = (
            f"fine-tune: none, the probe is returned: with nothing held out to check it, a "
            f"dense network's fine-tune on {n_examples} labels lost to its probe on the "
            "tabular cases it was measured on (pass epochs= to fine-tune)"
        )
    reasons.append(why)
    optimizer, rate, layer_decay, weight_decay = _optimizer(profile, user)
    moves = _moves_further(family, n_examples, user, task)
    if moves:
        rate *= _HOT
        why = (
            f"{n_examples} labelled examples (>= {SMALL_DATA}) carry the body further than a "
            "few dozen do"
            if n_examples >= SMALL_DATA
            else "a regression target, a new quantity to read off the inputs, moves the body "
            "further than new classes do"
        )
        reasons.append(f"rate: {_HOT:g} times a convolutional network's ({rate:.2g}): {why}")
    unfreeze, what = _what_trains(profile, user)
    train_bn, norm = _batch_norm(profile, user)
    fresh = not probe_only and _fresh_head(profile, task, train_bn, n_examples)
    candidates = () if moves else _candidates(family, rate, selection, epochs, user)
    held_out = n_examples - n_train
    embedded = _embeddings_fine_tune(profile, task)
    margin, relative = _probe_margin(moves or embedded, selection, held_out, task, user)
    if margin and not relative:
        who = "a model that trains its embeddings" if embedded else "a network that moves further"
        reasons.append(
            f"choice: the probe wins the holdout only by more than {margin:.2g} of accuracy "
            f"(two standard errors of an accuracy near 0.5 on {held_out} examples): "
            f"{who} wins a choice this close"
        )
    elif margin:
        reasons.append(
            f"choice: the probe wins the holdout only where the fine-tune's loss is more than "
            f"{1 + margin:.2f} times the probe's (two standard errors of a mean squared error on "
            f"{held_out} examples): a network that moves further wins a choice this close"
        )
    peak = " or ".join(f"{r:.2g}" for r in (rate, *candidates))
    spread = f", layer-wise decay {layer_decay}" if layer_decay else ""
    schedule = _schedule(profile, task)
    after = (
        "then that rate to the end (a model that trains its embeddings moves a rare word's "
        "vector only in the few steps that see it)"
        if schedule == "warmup_constant"
        else "cosine decay"
    )
    head_scale = 1.0 if probe_only or fresh else _head_scale(profile, task)
    start = "a new head" if fresh else "the probe"
    if head_scale != 1.0:
        start = f"the probe's head, its kernel times {head_scale:g}"
    if not probe_only:
        reasons.append(
            f"fine-tune: {what} from {start}, {optimizer} at "
            f"{peak} peak{spread}, warmup 10% and {after}{norm}"
        )
    if head_scale != 1.0:
        reasons.append(
            f"head: the fine-tune starts from the probe's head with its kernel times "
            f"{head_scale:g}, its bias kept, and the probe stays a candidate: a head fitted to "
            "convergence leaves little error to move the layers below it, which a model that "
            "trains its embeddings needs to move"
        )
    if fresh:
        reasons.append(
            f"head: with fewer than {FRESH_HEAD_LIMIT} labels, the fine-tune starts from a head "
            "drawn afresh, its bias at the targets' mean, not from the probe's (which stays a "
            "candidate): the probe was fitted to features under BatchNormalization's stored "
            "statistics, and under the batch statistics the fine-tune trains with, its "
            "regression head can predict worse than the mean"
        )
    if candidates:
        reasons.append(
            "rate: chosen on the validation data by successive halving: each rate trains the first "
            f"{epochs // 2} of the {epochs} epochs, the better one continues (1.5 times the "
            "steps of one fine-tune)"
        )
    if sequence_length is not None and user_length is not None and sequence_length < user_length:
        reasons.append(
            f"text: trained at sequence length {sequence_length} (98% of the texts fit), not "
            f"the preprocessor's {user_length}, which the returned task keeps"
        )
    return AutoDecision(
        profile,
        n_examples,
        selection,
        optimizer,
        rate,
        layer_decay,
        weight_decay,
        float(user.get("warmup") if user.get("warmup") is not None else 0.1),
        epochs,
        epochs * steps_per_epoch,
        batch_size,
        unfreeze,
        sequence_length,
        tuple(reasons),
        train_bn,
        candidates,
        refit_epochs,
        refit_epochs is not None and continues_winner(family, user),
        probe_margin=margin,
        probe_margin_relative=relative,
        fresh_head=fresh,
        schedule=schedule,
        head_scale=head_scale,
    )


def _optimizer(
    profile: ModelProfile, user: dict[str, Any]
) -> tuple[str, float, float | None, float | None]:
    """The family's optimizer, peak rate, layer-wise decay and weight decay; the user's win."""
    family = profile.family
    rate = _cnn_rate(profile.params) if family == "cnn" else _RATE[family]
    optimizer = _OPTIMIZER[family]
    layer_decay = _LAYER_DECAY.get(family)
    if user.get("lr") is not None:
        rate = float(user["lr"])
    if user.get("optimizer") is not None:
        optimizer = str(user["optimizer"])
    if user.get("layer_decay") is not None or user.get("lr_mult") is not None:
        layer_decay = user.get("layer_decay")
    weight_decay = user.get("weight_decay")
    if weight_decay is None:
        weight_decay = _WEIGHT_DECAY.get(family)
    return optimizer, rate, layer_decay, weight_decay


def _what_trains(profile: ModelProfile, user: dict[str, Any]) -> tuple[Any, str]:
    """What the fine-tune unfreezes (``"all"`` or a regex over layer paths), and in words."""
    if user.get("unfreeze") is not None:
        return user["unfreeze"], f"unfreeze={user['unfreeze']!r} (as given)"
    if profile.top_blocks is not None:
        blocks = profile.attention_blocks
        return profile.top_blocks, (
            f"the top {math.ceil(blocks / 2)} of {blocks} attention blocks and the layers "
            "above (the bottom runs once, its outputs cached)"
        )
    return "all", "everything"


def _batch_norm(profile: ModelProfile, user: dict[str, Any]) -> tuple[bool, str]:
    """Whether BatchNormalization trains in the fine-tune, and the plan's words for it.

    It trains: its statistics follow the new data. On the matrix's dev cases this was as
    good or better on every case-seed tried (digits10 97.6/98.8 -> 97.9/98.9, faces40
    93.8/93.1 -> 96.3/94.4, mnist04_59 88.2/93.4 -> 89.0/93.1).
    """
    given = user.get("train_bn") is not None
    train_bn = bool(user["train_bn"]) if given else True
    norm = (
        "BatchNormalization trains (its statistics follow the new data)"
        if train_bn
        else "BatchNormalization in inference mode"
    )
    if given:
        norm += " (as given)"
    # Said only of a model that has BatchNormalization (a transformer has none to speak of).
    speak = profile.batch_norm and profile.family != "transformer"
    return train_bn, f"; {norm}" if speak else ""


def _fresh_head(profile: ModelProfile, task: str | None, train_bn: bool, n_examples: int) -> bool:
    """Whether a regression fine-tune starts from a head drawn afresh, not the probe's.

    The probe fits the head to the body's features in inference mode, where
    BatchNormalization uses its stored statistics; a fine-tune where it trains normalises
    by each batch's instead, and on new data those differ: on rotated sklearn digits (the
    shipped MNIST CNN, 500 labels, seed 0) the probe's head predicts its training targets
    with a mean squared error of 114 in inference mode and 741 under batch statistics,
    where their variance is 517, and the fine-tune's first steps chase that error through
    the body. The head it starts from is drawn as a new Dense layer's, with its bias at
    the targets' mean (a zero bias leaves a target far from 0, such as a zoom factor of
    60-100, unlearnt: R2 of 8-53). Held out, rotated sklearn digits: 100 labels
    93.47/93.92/92.86 -> 96.32/96.21/96.75, 200 (the matrix's rotation200)
    94.17/96.37/96.52 -> 97.72/97.49/97.15.

    Below ``FRESH_HEAD_LIMIT`` labels only: on the four dev cases of
    ``benchmarks/regression_head.py`` (seeds 0-2) the new head scored higher on 23 of 24
    case-seeds with 100 and 200 labels, but with 500 it lost 4.5-12.5 points on rotated
    MNIST (in the CNN's own domain, where its stored statistics fit) and 1.6 on MNIST zoom
    (seed 0) while gaining 0.5-3.6 on the other three cases. In between it still gained on
    13 of 15 case-seeds (the five cases, dev and held out) at 350 labels and 13 of 15 at
    420, rotated MNIST losing 1.50 and 0.92 a seed there. A ridge head fitted under
    batch statistics instead of a drawn one was tried and did worse on average than both
    at 200 labels. Classification keeps the probe's head: a new one (zero bias) lost on
    the matrix's convolutional dev cases, seeds 0-2: digits10 98.47/99.06/96.52 ->
    84.80/92.87/96.29, mnist04_59 88.95/93.05/89.70 -> 89.25/91.05/88.30, faces40
    96.25/94.38/98.12 -> 96.25/94.38/96.88.
    """
    return (
        task == "regression"
        and profile.batch_norm
        and train_bn
        and profile.family == "cnn"
        and n_examples < FRESH_HEAD_LIMIT
    )


def _moves_further(
    family: str, n_examples: int, user: dict[str, Any], task: str | None = None
) -> bool:
    """Whether the network trains at :data:`_HOT` times its rate outright, nothing halved.

    A convolutional network with :data:`SMALL_DATA` labelled examples or more, or with fewer
    for regression, unless a rate is given. On the matrix's convolutional cases with a
    holdout (fashion_mnist20, mnist_fashion100, rotation200, dict200, multilabel300; seeds
    0-2) the fine-tune won 14 of the 15 holdouts; successive halving had chosen the higher
    rate for 11 of them, and on the other three the lower rate cost 2.7, 3.4 and 0.1 points
    of test score against the higher one (Fashion-MNIST features to MNIST and MNIST to
    Fashion-MNIST seed 0, multi-label digits seed 2): a choice made at half the budget on 40
    to 200 held-out examples. Below that many labels the higher rate loses (on digits10,
    digits3, faces40 and mnist04_59, seeds 0-2: -0.3, -1.0, -2.3 and -0.6 points a case).
    A regression head gains from it with fewer labels too: a new quantity to read off the
    images moves the body further than new classes of them do. With 100 labels (the
    shipped CNN with a linear head; dev cases drawn for it, seeds 0-2, 2-core AMD EPYC
    VM) R2 rose on all 12 case-seeds: rotated MNIST angles 52.62/49.54/49.42 ->
    57.90/54.14/56.57, rotated Fashion-MNIST 69.35/76.55/54.85 -> 75.61/81.29/64.75, MNIST
    zoom factors 73.53/69.21/67.86 -> 81.54/80.26/76.20, Fashion-MNIST horizontal shifts
    80.67/66.26/69.47 -> 85.06/79.06/84.12. Judged on angles of rotated sklearn digits
    with 100 labels (the matrix's rotation200 data, a label count never tuned on):
    88.86/88.03/86.81 -> 93.47/93.92/92.86, where a plain 30-epoch ``fit`` scores
    91.73/94.53/94.70.
    """
    if family != "cnn" or user.get("lr") is not None:
        return False
    return n_examples >= SMALL_DATA or task == "regression"


def _probe_only(
    profile: ModelProfile, selection: str, task: str | None, user: dict[str, Any]
) -> bool:
    """Whether the probe is returned with no fine-tune after it.

    For a dense network without embeddings (a tabular MLP) classifying fewer than
    :data:`SMALL_DATA` examples, where nothing is held out to check a fine-tune, unless
    ``epochs`` or ``lr`` is given. On the tabular dev cases (MLPs pretrained on ggplot2's
    diamonds of some colours or cuts, fine-tuned to tell clarity on the others; 2-core AMD
    EPYC VM) the probe alone beat the fine-tune from it on 31 of 40 case-seeds: diamonds
    D-G from the H-J MLP with 60, 120 and 180 labels +2.5, +2.6 and +0.95 a seed (seeds
    0-3, 0-7, 0-3), the other cuts from the Premium/Ideal MLP +2.2 and +1.0 at 60 and 120
    (0-3, 0-7), -0.8 at 180 (0-3). Judged on colours H-J from the D-G MLP with 120 labels,
    never tuned on (seeds 0-2): 39.65/39.15/37.35 against 36.00/35.75/36.65, where the
    Keras guide's recipe scores 40.05/38.10/38.65. A model with embeddings keeps its
    fine-tune: on a GloVe bag-of-words model with a new hidden layer (Rotten Tomatoes, 100
    and 150 labels, seeds 0-2) the fine-tune beat the probe by 2.6 and 3.3 a seed.
    """
    if profile.family != "mlp" or profile.embeddings or selection != "none":
        return False
    return task == "classification" and user.get("epochs") is None and user.get("lr") is None


def _schedule(profile: ModelProfile, task: str | None) -> str:
    """The fine-tune's schedule: ``"warmup_constant"`` for a dense classifier with embeddings,
    else ``"warmup_cosine"``.

    After its warmup a model that trains its embeddings keeps its peak rate to the end: a
    word's vector moves only in the steps whose batch holds it, and under a cosine a rare
    word's last few steps come at almost no rate. Measured on the GloVe bag-of-words model
    of the matrix (GloVe 6B 50d -> mean -> new Dense(64) -> head; 2-core AMD EPYC VM,
    seeds 0-2, test accuracy a seed, cosine -> constant, plain 30-epoch ``fit`` in
    brackets). Dev: 20 Newsgroups 40 a class 50.9 -> 53.7 (53.1), 100 a class 59.5 -> 62.7
    (64.2), R52 10 a class 73.3 -> 73.9 (74.3). Held out: 20 Newsgroups 20 a class 45.1 ->
    48.1 (42.2), R52 20 a class 79.3 -> 80.5 (80.6), R8 40 and 100 a class +0.6 and +0.7,
    20 Newsgroups' six top-level groups 60 and 300 a class +0.9 and +1.1, sci.med/sci.space
    200 a class +0.8, rec.autos/rec.motorcycles 400 a class +0.6, R8 earn/acq 200 and
    1,000 a class +0.1 and +0.0, comp/rec 1,500 a class +0.1; Rotten Tomatoes
    400, 1,000 and 2,000 labels -0.1, +0.5 and -0.1, and 4,000 labels -0.9 (seeds 0-5:
    73.1 -> 72.2, where plain ``fit`` scores 71.8), the one loss. Two other architectures,
    held out (20 Newsgroups 40 a class, R8 40 a class, Rotten Tomatoes 1,000, the six
    groups 60 a class): GloVe -> mean -> head, +2.5, +0.7, -0.2, +1.6; a wider new layer
    (Dense(256) and dropout 0.3), +3.2, +0.4, -0.0, +0.7. Tried and not kept: the constant
    rate in the choosing run and a cosine in the continuation fell between the two (dev
    20 Newsgroups 40 and 100 a class 52.8 and 61.5; Rotten Tomatoes 4,000 71.9), and a
    fine-tune from a head drawn afresh rather than the probe's lost 3.8-6.3 a seed on
    the dev cases (at half the budget it trailed the probe on the holdout: R52's probe won).
    ``benchmarks/embedding_schedule.py`` prints the comparison.
    """
    return "warmup_constant" if _embeddings_fine_tune(profile, task) else "warmup_cosine"


def _head_scale(profile: ModelProfile, task: str | None) -> float:
    """What the probe's head kernel is multiplied by before the fine-tune starts from it:
    :data:`EMBEDDING_HEAD_SCALE` for a dense classifier with embeddings, else 1.

    The probe's head, fitted to convergence, predicts the training labels well, so the
    fine-tune from it meets little error to move the layers below: on the GloVe model of
    the matrix (a new Dense(64) under the head; sci.med/sci.space 200 a class, no holdout,
    30 epochs at a constant rate, seeds 0-2, 2-core AMD EPYC VM) the fine-tune from the
    probe's head scored 90.1/90.5/92.5 and from the model's own new head 91.8/93.0/94.6,
    as plain ``fit``. A new head loses the holdout's choice instead (it trails the probe at
    half the budget, :func:`_schedule`); the probe's head with its kernel scaled down keeps
    its direction and its bias (the classes' balance) and leaves the error to train on.
    Measured with the rate held after the warmup (seeds 0-2, test accuracy a seed, kernel
    times 1 / 0.5 / 0.25 / 0.1, plain 30-epoch ``fit`` in brackets). Dev:
    sci.med/sci.space 200 a class 91.2 / 92.0 / 92.5 / 92.8 (93.3), 20 Newsgroups 40 a
    class 53.7 / 55.2 / 55.0 / 53.3 (53.1), R52 10 a class 73.9 / 75.1 / 74.0 / 69.6 (74.3):
    0.5, the best mean. Held out, 1 -> 0.5: R8 40 and 100 a class +0.6 and +0.5, R52 20 a
    class +0.6, 20 Newsgroups 20 and 100 a class +0.0 and +1.1, its six top-level groups
    60 and 300 a class +1.3 and +0.5, rec.autos/rec.motorcycles 400 a class +0.7, R8
    earn/acq 200 a class -0.0, Rotten Tomatoes 400, 1,000 and 4,000 labels +0.0, +0.7 and
    +0.4. Two other architectures, held out (20 Newsgroups 40 a class, R8 40 a class,
    Rotten Tomatoes 1,000, the six groups 60 a class): GloVe -> mean -> head, where no new
    layer sits under the head, +0.6, +0.1, +0.4, -0.5; a wider new layer (Dense(256) and
    dropout 0.3) +0.7, +0.1, +0.0, +1.1. ``benchmarks/embedding_schedule.py`` prints the
    comparison.
    """
    return EMBEDDING_HEAD_SCALE if _embeddings_fine_tune(profile, task) else 1.0


def _embeddings_fine_tune(profile: ModelProfile, task: str | None) -> bool:
    """Whether a dense classifier with embeddings keeps its fine-tune on a close holdout.

    Below :data:`SMALL_DATA` labels, where nothing is held out, such a model fine-tunes
    (:func:`_probe_only`): its fine-tune beat its probe alone by 2.5-4.9 points a seed
    (the GloVe bag-of-words model on 100 and 150 Rotten Tomatoes labels). From 200 up it
    chose on 40-odd held-out examples, and where the probe won (GloVe on Rotten Tomatoes,
    200 and 300 labels, seeds 0-5: 5 of 12 holdouts, by 1-2 examples) the fine-tune
    scored more on test every time: 59.8 -> 61.0, 56.3 -> 59.5, 57.5 -> 60.3 at 200,
    59.7 -> 61.7, 60.1 -> 62.5 at 300. So the probe must beat it by the margin a
    convolutional network that moves further gets (:func:`_probe_margin`).
    """
    return profile.family == "mlp" and profile.embeddings and task == "classification"


def _probe_margin(
    moves: bool,
    selection: str,
    held_out: int,
    task: str | None,
    user: dict[str, Any],
) -> tuple[float, bool]:
    """By how much the probe must beat the fine-tune on the holdout: two standard errors.

    Returns ``(margin, relative)``: ``relative`` when the margin is a fraction of the
    probe's holdout loss rather than points of accuracy; ``(0.0, False)`` for none.

    ``moves``: whether the fine-tune wins a close choice, for a convolutional network that
    trains at :data:`_HOT` times its rate (labels enough to move the body further,
    :func:`_moves_further`) or a dense classifier with embeddings
    (:func:`_embeddings_fine_tune`). Then, choosing on a fifth of its own
    labels before a refit, for its own budget (no ``epochs`` or ``monitor`` given); else
    0. A holdout of 40 to 99 examples scores the two apart by chance:

    - scored by accuracy (single-label classification): ``1/sqrt(held_out)`` of accuracy,
      two standard errors of an accuracy near 0.5. Where the probe won such a choice (10
      of 64 single-label convolutional runs from 200 to 400 labels, seeds 0-7, 2-core AMD
      EPYC VM), the fine-tune that now wins scored more on test in 9 of the 10: on dev
      splits drawn for it, the shipped CNN on digits 20/class seeds 0 and 6 +1.88 and
      +1.88, 40/class seeds 1 and 5 +1.21 and +0.93, the MNIST 0-4 CNN on MNIST 5-9
      40/class seed 3 +4.85, the shipped CNN on Fashion-MNIST 30/class seed 6 +9.60; held
      out, dict200 seeds 0, 3, 6 and 7 +2.07, +0.75, +2.38 and -0.06. The fine-tune had
      won the other 54 already.
    - scored by mean squared error (regression with its default loss): ``2 * sqrt(2 /
      held_out)`` of the probe's loss, two standard errors of a mean of squared normal
      errors; the probe wins only where the fine-tune's holdout loss is more than ``1 +``
      that times the probe's. A few badly predicted examples of 40 decide a mean squared
      error: on the matrix's held-out rotation200 (angles of rotated digits, 200 labels;
      splits 0-2 x training seeds 10-17, 2-core AMD EPYC VM) the fine-tunes' holdout
      losses ran from 22 to 130 where their test R2 was 92-97; the probe won 3 of the 24
      holdouts and scored an R2 of 64-68 on test, where the fine-tune that now wins scores
      92-95. In 32 runs of regression dev cases drawn for it (angles of rotated MNIST and
      Fashion-MNIST images, 200 and 400 labels, seeds 0-7) the fine-tune won every
      holdout, so nothing there changes.

    The returned model is trained again on all labels, so no holdout score of it is given
    up.
    """
    if not (moves and selection == "holdout, then refit" and held_out > 0):
        return 0.0, False
    if user.get("monitor") is not None or user.get("epochs") is not None:
        return 0.0, False
    if task == "classification":
        return 1.0 / math.sqrt(held_out), False
    if task == "regression" and user.get("loss") is None:
        return 2.0 * math.sqrt(2.0 / held_out), True
    return 0.0, False


def _chooses_on_half(selection: str, epochs: int, user: dict[str, Any]) -> bool:
    """Whether the choosing run fine-tunes for half the budget (a refit trains the rest).

    When the winner is trained on all labels, the choosing run only has to say whether a
    fine-tune beats the probe; the one that wins continues for the other half (or, for a
    transformer, trains again for the whole budget: :func:`continues_winner`). A whole
    warmup-and-cosine schedule over half the steps says it as well: on the matrix's
    convolutional cases with a holdout (fashion_mnist20, mnist_fashion100, rotation200,
    dict200, multilabel300; seeds 0-2) every choice and score stayed the same, and on its
    dense ones (the four diamonds cases and glove_rt1000; seeds 0-5) 26 of 30 did, the
    other four choosing the other candidate for +0.65, -0.75, +0.30 and +0.30 points.
    Transformers too: on the matrix's three MiniLM cases with a holdout (rt400, ng20, r52;
    seeds 0-2, when 400 labels held a fifth out) every choice and every score stayed the
    same. The budget is not halved when epochs are given.
    """
    return selection == "holdout, then refit" and epochs >= 2 and user.get("epochs") is None


def continues_winner(family: str, user: dict[str, Any] | None = None) -> bool:
    """Whether a fine-tune of ``family`` that won at half the budget continues on all labels.

    Convolutional and dense networks continue from the weights that won, on every label,
    for the rest of the budget (a second warmup and schedule, no probe): a choosing
    run and a continuation make about 0.9 of one fine-tune's steps, where training again
    for the whole budget made 1.4. Transformers train again for the whole budget, and so
    does any network under L2-SP (``user["l2sp"]``), which pulls towards the weights a
    run starts from: those must be the pretrained ones.
    Measured on the matrix's cases with a holdout and a refit (test score, seeds 0-2,
    training again -> continuing): convolutional, fashion_mnist20 89.30/89.35/89.50 ->
    89.30/89.45/90.60, rotation200 (R2) 93.53/96.09/95.86 -> 95.08/96.79/96.63, dict200
    96.43/98.94/98.75 -> 96.43/98.87/98.87, mnist_fashion100 81.55/81.65/79.75 ->
    81.55/82.20/81.10, mnist_fashion300 85.75/86.05/85.75 -> 85.50/87.10/85.80, and the
    dev cases multilabel300 (micro-F1) 98.95/99.06/99.06 -> 98.81/98.58/98.93 and
    fashion04_59_500 97.00/96.80/96.80 -> 96.55/96.35/96.65 (+0.23 a case); dense,
    glove_rt1000 67.00/67.50/68.80 -> 66.70/66.20/68.20, glove_rt4000 72.40/73.10/73.00 ->
    72.00/73.00/72.00, the five diamonds cases within 0.5 a seed (-0.10 a case). MiniLM
    lost on the held-out text cases, ng20 69.70/70.40/68.40 -> 68.50/67.80/67.30 and r52
    (macro-F1) 63.10/61.56/64.16 -> 59.86/62.92/64.16 (the probe won seed 2), and won on
    the dev one, rt400 72.60/71.60/70.60 -> 72.90/72.70/71.90: its budget is about 60
    steps, and the choosing run's 2 of 5 epochs leave two short schedules. The line
    between the families is drawn from those text cases, two of them held out, which
    are no longer unseen evidence for it.
    """
    return family != "transformer" and not (user or {}).get("l2sp")


def _candidates(
    family: str, rate: float, selection: str, epochs: int, user: dict[str, Any]
) -> tuple[float, ...]:
    """The other rates tried beside ``rate``: only on validation data the user gave.

    On a holdout of the user's own labels (a fifth of 200 to 5,000 examples) the choice
    is made at half the budget on 40 to 1,000 examples, and it chose no better than either
    rate alone: on the matrix's dense cases (diamonds_cut, diamonds_dg_from_hj,
    diamonds_hj, diamonds_hj_drawn, glove_rt1000; seeds 0-5) the mean test accuracy a
    case was 41.57 / 43.94 / 32.94 / 37.85 / 67.82 choosing by halving, 41.72 / 44.44 /
    32.94 / 38.37 / 67.32 at 1e-3 throughout, 41.73 / 43.98 / 32.99 / 37.48 / 67.93 at
    3e-3, for half a fine-tune more. (A convolutional network with that many labels
    trains at the higher rate outright, :func:`_moves_further`.) Transformers try none:
    their rate carries across the text cases (docs/matrix.md), and each extra trial of a
    transformer body costs minutes on a CPU. Nor does a network given a rate.
    """
    if (
        family == "transformer"
        or selection != "validation data"
        or epochs < 2
        or user.get("lr") is not None
    ):
        return ()
    return (rate * _HOT,)
