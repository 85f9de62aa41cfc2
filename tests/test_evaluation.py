"""Evaluation reports of real predictions: each figure vs scikit-learn's, plus I/O and plots."""

from __future__ import annotations

import doctest
import json
import os

# isort: off
import kerasft  # noqa: F401  (before TensorFlow, so it loads with oneDNN off)

# isort: on
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from sklearn import metrics
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import LinearRegression, LogisticRegression

from kerasft import evaluation
from kerasft.evaluation import (
    EvaluationReport,
    evaluate_model,
    report_from_predictions,
    tune_thresholds,
)
from kerasft.plots import plot_report

PRIMES = (2, 3, 5, 7)


# --- real, imperfect predictions ---------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return x / 16.0, y


@pytest.fixture(scope="module")
def multiclass(digits):
    """A weak logistic regression on digits: (y_test, probabilities, logits)."""
    x, y = digits
    model = LogisticRegression(C=0.03, max_iter=300).fit(x[:300], y[:300])
    probs = model.predict_proba(x[300:])
    return y[300:], probs, model.decision_function(x[300:])


@pytest.fixture(scope="module")
def binary(digits):
    """Digits 0 vs 1, from four pixels only, so that the model makes mistakes."""
    x, y = digits
    keep = y < 2
    x, y = x[keep][:, [19, 43]], y[keep]
    model = LogisticRegression().fit(x[::2], y[::2])
    return y[1::2], model.predict_proba(x[1::2])[:, 1], model.decision_function(x[1::2])


def _multilabel_targets(y):
    return np.stack([y % 2 == 0, y > 4, np.isin(y, PRIMES)], axis=1).astype(int)


@pytest.fixture(scope="module")
def multilabel(digits):
    """Labels "is even", "is > 4", "is prime", one logistic regression per label."""
    x, y = digits
    labels = _multilabel_targets(y)
    logits = np.stack(
        [
            LogisticRegression(C=0.01, max_iter=300)
            .fit(x[:400], labels[:400, j])
            .decision_function(x[400:])
            for j in range(3)
        ],
        axis=1,
    )
    return labels[400:], 1 / (1 + np.exp(-logits)), logits


@pytest.fixture(scope="module")
def regression():
    """Diabetes progression (and BMI from the other features): a two-output linear fit."""
    x, y = load_diabetes(return_X_y=True)
    targets = np.stack([y, x[:, 2]], axis=1)
    features = np.delete(x, 2, axis=1)
    model = LinearRegression().fit(features[:300], targets[:300])
    return targets[300:], model.predict(features[300:])


def _png(path) -> np.ndarray:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _blues(value: float) -> tuple:
    """The colour of ``value`` in the confusion matrix's colour map."""
    from matplotlib import colormaps

    return colormaps["Blues"](value)[:3]


def _pixels_of(pixels: np.ndarray, colour) -> int:
    """How many pixels are drawn in ``colour`` (a matplotlib colour), give or take 2 levels."""
    from matplotlib.colors import to_rgb

    target = np.round(np.array(to_rgb(colour)) * 255)
    return int(np.all(np.abs(pixels.astype(int) - target) <= 2, axis=-1).sum())


# --- figures against scikit-learn --------------------------------------------------------


def test_docstring_examples_run():
    result = doctest.testmod(evaluation)
    assert result.attempted >= 6 and result.failed == 0


def test_multiclass_figures_match_sklearn(multiclass):
    y, probs, _ = multiclass
    report = report_from_predictions(y, probs)
    pred = probs.argmax(1)
    labels = np.arange(10)
    assert report.task == "multiclass" and report.num_examples == len(y)
    assert 0.6 < report.accuracy < 0.97  # real, imperfect predictions
    assert report.accuracy == pytest.approx(metrics.accuracy_score(y, pred))
    p, r, f, s = metrics.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    np.testing.assert_allclose(report.precision, p)
    np.testing.assert_allclose(report.recall, r)
    np.testing.assert_allclose(report.f1, f)
    assert report.support == s.tolist()
    for avg in ("macro", "weighted"):
        expected = metrics.precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
        assert [report.averages[avg][k] for k in ("precision", "recall", "f1")] == pytest.approx(
            expected[:3]
        )
    assert report.confusion_matrix == metrics.confusion_matrix(y, pred).tolist()
    assert report.top_k == 5
    assert report.top_k_accuracy == pytest.approx(metrics.top_k_accuracy_score(y, probs, k=5))
    assert report.roc_auc == pytest.approx(metrics.roc_auc_score(y, probs, multi_class="ovr"))
    for c in range(10):
        assert report.roc_auc_per_class[c] == pytest.approx(
            metrics.roc_auc_score(y == c, probs[:, c])
        )
    keras_loss = keras.losses.SparseCategoricalCrossentropy()(y, probs.astype("float32"))
    assert report.loss == pytest.approx(float(keras_loss), rel=1e-5)
    assert report.headline == {
        "accuracy": report.accuracy,
        "macro_f1": report.averages["macro"]["f1"],
    }


def test_multiclass_logits_and_one_hot_give_the_same_figures(multiclass):
    y, probs, logits = multiclass
    from_probs = report_from_predictions(y, probs, task="multiclass")
    from_logits = report_from_predictions(y, logits, task="multiclass", from_logits=True)
    one_hot = np.eye(10)[y]
    from_one_hot = report_from_predictions(one_hot, probs)
    assert from_one_hot.task == "multiclass"
    for other in (from_logits, from_one_hot):
        assert other.confusion_matrix == from_probs.confusion_matrix
        np.testing.assert_allclose(other.f1, from_probs.f1)
        assert other.roc_auc == pytest.approx(from_probs.roc_auc)
        assert other.loss == pytest.approx(from_probs.loss, rel=1e-5)
    keras_logits = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
    assert from_logits.loss == pytest.approx(float(keras_logits), rel=1e-5)
    keras_one_hot = keras.losses.CategoricalCrossentropy()(one_hot, probs.astype("float32"))
    assert from_one_hot.loss == pytest.approx(float(keras_one_hot), rel=1e-5)


def test_top_k_configurable_and_roc_auc_needs_every_class(multiclass):
    y, probs, _ = multiclass
    report = report_from_predictions(y, probs, top_k=3)
    assert report.top_k == 3
    assert report.top_k_accuracy == pytest.approx(metrics.top_k_accuracy_score(y, probs, k=3))
    missing = y != 9  # class 9 never occurs: one-vs-rest is undefined for it
    partial = report_from_predictions(y[missing], probs[missing])
    assert partial.roc_auc is None and partial.roc_auc_per_class[9] is None
    assert partial.support[9] == 0 and partial.recall[9] == 0.0  # zero_division=0
    pred = probs[missing].argmax(1)
    assert partial.averages["macro"]["f1"] == pytest.approx(
        metrics.f1_score(y[missing], pred, labels=np.arange(10), average="macro", zero_division=0)
    )
    assert partial.top_k_accuracy == pytest.approx(
        metrics.top_k_accuracy_score(y[missing], probs[missing], k=5, labels=np.arange(10))
    )
    few = report_from_predictions(y[y < 4], probs[y < 4][:, :4])  # 4 classes: no top-k
    assert few.top_k is None and few.top_k_accuracy is None


def test_binary_sigmoid_matches_sklearn(binary):
    y, p1, logits = binary
    report = report_from_predictions(y, p1)
    pred = (p1 > 0.5).astype(int)
    assert report.task == "binary" and report.class_names == ["0", "1"]
    assert 0.6 < report.accuracy < 0.99
    assert report.accuracy == pytest.approx(metrics.accuracy_score(y, pred))
    assert report.confusion_matrix == metrics.confusion_matrix(y, pred).tolist()
    assert report.roc_auc == pytest.approx(metrics.roc_auc_score(y, p1))
    assert report.f1 == pytest.approx(metrics.f1_score(y, pred, average=None).tolist())
    assert report.averages["binary"]["f1"] == pytest.approx(metrics.f1_score(y, pred))
    assert report.averages["macro"]["f1"] == pytest.approx(
        metrics.f1_score(y, pred, average="macro")
    )
    keras_loss = keras.losses.BinaryCrossentropy()(y[:, None], p1[:, None].astype("float32"))
    assert report.loss == pytest.approx(float(keras_loss), rel=1e-5)
    assert report.top_k is None and report.thresholds == [0.5]

    # The same model as logits, as a 2-way softmax, and with a stricter threshold.
    logit_report = report_from_predictions(y, logits, from_logits=True)
    assert logit_report.confusion_matrix == report.confusion_matrix
    assert logit_report.loss == pytest.approx(report.loss, rel=1e-5)
    softmax = report_from_predictions(y, np.stack([1 - p1, p1], axis=1))
    assert softmax.task == "binary" and softmax.confusion_matrix == report.confusion_matrix
    assert softmax.loss == pytest.approx(report.loss, rel=1e-5)
    strict = report_from_predictions(y, p1, thresholds=0.8)
    assert strict.confusion_matrix == metrics.confusion_matrix(y, (p1 > 0.8).astype(int)).tolist()


def test_multilabel_matches_sklearn(multilabel):
    labels, probs, logits = multilabel
    report = report_from_predictions(
        labels, probs, task="multilabel", class_names=["even", ">4", "prime"]
    )
    pred = (probs > 0.5).astype(int)
    p, r, f, s = metrics.precision_recall_fscore_support(labels, pred, zero_division=0)
    np.testing.assert_allclose(report.precision, p)
    np.testing.assert_allclose(report.recall, r)
    np.testing.assert_allclose(report.f1, f)
    assert report.support == s.tolist()
    for avg in ("micro", "macro", "weighted", "samples"):
        assert report.averages[avg]["f1"] == pytest.approx(
            metrics.f1_score(labels, pred, average=avg, zero_division=0)
        )
    assert report.accuracy == pytest.approx(metrics.accuracy_score(labels, pred))
    assert 0.1 < report.accuracy < 0.95
    assert report.hamming_loss == pytest.approx(metrics.hamming_loss(labels, pred))
    assert report.roc_auc == pytest.approx(metrics.roc_auc_score(labels, probs, average="macro"))
    assert report.roc_auc_per_class == pytest.approx(
        [metrics.roc_auc_score(labels[:, j], probs[:, j]) for j in range(3)]
    )
    keras_loss = keras.losses.BinaryCrossentropy()(labels, probs.astype("float32"))
    assert report.loss == pytest.approx(float(keras_loss), rel=1e-5)
    assert report.headline == {
        "subset_accuracy": report.accuracy,
        "macro_f1": report.averages["macro"]["f1"],
    }
    # Logits give the same report; "auto" sees rows with several 1s as multilabel.
    auto = report_from_predictions(labels, logits, from_logits=True)
    assert auto.task == "multilabel" and auto.f1 == pytest.approx(report.f1)
    assert auto.loss == pytest.approx(report.loss, rel=1e-5)


def test_tune_thresholds_maximises_f1(multilabel):
    labels, probs, logits = multilabel
    tuned = tune_thresholds(labels, probs)
    assert len(tuned) == 3 and all(0 < t < 1 for t in tuned)
    assert tune_thresholds(labels, logits, from_logits=True) == pytest.approx(tuned)
    for j, t in enumerate(tuned):
        best = metrics.f1_score(labels[:, j], probs[:, j] > t)
        grid = np.concatenate([np.linspace(0, 1, 201), probs[:, j]])
        assert best >= max(metrics.f1_score(labels[:, j], probs[:, j] > g) for g in grid) - 1e-12
        assert best >= metrics.f1_score(labels[:, j], probs[:, j] > 0.5)
    report = report_from_predictions(labels, probs, task="multilabel", thresholds=tuned)
    assert report.thresholds == pytest.approx(tuned)
    assert report.f1 == pytest.approx(
        metrics.f1_score(labels, (probs > np.array(tuned)).astype(int), average=None).tolist()
    )
    with pytest.warns(UserWarning, match="Label 1 has no positive example"):
        assert tune_thresholds([[1, 0], [0, 0]], [[0.9, 0.2], [0.1, 0.4]])[1] == 0.5


def test_regression_matches_sklearn(regression):
    y, pred = regression
    report = report_from_predictions(y, pred, class_names=["progression", "bmi"])
    assert report.task == "regression"
    assert report.mse == pytest.approx(
        metrics.mean_squared_error(y, pred, multioutput="raw_values").tolist()
    )
    assert report.mae == pytest.approx(
        metrics.mean_absolute_error(y, pred, multioutput="raw_values").tolist()
    )
    assert report.rmse == pytest.approx(
        np.sqrt(metrics.mean_squared_error(y, pred, multioutput="raw_values")).tolist()
    )
    assert report.r2 == pytest.approx(metrics.r2_score(y, pred, multioutput="raw_values").tolist())
    mean = report.averages["mean"]
    assert mean["mse"] == pytest.approx(metrics.mean_squared_error(y, pred))
    assert mean["mae"] == pytest.approx(metrics.mean_absolute_error(y, pred))
    assert mean["r2"] == pytest.approx(metrics.r2_score(y, pred))
    assert mean["rmse"] == pytest.approx(metrics.root_mean_squared_error(y, pred))
    assert 0.2 < report.r2[0] < 0.8
    residual = y - pred
    assert report.residuals["mean"] == pytest.approx(residual.mean(0).tolist())
    assert report.residuals["std"] == pytest.approx(residual.std(0).tolist())
    assert report.residuals["median"] == pytest.approx(np.median(residual, 0).tolist())
    assert report.residuals["max"] == pytest.approx(residual.max(0).tolist())
    keras_mse = keras.losses.MeanSquaredError()(y, pred)
    assert report.loss == pytest.approx(float(keras_mse), rel=1e-5)
    assert report.headline == {"r2": mean["r2"], "rmse": mean["rmse"]}
    single = report_from_predictions(y[:, 0], pred[:, 0])
    assert single.task == "regression" and single.class_names == ["output_0"]
    assert single.r2 == pytest.approx([metrics.r2_score(y[:, 0], pred[:, 0])])


def test_regression_undoes_standardisation():
    x, y = load_diabetes(return_X_y=True)
    mean, std = y[:300].mean(), y[:300].std()
    standard = LinearRegression().fit(x[:300], (y[:300] - mean) / std)
    raw = LinearRegression().fit(x[:300], y[:300])
    report = report_from_predictions(
        (y[300:] - mean) / std, standard.predict(x[300:]), target_scale=std, target_offset=mean
    )
    assert report.mse == pytest.approx([metrics.mean_squared_error(y[300:], raw.predict(x[300:]))])
    assert report.r2 == pytest.approx([metrics.r2_score(y[300:], raw.predict(x[300:]))])
    # The loss stays on the scale the model was trained on, as Keras reports it.
    assert report.loss == pytest.approx(report.mse[0] / std**2)


def test_auto_task_from_shapes_and_values(multiclass, binary, multilabel, regression):
    assert report_from_predictions(multiclass[0], multiclass[1]).task == "multiclass"
    assert report_from_predictions(binary[0], binary[1]).task == "binary"
    assert report_from_predictions(binary[0].astype(bool), binary[1][:, None]).task == "binary"
    assert report_from_predictions(multilabel[0], multilabel[1]).task == "multilabel"
    assert report_from_predictions(*regression).task == "regression"
    counts = np.array([3, 7, 1, 0, 12])  # whole-number targets, one output: regression
    assert report_from_predictions(counts, counts + 0.5).task == "regression"


# --- serialisation and text ----------------------------------------------------------------


def test_json_round_trip(multiclass, binary, multilabel, regression, tmp_path):
    reports = [
        report_from_predictions(multiclass[0], multiclass[1]),
        report_from_predictions(binary[0], binary[1]),
        report_from_predictions(*multilabel[:2]),
        report_from_predictions(*regression),
        report_from_predictions(
            multiclass[0][multiclass[0] != 9], multiclass[1][multiclass[0] != 9]
        ),
    ]
    for i, report in enumerate(reports):
        data = report.to_dict()
        assert "predictions" not in data
        assert json.loads(json.dumps(data, allow_nan=False)) == data  # plain Python values only
        text = report.to_json(tmp_path / f"r{i}.json")
        assert json.loads((tmp_path / f"r{i}.json").read_text()) == data
        assert EvaluationReport.from_json(text) == report
        again = EvaluationReport.from_json(tmp_path / f"r{i}.json")
        assert again == report and again.predictions is None
        assert str(again) == str(report)
    assert reports[-1].to_dict()["roc_auc"] is None
    with pytest.raises(
        ValueError, match=r"unknown keys \['accuracy_top5'\]. Valid keys are: \['task'"
    ):
        EvaluationReport.from_dict({**reports[0].to_dict(), "accuracy_top5": 1.0})


def test_str_is_a_readable_table(multiclass, binary, multilabel, regression):
    y, probs, _ = multiclass
    text = str(report_from_predictions(y, probs, class_names=[f"digit{i}" for i in range(10)]))
    assert "multiclass, 1497 examples, 10 classes" in text
    assert "top-5 accuracy" in text and "macro avg" in text and "weighted avg" in text
    f1 = metrics.f1_score(y, probs.argmax(1), average=None)
    for i in range(10):
        row = next(line for line in text.splitlines() if line.strip().startswith(f"digit{i} "))
        assert f"{f1[i]:.4f}" in row
    assert "Confusion matrix (rows: true class, columns: predicted):" in text
    assert "too many to print" in str(
        report_from_predictions(np.arange(30) % 25, np.eye(25)[np.arange(30) % 25])
    )
    text = str(report_from_predictions(*multilabel[:2], class_names=["even", ">4", "prime"]))
    assert all(
        w in text for w in ("prime", "samples avg", "micro avg", "Hamming loss", "threshold")
    )
    text = str(report_from_predictions(*regression))
    assert "output_1" in text and "R2" in text and "resid std" in text
    assert "F1 of class '1'" in str(report_from_predictions(*binary[:2]))


# --- running a model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_classifier(digits):
    x, y = digits
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])  # logits
    model.compile(
        keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x[:500], y[:500], batch_size=50, epochs=1, verbose=0)  # a few steps: imperfect
    return model


def test_evaluate_model_on_arrays_and_a_shuffled_dataset(keras_classifier, digits):
    x, y = digits
    x, y = x[500:900].astype("float32"), y[500:900]
    direct = report_from_predictions(y, keras_classifier.predict(x, verbose=0), from_logits=True)
    assert 0.3 < direct.accuracy < 0.97
    from_arrays = evaluate_model(keras_classifier, x, y)  # logits read off the linear head
    assert from_arrays == direct
    # A pipeline that reshuffles each pass: labels must stay with their own predictions.
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(400, seed=1).batch(64)
    from_dataset = evaluate_model(keras_classifier, ds)
    assert from_dataset.confusion_matrix == direct.confusion_matrix
    assert from_dataset.loss == pytest.approx(direct.loss, rel=1e-5)
    keras_loss = keras_classifier.compute_loss(y=y, y_pred=keras_classifier(x))
    assert from_dataset.loss == pytest.approx(float(keras_loss), rel=1e-4)

    softmax = keras.Sequential([keras_classifier, keras.layers.Softmax()])
    assert evaluate_model(softmax, x, y).confusion_matrix == direct.confusion_matrix


def test_evaluate_model_errors(keras_classifier, digits):
    x, y = digits
    x = x[:64].astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y[:64]))
    with pytest.raises(ValueError, match=r"unbatched|single examples.*dataset.batch\(32\)"):
        evaluate_model(keras_classifier, ds)
    with pytest.raises(ValueError, match="Argument `y` must be None when `x` is a tf.data.Dataset"):
        evaluate_model(keras_classifier, ds.batch(8), y[:64])
    with pytest.raises(ValueError, match=r"Argument `y` is required when `x` is an array"):
        evaluate_model(keras_classifier, x)
    weighted = tf.data.Dataset.from_tensor_slices((x, y[:64], np.ones(64))).batch(8)
    with pytest.raises(ValueError, match=r"batch 0 must be an \(x, y\) pair.*sample weights"):
        evaluate_model(keras_classifier, weighted)
    inputs = keras.Input((64,))
    two = keras.Model(inputs, [keras.layers.Dense(10)(inputs), keras.layers.Dense(1)(inputs)])
    with pytest.raises(ValueError, match="Argument `model` has 2 outputs"):
        evaluate_model(two, x, y[:64])

    class Opaque(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(10)

        def call(self, inputs):
            return self.dense(inputs)

    with pytest.raises(ValueError, match="Argument `from_logits` is None and cannot be told"):
        evaluate_model(Opaque(), x, y[:64])
    assert evaluate_model(Opaque(), x, y[:64], from_logits=True).num_examples == 64


# --- plots -------------------------------------------------------------------------------------


def test_plot_report_for_each_task(multiclass, binary, multilabel, regression, tmp_path):
    reports = {
        "multiclass": report_from_predictions(multiclass[0], multiclass[1]),
        "binary": report_from_predictions(binary[0], binary[1], class_names=["zero", "one"]),
        "multilabel": report_from_predictions(*multilabel[:2], class_names=["even", ">4", "prime"]),
        "regression": report_from_predictions(*regression),
    }
    drawn = {}
    for task, report in reports.items():
        path = plot_report(report, tmp_path / f"{task}.png")
        assert path == str(tmp_path / f"{task}.png")
        drawn[task] = _png(path)
    # Classification: the confusion matrix (the "Blues" map) beside green F1 bars only.
    for task in ("multiclass", "binary"):
        assert _pixels_of(drawn[task], "tab:green") > 500, task
        assert _pixels_of(drawn[task], "tab:orange") == 0, task
        assert _pixels_of(drawn[task], _blues(1.0)) > 0, task  # the colour bar
    assert drawn["multiclass"].shape[1] > drawn["binary"].shape[1]  # 10 classes vs 2
    # Multilabel: precision, recall and F1 bars per label, no confusion matrix.
    for colour in ("tab:blue", "tab:orange", "tab:green"):
        assert _pixels_of(drawn["multilabel"], colour) > 300, colour
    assert _pixels_of(drawn["multilabel"], _blues(1.0)) == 0
    # Regression: two panels (residuals, predicted vs true) per output, 4.2 inches a row.
    assert drawn["regression"].shape[:2] == (2 * 420, 1100)
    assert _pixels_of(drawn["regression"], "tab:green") == 0
    assert sorted(os.listdir(tmp_path)) == sorted(f"{t}.png" for t in reports)  # no leftovers
    # Classification plots need only the figures, so a report read from JSON plots too.
    again = EvaluationReport.from_json(reports["multiclass"].to_json())
    _png(plot_report(again, tmp_path / "again.png"))


def test_plot_report_errors(regression, tmp_path):
    report = report_from_predictions(*regression)
    with pytest.raises(ValueError, match="must end with '.png'"):
        plot_report(report, tmp_path / "report.jpg")
    with pytest.raises(ValueError, match="holds no predictions"):
        plot_report(EvaluationReport.from_json(report.to_json()), tmp_path / "r.png")
    with pytest.raises(
        TypeError, match="must be a kerasft.evaluation.EvaluationReport. Received: dict"
    ):
        plot_report(report.to_dict(), tmp_path / "r.png")
    assert os.listdir(tmp_path) == []


# --- bad inputs --------------------------------------------------------------------------------

_P3 = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]


@pytest.mark.parametrize(
    ("y_true", "y_pred", "kwargs", "message"),
    [
        (
            [0, 1],
            _P3,
            {},
            "Arguments `y_true` and `y_pred` must hold the same number of examples. "
            "Received: 2 labels and 3 predictions.",
        ),
        (
            [0, 1, 3],
            _P3,
            {},
            "Argument `y_true`: label 3 is out of range for 3 classes; labels must be in [0, 3).",
        ),
        (
            [1, 2, 3],
            _P3,
            {},
            "labels must be in [0, 3). HINT: the labels look 1-based; subtract 1.",
        ),
        ([0, -1, 2], _P3, {}, "Argument `y_true`: label -1 is out of range for 3 classes"),
        (
            [0, 1, 2],
            [[0.7, 0.2, 0.1], [np.nan, 0.8, 0.1], [0.2, 0.2, 0.6]],
            {},
            "Argument `y_pred`: 1 of 9 values are NaN or infinite (first in row 1); "
            "values must be finite.",
        ),
        ([0, np.nan, 2], _P3, {}, "Argument `y_true`: 1 of 3 values are NaN or infinite"),
        (
            [0.5, 1.2, 2.0],
            _P3,
            {"task": "multiclass"},
            "Argument `y_true`: float targets such as 0.5 with task='multiclass'; class labels "
            "must be whole numbers in [0, 3) or one-hot rows. For float targets use "
            "task='regression'.",
        ),
        (
            [[1, 0], [0, 1], [1, 0]],
            _P3,
            {"task": "multiclass"},
            "Argument `y_true`: a label matrix of width 2 does not match the 3 output(s) of "
            "`y_pred`",
        ),
        (
            [[1, 1, 0], [0, 1, 0], [1, 0, 0]],
            _P3,
            {"task": "multiclass"},
            "rows of a label matrix must be one-hot for task='multiclass'; row 0 is [1, 1, 0]. "
            "For several labels per example use task='multilabel'.",
        ),
        (
            [[1, 1], [0, 1], [1, 0]],
            _P3,
            {"task": "multilabel"},
            "Argument `y_true`: a label matrix of width 2 does not match the 3 output(s) of "
            "`y_pred`; expected shape (n, 3).",
        ),
        (
            [0, 1, 2],
            _P3,
            {"task": "multilabel"},
            "Argument `y_true`: task='multilabel' needs a 0/1 label matrix of shape (n, 3). "
            "Received: shape (3,).",
        ),
        (
            [[1, 2, 0], [0, 1, 0], [1, 0, 0]],
            _P3,
            {"task": "multilabel"},
            "a multilabel matrix holds 0/1 values, but row 0, column 1 is 2",
        ),
        (
            [0, 1, 2],
            [0.1, 0.9, 0.3],
            {"task": "multiclass"},
            "task='multiclass' needs one output per class (at least 2), but the outputs have "
            "shape (3,). One sigmoid unit is task='binary'.",
        ),
        (
            [0, 1, 1],
            _P3,
            {"task": "binary"},
            "task='binary' takes one sigmoid unit or a 2-way softmax, but the outputs have 3 "
            "columns. For 3 classes use task='multiclass'; for 3 independent labels, "
            "task='multilabel'.",
        ),
        (
            [0, 1, 2],
            [0.1, 0.9, 0.3],
            {"task": "binary"},
            "Argument `y_true`: label 2 is out of range for 2 classes; labels must be in [0, 2).",
        ),
        (
            [0, 1, 2],
            [[2.0, -1.0, 0.5], [0.1, 3.0, 0.1], [0.0, 0.0, 1.0]],
            {},
            "Argument `y_pred`: value -1 is outside [0, 1], so these outputs are not "
            "probabilities. Pass from_logits=True",
        ),
        (
            [0, 1, 2],
            [[1.0, 2.0], [0.5, 0.5], [3.0, 1.0]],
            {"task": "regression"},
            "Argument `y_true`: targets of width 1 do not match the 2 output(s) of `y_pred`; "
            "regression needs one target per output. HINT: if these are class ids and class "
            "scores, use task='multiclass'.",
        ),
        (
            [0, 1, 2],
            _P3,
            {"task": "clustering"},
            "Argument `task` must be 'auto' or one of ['multiclass', 'binary', 'multilabel', "
            "'regression']. Received: task='clustering'",
        ),
        (
            [0, 1, 2],
            _P3,
            {"class_names": ["a", "b"]},
            "Argument `class_names` must hold one name per class (3). Received 2 names: ['a', 'b']",
        ),
        (
            [0, 1, 2],
            _P3,
            {"top_k": 3},
            "Argument `top_k` must be an integer in [1, 3) for 3 classes. Received: top_k=3",
        ),
        (
            [0, 1, 2],
            _P3,
            {"thresholds": 0.3},
            "Argument `thresholds` applies to task 'binary' or 'multilabel' only, but the task "
            "is 'multiclass'. Received: thresholds=0.3",
        ),
        (
            [0, 1, 1],
            [0.2, 0.8, 0.6],
            {"thresholds": [0.5, 0.6]},
            "Argument `thresholds`: a binary task takes one threshold. "
            "Received: thresholds=[0.5, 0.6]",
        ),
        (
            [[1, 0], [0, 1]],
            [[0.9, 0.2], [0.3, 0.8]],
            {"task": "multilabel", "thresholds": [0.5, 1.5]},
            "Argument `thresholds` must be a probability in [0, 1] or one per label (2). "
            "Received: thresholds=[0.5, 1.5]",
        ),
        (
            [1.5, 2.5, 3.5],
            [1.0, 2.0, 3.0],
            {"target_scale": 0.0},
            "Argument `target_scale` must be a finite non-zero number or one per output (1). "
            "Received: target_scale=0.0",
        ),
        (
            [1.5, 2.5, 3.5],
            [1.0, 2.0, 3.0],
            {"top_k": 2},
            "Argument `top_k` applies to task 'multiclass' only, but the task is 'regression'.",
        ),
        ([], [], {}, "Argument `y_true` is empty: there is nothing to evaluate."),
        (
            [0, 1, 2],
            np.zeros((3, 2, 2)),
            {},
            "Argument `y_pred` must be 1-D (examples,) or 2-D (examples, columns). "
            "Received: shape (3, 2, 2)",
        ),
    ],
)
def test_bad_inputs_name_the_argument_value_and_what_is_valid(y_true, y_pred, kwargs, message):
    with pytest.raises(ValueError) as info:
        report_from_predictions(y_true, y_pred, **kwargs)
    assert message in str(info.value)


def test_non_numeric_labels_are_a_type_error():
    with pytest.raises(
        TypeError,
        match=r"Argument `y_true` must hold numbers. Received dtype <U3 \(first value \['cat'\]\). "
        r"Map class names to ids first.",
    ):
        report_from_predictions(["cat", "dog"], [[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(
        ValueError, match="needs at least 2 labels; with one label use task='binary'"
    ):
        report_from_predictions([[1], [0]], [[0.9], [0.2]], task="multilabel")
    with pytest.raises(ValueError, match="Argument `task` must be one of"):
        EvaluationReport(task="ranking", num_examples=1, class_names=[], loss=0.0)


def test_dataframe_with_a_text_column_fine_tunes_and_evaluates():
    # pandas 3 keeps text in its own string dtype: the column was taken for "not numeric"
    # and the call failed; result.evaluate(frame) now also reuses the run's label_columns.
    import pandas as pd

    texts = ["good movie", "bad movie", "great film", "awful film", "nice", "terrible"] * 6
    frame = pd.DataFrame({"review": texts, "label": [1, 0, 1, 0, 1, 0] * 6})
    vectorize = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=3)
    vectorize.adapt(texts)
    inputs = keras.Input((), dtype="string")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4)(vectorize(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))
    result = kerasft.finetune(
        model, frame, label_columns="label", head_epochs=1, epochs=1, verbose=0
    )
    report = result.evaluate(frame)
    assert report.num_examples == len(frame)
    assert (
        report["accuracy"]
        == evaluation.evaluate(result.model, frame, label_columns="label")["accuracy"]
    )
