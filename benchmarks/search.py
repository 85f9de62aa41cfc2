"""Time and accuracy of ``kerasft.search`` against one ``kerasft.finetune`` call, side by side.

The task: the shipped MNIST CNN (``saved_models/mnist_cnn.keras``) fine-tuned on
scikit-learn's digits with 10 labels per class (``kerasft.datasets.digits_few_shot``:
100 images, 80 to train and 20 held out for validation by ``finetune``), tested on the
other 1,697 images. Every run uses ``finetune``'s epochs (5 head epochs, 10 fine-tuning
epochs, early stopping with patience 5).

- single: one ``kerasft.finetune`` call with the default recipe;
- search: ``kerasft.search`` with 8 random trials over ``lr``, ``finetune_lr``,
  ``unfreeze`` (the top 1, 2 or 3 weighted layers, or all) and ``label_smoothing``
  (objective ``val_loss``), one FeatureStore shared by the trials; its first trial
  runs ``finetune``'s defaults, which the space holds;
- loop: the same 8 configurations as 8 plain ``finetune`` calls (no store), what one
  would write by hand.

The model is loaded once and one call runs first, untimed (TensorFlow's first-call
costs). Each comparison runs ``--rounds`` times, in alternating order, and medians are
reported: the machine is shared. Printed too: where a trial's time goes (features, the
``fit`` calls including tracing, the rest) and the test accuracy of the best trial.

``--task text`` runs the same comparison where the frozen features are most of a call's
work: a linear probe (``recipe="head"``, 3 epochs at the default rate) of the text job's
pretrained all-MiniLM-L6-v2 KerasHub classifier on 400 Rotten Tomatoes reviews (80 of
them held out for validation), tested on 600 others; the space is ``lr`` (4 values)
and ``label_smoothing`` (2), objective ``val_loss``. Every trial freezes the same
backbone, so the store computes its output once for the whole search, while each plain
call computes it again.

Run: ``python benchmarks/search.py`` (about 3 minutes on 2 shared CPU cores), or
``python benchmarks/search.py --task text --rounds 1`` (about 3 minutes).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import kerasft  # noqa: F401  (before TensorFlow: oneDNN off)

# isort: split
import keras

from kerasft import datasets
from kerasft.search import search

SPACE = {
    "lr": [3e-3, 1e-2, 3e-2],
    "finetune_lr": [1e-4, 3e-4, 1e-3],
    "unfreeze": [1, 2, 3, "all"],
    "label_smoothing": [0.0, 0.1],
}
TEXT_SPACE = {"lr": [3e-4, 1e-3, 3e-3, 1e-2], "label_smoothing": [0.0, 0.1]}
TEXT_KEYWORDS = {"recipe": "head", "epochs": 3}


def load_task(name: str):
    """``(model, train data, test data, space, fixed finetune keywords)`` of a benchmark task."""
    if name == "text":
        from kerasft.jobs import textdata, textjob

        split = textdata.rotten_tomatoes_few_shot(n_train=400, n_test=600, seed=0)
        return (
            textjob.build_task(),
            (split.x_train, split.y_train),
            (split.x_test, split.y_test),
            TEXT_SPACE,
            TEXT_KEYWORDS,
        )
    split = datasets.digits_few_shot(shots=10)
    model = keras.models.load_model("saved_models/mnist_cnn.keras")
    return model, (split.x_train, split.y_train), (split.x_test, split.y_test), SPACE, {}


TRIALS = 8
ROUNDS = 2


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="repetitions of each comparison")
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--task", choices=["digits", "text"], default="digits")
    args = parser.parse_args(argv)

    model, data, test, space, fixed = load_task(args.task)
    kerasft.finetune(model, data, verbose=0, **fixed)  # warm-up, untimed

    def single():
        return kerasft.finetune(model, data, verbose=0, **fixed)

    def searched():
        with tempfile.TemporaryDirectory() as directory:
            return search(
                model, data, space, max_trials=args.trials, directory=directory, verbose=0, **fixed
            )

    times = {"single": [], "search": [], "loop": []}
    accuracy = {}
    found, per_trial = None, []
    for round_ in range(args.rounds):
        order = ["single", "search", "loop"] if round_ % 2 == 0 else ["loop", "search", "single"]
        for name in order:
            if name == "single":
                result, seconds = timed(single)
                accuracy["single"] = result.evaluate(test)["accuracy"]
            elif name == "search":
                found, seconds = timed(searched)
                accuracy["search"] = found.best.evaluate(test)["accuracy"]
            else:
                if found is None:
                    found, _ = timed(searched)
                configs = [row.params for row in found.trials]
                loop, seconds = timed(
                    lambda configs=configs: [
                        kerasft.finetune(model, data, verbose=0, **fixed, **p) for p in configs
                    ]
                )
                per_trial = [r.evaluate(test)["accuracy"] for r in loop]
            times[name].append(seconds)
            print(f"round {round_ + 1}: {name} {seconds:.1f} s", flush=True)

    median = {k: statistics.median(v) for k, v in times.items()}
    print()
    print(found.table())
    print(
        "test accuracy of each trial's configuration (from the loop):",
        " ".join(f"{a:.4f}" for a in per_trial),
    )
    print()
    rows = found.trials
    fit = sum(r.fit_seconds for r in rows)
    features = sum(r.feature_seconds for r in rows)
    total = sum(r.seconds for r in rows)
    print(
        f"where the last search's trial time went ({total:.1f} s in {len(rows)} trials): "
        f"fit calls (tracing included) {fit:.1f} s, features {features:.2f} s, the rest "
        f"(copy, data, plan, compile) {total - fit - features:.1f} s; {found.store}"
    )
    print()
    print("| run | seconds (median of rounds) | x single | test accuracy |")
    print("|---|---|---|---|")
    print(
        f"| single finetune ({fixed.get('recipe', 'default')} recipe) | {median['single']:.1f} | "
        f"1.0 | {accuracy['single']:.4f} |"
    )
    print(
        f"| kerasft.search, {args.trials} trials | {median['search']:.1f} | "
        f"{median['search'] / median['single']:.1f} | {accuracy['search']:.4f} (best trial) |"
    )
    print(
        f"| {args.trials} finetune calls, no store | {median['loop']:.1f} | "
        f"{median['loop'] / median['single']:.1f} | - |"
    )
    print(f"\nbest trial {found.best_trial}: {found.best_params}")


if __name__ == "__main__":
    main()
