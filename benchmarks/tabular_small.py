"""Tabular MLPs with fewer than 200 labels: the probe alone against a fine-tune from it.

Below 200 labelled examples ``recipe="auto"`` holds nothing out, so nothing checks a
fine-tune; for a dense network without embeddings it returns the cross-validated probe
alone. This script is the evidence, in one process per case and seed, on the same split:

- ``kerasft``: ``kerasft.finetune(model, data, seed=seed)``, the defaults;
- ``finetune``: the same call with ``lr=1e-3``, the dense family's rate, which makes
  auto fine-tune after the probe for its usual budget (about 300 steps), as it did
  by default before;
- ``ref``: the Keras transfer-learning guide's recipe (the matrix's ``ref``);
- ``fit30``: plain ``fit``, ``Adam(1e-3)``, 30 epochs, batch 32 (the matrix's ``fit30``).

Cases are the matrix's tabular models at other label counts (ggplot2's diamonds, labels
drawn in the target part's clarity proportions, 2,000 others to test): ``dev`` ones
chose the rule; ``held-out`` ones judged it (colours H-J from the D-G MLP, the model of
the matrix's held-out diamonds cases).

Run::

    python benchmarks/tabular_small.py                       # every case, seeds 0-2
    python benchmarks/tabular_small.py --cases dgfh120 --seeds 0 1 2 3 4 5 6 7
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import kerasft  # noqa: E402  (before TensorFlow: oneDNN off)

# isort: split
import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import matrix  # noqa: E402
import matrix_tabular as mt  # noqa: E402
import side_by_side  # noqa: E402

CUTS = "Fair/Good/Very Good cut"
# name -> (group, labelled, the part fine-tuned on, the pretrained MLP)
CASES = {
    "dgfh60": ("dev", 60, "D-G", "diamonds_hj_mlp"),
    "dgfh120": ("dev", 120, "D-G", "diamonds_hj_mlp"),
    "dgfh180": ("dev", 180, "D-G", "diamonds_hj_mlp"),
    "cut60": ("dev", 60, CUTS, "diamonds_fine_cut_mlp"),
    "cut120": ("dev", 120, CUTS, "diamonds_fine_cut_mlp"),
    "cut180": ("dev", 180, CUTS, "diamonds_fine_cut_mlp"),
    "hj120": ("held-out", 120, "H-J", "diamonds_dg_mlp"),
}
METHODS = ("kerasft", "finetune", "ref", "fit30")


def _case(name: str) -> matrix.Case:
    group, labelled, part, mlp = CASES[name]
    return matrix.Case(
        name,
        group,
        "mlp",
        "classification",
        "accuracy",
        len(mt.CLARITIES),
        mt.diamonds_split(labelled=labelled, part=part),
        mt.pretrained_loader(mlp),
        f"{mlp} -> {part}, {labelled} labels drawn in its clarity proportions",
    )


def _accuracy(model: keras.Model, split) -> float:
    predicted = model.predict(split.x_test, batch_size=1024, verbose=0).argmax(axis=1)
    return 100.0 * float((predicted == split.y_test).mean())


def run_one(case: matrix.Case, method: str, split, seed: int) -> float:
    """Test accuracy x 100 of ``method`` on ``split``."""
    keras.utils.set_random_seed(seed)
    data = (split.x_train, split.y_train)
    if method in ("kerasft", "finetune"):
        # `lr` given at the family's rate: auto's fine-tune after the probe, as before
        given = {"lr": 1e-3} if method == "finetune" else {}
        result = kerasft.finetune(case.model(split), data, seed=seed, verbose=0, **given)
        return 100.0 * result.evaluate((split.x_test, split.y_test))["accuracy"]
    out = matrix.run_ref(case, split) if method == "ref" else matrix.run_fit(case, split, 30)
    return _accuracy(out["model"], split)


def main(argv=None) -> None:
    def scores(name: str, seed: int) -> tuple[str, dict[str, float]]:
        case = _case(name)
        split = case.load(seed, False)
        got = {}
        for method in METHODS:
            got[method] = run_one(case, method, split, seed)
            keras.backend.clear_session()
        return case.group, got

    side_by_side.main(__doc__.splitlines()[0], CASES, METHODS, "finetune", scores, argv)


if __name__ == "__main__":
    main()
