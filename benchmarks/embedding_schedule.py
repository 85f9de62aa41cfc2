"""A model that trains its embeddings: its fine-tune's rate and its start from the probe.

``recipe="auto"`` warms a fine-tune up over 10% of its steps, then decays the rate along
a cosine to zero, from the probe's head. A dense classifier with embeddings instead keeps
its peak rate to the end (``kerasft.engine.auto._schedule``: a word's vector moves only
in the steps whose batch holds it, and under a cosine a rare word's last steps come at
almost no rate) and starts from the probe's head with its kernel halved
(``kerasft.engine.auto._head_scale``: a head fitted to convergence leaves little error to
move the layers below it). This script is the evidence, in one process per case and seed,
on the same labelled examples:

- ``kerasft``: ``kerasft.finetune(model, data, seed=seed)``, the defaults;
- ``cosine``: the same call with the cosine decay every other model gets
  (``kerasft.engine.auto._schedule`` patched);
- ``probe_head``: the same call from the probe's head as it is (``_head_scale`` patched);
- ``fit30``: plain ``fit``, ``Adam(1e-3)``, 30 epochs, batch 32 (the matrix's).

The model is the matrix's GloVe bag-of-words model (a ``TextVectorization`` over the
training texts, an ``Embedding`` initialised from GloVe 6B 50d, the mean, a new
``Dense(64)``, the head); ``--model nohidden`` drops the new layer, ``--model wide``
makes it ``Dense(256)`` with dropout 0.3. Cases: 20 Newsgroups, Reuters R8 and R52 with
some labels a class, subsets of them (two newsgroups, or the six top-level groups), and
Rotten Tomatoes with some labels in all; test: 1,000 held-out texts. The dev cases are
those the rule was tuned on; the others judged it.

Run::

    python benchmarks/embedding_schedule.py                       # every case, seeds 0-2
    python benchmarks/embedding_schedule.py --cases ng20_40 rt4000 --seeds 0 1 2 3 4 5
    python benchmarks/embedding_schedule.py --model nohidden --cases ng20_40 r8_40
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import kerasft  # noqa: E402, F401  (before TensorFlow: oneDNN off)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import matrix  # noqa: E402
import matrix_data as md  # noqa: E402
import side_by_side  # noqa: E402

from kerasft.datasets import FewShotSplit  # noqa: E402
from kerasft.engine import auto  # noqa: E402

METHODS = ("kerasft", "cosine", "probe_head", "fit30")

# 20 Newsgroups' groups by their top-level name (comp, rec, sci, talk, religion, misc).
_TOP_LEVEL = {
    **dict.fromkeys([1, 2, 3, 4, 5], 0),
    **dict.fromkeys([7, 8, 9, 10], 1),
    **dict.fromkeys([11, 12, 13, 14], 2),
    **dict.fromkeys([16, 17, 18], 3),
    **dict.fromkeys([0, 15, 19], 4),
    6: 5,
}
_COMP_REC = {old: new for old, new in _TOP_LEVEL.items() if new in (0, 1)}


def _subset_split(corpus: str, mapping: Mapping[int, int], shots: int) -> Callable:
    """Labels ``mapping``'s keys of ``corpus`` relabelled to its values, ``shots`` a class."""

    def load(seed: int, quick: bool) -> FewShotSplit:
        x, y, xt, yt, _ = matrix.corpus(corpus)
        relabel = np.full(max(int(y.max()), int(yt.max())) + 1, -1)
        for old, new in mapping.items():
            relabel[old] = new
        y, yt = relabel[y], relabel[yt]
        x, y = x[y >= 0], y[y >= 0]
        xt, yt = xt[yt >= 0], yt[yt >= 0]
        train = md.per_class(y, shots, seed)
        test = md.stratified_sample(yt, 1000)
        return FewShotSplit(x[train], y[train], xt[test], yt[test])

    return load


# name: (set, classes, loader)
CASES: dict[str, tuple[str, int, Callable]] = {
    "ng20_40": ("dev", 20, matrix.corpus_split("20newsgroups", 40)),
    "ng20_100": ("dev", 20, matrix.corpus_split("20newsgroups", 100)),
    "r52_10": ("dev", 52, matrix.corpus_split("reuters-r52", 10)),
    "ng20_20": ("held-out", 20, matrix.corpus_split("20newsgroups", 20)),
    "r52_20": ("held-out", 52, matrix.corpus_split("reuters-r52", 20)),
    "r8_40": ("held-out", 8, matrix.corpus_split("reuters-r8", 40)),
    "r8_100": ("held-out", 8, matrix.corpus_split("reuters-r8", 100)),
    "ng6_60": ("held-out", 6, _subset_split("20newsgroups", _TOP_LEVEL, 60)),
    "ng6_300": ("held-out", 6, _subset_split("20newsgroups", _TOP_LEVEL, 300)),
    "med_space": ("held-out", 2, _subset_split("20newsgroups", {13: 0, 14: 1}, 200)),
    "autos_motorcycles": ("held-out", 2, _subset_split("20newsgroups", {7: 0, 8: 1}, 400)),
    "earn_acq": ("held-out", 2, _subset_split("reuters-r8", {2: 0, 0: 1}, 200)),
    "earn_acq_1000": ("held-out", 2, _subset_split("reuters-r8", {2: 0, 0: 1}, 1000)),
    "comp_rec_1500": ("held-out", 2, _subset_split("20newsgroups", _COMP_REC, 1500)),
    "rt400": ("held-out", 2, matrix.rt_split(400)),
    "rt1000": ("held-out", 2, matrix.rt_split(1000)),
    "rt2000": ("held-out", 2, matrix.rt_split(2000)),
    "rt4000": ("held-out", 2, matrix.rt_split(4000)),
}


def glove_model(split: FewShotSplit, variant: str = "base") -> keras.Model:
    """The matrix's GloVe model, or it without its new layer, or with a wider one."""
    model = matrix.glove_model(split)
    if variant == "base":
        return model
    x = model.get_layer("pool").output
    if variant == "wide":
        x = keras.layers.Dense(256, activation="relu", name="hidden")(x)
        x = keras.layers.Dropout(0.3, name="dropout")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    return keras.Model(model.inputs, outputs, name=f"glove_{variant}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", default="base", choices=("base", "nohidden", "wide"))
    known, rest = parser.parse_known_args(argv)

    def build(split: FewShotSplit) -> keras.Model:
        return glove_model(split, known.model)

    def scores(name: str, seed: int) -> tuple[str, dict[str, float]]:
        group, classes, load = CASES[name]
        new = ("hidden",) if known.model != "nohidden" else ()
        case = matrix.Case(
            name,
            group,
            "glove",
            "classification",
            "accuracy",
            classes,
            load,
            build,
            "",
            new_layers=new,
        )
        split = case.load(seed, False)
        got = {}
        for method in METHODS:
            patch = {
                "cosine": mock.patch.object(auto, "_schedule", return_value="warmup_cosine"),
                "probe_head": mock.patch.object(auto, "_head_scale", return_value=1.0),
            }.get(method, contextlib.nullcontext())
            with patch:
                out = matrix.run_method(
                    case, "fit30" if method == "fit30" else "kerasft", split, seed, False
                )
            got[method] = 100.0 * out["report"].accuracy
            keras.backend.clear_session()
        return group, got

    print(f"model: {known.model}")
    side_by_side.main(__doc__.splitlines()[0], CASES, METHODS, "cosine", scores, rest)


if __name__ == "__main__":
    main()
