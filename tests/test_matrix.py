"""The benchmark matrix's CI subset: kerasft's defaults beside their baselines on held-out cases.

``benchmarks/matrix.py`` runs every case over three seeds (docs/matrix.md); here two
held-out cases run with seed 0 on the quick test sets, in this process, through the
same functions: the shipped CNN on 3 digits per class (30 examples: no holdout, the
probe cross-validated) and a two-input model on 200 digits (a holdout, then a refit).
The target of the matrix, never more than 3 points below the best baseline, is
checked against the baselines that cost seconds: the linear probe and a plain
3-epoch ``fit``.
"""

from __future__ import annotations

import os
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import matrix  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits3", "dict200"])
def test_defaults_hold_their_own_against_the_baselines(name):
    case = matrix.CASES[name]
    split = case.load(0, True)
    scores = {}
    for method in ("kerasft", "lp", "fit3"):
        row = matrix.make_row(
            case, method, 0, True, split, matrix.run_method(case, method, split, 0, True)
        )
        scores[method] = row["score"]
    best = max(scores["lp"], scores["fit3"])
    assert scores["kerasft"] >= best - 3.0, scores
