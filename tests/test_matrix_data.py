"""The benchmark matrix's data side (benchmarks/matrix_data.py): splits and derived labels.

Only the cheap, offline parts: the sampling rules every case relies on (disjoint,
stratified, seeded, fixed test sets) and the features and labels derived from the digits.
The matrix itself is a benchmark, not a test.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import matrix_data as md  # noqa: E402


@pytest.fixture()
def unbalanced():
    # 5 classes of 400, 50, 9, 2 and 1 examples, shuffled.
    y = np.repeat(np.arange(5), [400, 50, 9, 2, 1])
    return np.random.default_rng(0).permutation(y)


def test_per_class_takes_up_to_n_of_each_class_within_the_pool(unbalanced):
    idx = md.per_class(unbalanced, 10, seed=3)
    counts = np.bincount(unbalanced[idx], minlength=5)
    assert counts.tolist() == [10, 10, 9, 2, 1]
    assert len(set(idx.tolist())) == len(idx)
    pool = np.flatnonzero(unbalanced < 2)
    assert set(md.per_class(unbalanced, 5, seed=3, pool=pool)) <= set(pool)
    assert not np.array_equal(np.sort(idx), np.sort(md.per_class(unbalanced, 10, seed=4)))


def test_stratified_sample_keeps_proportions_and_every_class(unbalanced):
    idx = md.stratified_sample(unbalanced, 100)
    counts = np.bincount(unbalanced[idx], minlength=5)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100
    assert counts.min() >= 1  # the class with one example is kept
    assert abs(counts[0] - 400 * 100 / 462) <= 2
    np.testing.assert_array_equal(idx, md.stratified_sample(unbalanced, 100))  # fixed
    with pytest.raises(ValueError, match="smaller than the 5 classes"):
        md.stratified_sample(unbalanced, 4)


def test_split_rest_is_disjoint_and_caps_the_test_set(digits):
    x, y = digits
    train = md.per_class(y, 10, seed=0)
    split = md.split_rest(x, y, train)
    assert len(split.y_train) == 100 and len(split.y_test) == len(y) - 100
    cap = md.split_rest(x, y, train, test_cap=500)
    assert len(cap.y_test) == 500 and np.bincount(cap.y_test).min() >= 45
    train_rows = {r.tobytes() for r in split.x_train.reshape(100, -1)}
    assert not any(r.tobytes() in train_rows for r in cap.x_test.reshape(500, -1))


def test_balanced_text_split_has_a_fixed_test_set():
    labels = np.repeat([0, 1], 300)
    texts = np.array([f"review {i}" for i in range(600)])
    a = md.balanced_text_split(texts, labels, 40, 100, seed=0)
    b = md.balanced_text_split(texts, labels, 40, 100, seed=1)
    np.testing.assert_array_equal(np.sort(a.x_test), np.sort(b.x_test))
    assert not set(a.x_train) & set(a.x_test)
    assert set(a.x_train) != set(b.x_train)
    assert np.bincount(a.y_train).tolist() == [20, 20] and np.bincount(a.y_test).tolist() == [
        50,
        50,
    ]


def test_digit_attributes():
    table = md.digit_attributes(np.arange(10))
    assert table[:, 0].tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]  # even
    assert table[:, 1].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]  # >= 5
    assert table[:, 2].tolist() == [1, 0, 0, 0, 1, 0, 1, 0, 1, 1]  # closed loop


def test_ink_profile_and_rotation(digits):
    x = digits[0][:5]
    profile = md.ink_profile(x)
    assert profile.shape == (5, 56) and 0.0 <= profile.min() and profile.max() <= 1.0
    np.testing.assert_allclose(profile[:, :28].sum(axis=1), profile[:, 28:].sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(md.rotate(x, np.zeros(5)), x, atol=1e-3)
    turned = md.rotate(x, np.full(5, 90.0))
    assert turned.shape == x.shape and not np.allclose(turned, x)


def test_diamonds_split_labels_colours_h_to_j_only():
    """The tabular case: 30 labels per clarity grade of H-J diamonds, tested on H-J too."""
    import matrix_tabular as mt

    x, y, colour = mt.load_diamonds()
    assert x.shape == (53_940, len(mt.FEATURES)) and x.dtype == np.float32
    assert set(np.unique(y)) == set(range(len(mt.CLARITIES))) and set(colour) == set("DEFGHIJ")
    split = mt.diamonds_split(30)(0, True)
    assert np.bincount(split.y_train).tolist() == [30] * len(mt.CLARITIES)
    assert len(split.y_test) == 500
    rows = {tuple(r) for r in x[np.isin(colour, mt.TARGET_COLOURS)].tolist()}
    assert all(tuple(r) in rows for r in split.x_train.tolist())  # only H-J diamonds
    assert {tuple(r) for r in split.x_test.tolist()} <= rows  # the test set too
    again = mt.diamonds_split(30)(0, True)
    np.testing.assert_array_equal(again.x_train, split.x_train)  # seeded


def test_diamonds_split_drawn_in_the_parts_proportions():
    """Labels drawn like the test set (stratified by clarity), from one part of the data."""
    import matrix_tabular as mt

    _, y, _ = mt.load_diamonds()
    for part in ("H-J", "Fair/Good/Very Good cut"):
        pool = mt.in_part(part)
        split = mt.diamonds_split(labelled=240, part=part)(0, True)
        assert len(split.y_train) == 240
        share = np.bincount(y[pool], minlength=8) / len(pool)
        np.testing.assert_allclose(np.bincount(split.y_train, minlength=8) / 240, share, atol=0.01)
    assert len(mt.in_part("D-G")) + len(mt.in_part("H-J")) == len(y)
    with pytest.raises(ValueError, match="one of"):
        mt.diamonds_split(30, labelled=240)


def test_price_split_regresses_log_price_of_colours_h_to_j():
    """The tabular regression case: log prices of H-J diamonds, clarity an input."""
    import matrix_tabular as mt

    x, y = mt.load_prices()
    raw, clarity, colour = mt.load_diamonds()
    assert x.shape == (53_940, len(mt.PRICE_FEATURES)) and y.dtype == np.float32
    np.testing.assert_array_equal(y, raw[:, mt.FEATURES.index("log price")])
    np.testing.assert_array_equal(x[:, -1], clarity)
    split = mt.price_split(60)(0, True)
    assert len(split.y_train) == 60 and len(split.y_test) == 500
    rows = {tuple(r) for r in x[np.isin(colour, mt.TARGET_COLOURS)].tolist()}
    assert {tuple(r) for r in [*split.x_train.tolist(), *split.x_test.tolist()]} <= rows
    assert not {tuple(r) for r in split.x_train.tolist()} & {
        tuple(r) for r in split.x_test.tolist()
    }
    np.testing.assert_array_equal(mt.price_split(60)(0, True).y_train, split.y_train)  # seeded
