"""Model cards: written by every export, their numbers those of the run, Markdown and JSON twins."""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import stat

import keras
import numpy as np
import pytest
from conftest import ROOT

import kerasft
from kerasft import datasets
from kerasft.export import (
    CARD_FILE,
    CARD_JSON,
    ModelCard,
    export_files,
    export_model,
    model_card,
)

NAMES = [f"digit_{i}" for i in range(10)]


@pytest.fixture(scope="module")
def split():
    return datasets.digits_few_shot(shots=10)


@pytest.fixture(scope="module")
def result(split, shipped_model_path):
    return kerasft.finetune(
        shipped_model_path, (split.x_train, split.y_train), head_epochs=1, epochs=2, verbose=0
    )


@pytest.fixture(scope="module")
def report(result, split):
    return result.evaluate((split.x_test, split.y_test), class_names=NAMES)


@pytest.fixture(scope="module")
def exported(result, report, tmp_path_factory):
    path = tmp_path_factory.mktemp("card") / "digits"
    return result.export(str(path), class_names=NAMES, evaluation=report)


def test_export_writes_a_card_with_the_runs_numbers(exported, result, report):
    assert sorted(f for f in os.listdir(exported) if "card" in f.lower()) == [CARD_FILE, CARD_JSON]
    card = ModelCard.from_json(os.path.join(exported, CARD_JSON))
    assert card == exported.card

    model = result.model
    assert card.model["name"] == model.name
    assert card.model["parameters"] == model.count_params() == 468_394
    assert card.model["input"] == {"name": "image", "shape": [None, 28, 28, 1], "dtype": "float32"}
    assert card.model["class_names"] == NAMES

    assert card.data["task"] == "classification" and card.data["num_classes"] == 10
    assert card.data["num_examples"] == result.spec.num_examples == 100
    assert card.data["examples_per_class"] == {
        NAMES[k]: v for k, v in result.spec.class_counts.items()
    }

    assert card.recipe == {
        "name": "lp-ft",
        "options": {"head_epochs": 1, "epochs": 2, "verbose": 0},
    }
    assert (
        [p["name"] for p in card.phases] == [p.name for p in result.phases] == ["head", "finetune"]
    )
    for row, phase in zip(card.phases, result.phases):
        assert row["epochs"] == phase.epochs
        assert row["trainable_params"] == phase.trainable_params
        assert row["seconds"] == round(phase.seconds, 2)
        assert row["learning_rate"] == phase.learning_rate
        assert row["best"] == min(phase.history["val_loss"])
    assert card.training["best_score"] == result.best_score
    assert card.training["best_phase"] == result.best_phase

    assert card.evaluation == report.to_dict()
    (export,) = card.exports
    assert export["format"] == "saved_model" and export["file"] == "digits"
    assert export["size_bytes"] == exported.metadata["size_bytes"] > 1_000_000
    assert set(card.versions) == {"kerasft", "keras", "tensorflow", "numpy", "ai-edge-litert"}
    assert card.versions["keras"] == keras.__version__
    when = datetime.datetime.strptime(card.date, "%Y-%m-%dT%H:%M:%SZ")
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert abs((now - when).total_seconds()) < 600


def test_markdown_renders_the_tables(exported, report):
    with open(os.path.join(exported, CARD_FILE), encoding="utf-8") as f:
        markdown = f.read()
    assert markdown == exported.card.to_markdown()
    for heading in (
        "# Model card: mnist_cnn",
        "## Model",
        "## Data",
        "## Training",
        "## Evaluation",
        "## Exports",
        "## Provenance",
    ):
        assert f"\n{heading}\n" in "\n" + markdown
    lines = markdown.splitlines()
    header = lines.index("| class | precision | recall | f1 | support |")
    assert lines[header + 1] == "| --- | ---: | ---: | ---: | ---: |"
    for i, name in enumerate(NAMES):
        assert lines[header + 2 + i] == (
            f"| {name} | {report.precision[i]:.4f} | {report.recall[i]:.4f} | {report.f1[i]:.4f} | "
            f"{report.support[i]} |"
        )
    assert f"| accuracy | {report.accuracy:.4f} |" in lines
    assert "| true \\ predicted | " + " | ".join(NAMES) + " |" in lines
    assert (
        "| phase | epochs | trainable params | seconds | learning rate | best val_loss |" in lines
    )
    assert "| `head_epochs` | 1 |" in lines
    assert any(line.startswith("| saved_model | `digits` | ") for line in lines)


def test_json_round_trips(exported):
    card = exported.card
    assert ModelCard.from_dict(card.to_dict()) == card
    assert ModelCard.from_json(card.to_json()) == card
    assert json.loads(card.to_json()) == card.to_dict()
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]. Valid keys are: \['title'"):
        ModelCard.from_dict({**card.to_dict(), "colour": "blue"})


def test_tflite_card_sits_beside_the_file(result, split, tmp_path):
    path = result.export(
        str(tmp_path / "digits.tflite"),
        format="tflite",
        quantize="dynamic",
        verify_data=(split.x_test, split.y_test),
    )
    files = export_files(path)
    assert files["card"] == str(tmp_path / "digits.MODEL_CARD.md")
    card = ModelCard.from_json(files["card_json"])
    (export,) = card.exports
    assert export["size_bytes"] == os.path.getsize(path)
    assert export["check"]["accuracy"] == path.check.accuracy
    # Evaluated on verify_data's labels, since no report was given.
    assert card.evaluation["num_examples"] == 1697
    assert card.evaluation["accuracy"] == pytest.approx(path.check.keras_accuracy)
    assert card.evaluation_data == "given as `verify_data`"
    for name in os.listdir(tmp_path):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644


def test_plain_export_writes_what_is_known(shipped_model_path, tmp_path):
    model = keras.models.load_model(shipped_model_path)
    path = export_model(model, tmp_path / "plain")
    card = ModelCard.from_json(os.path.join(path, CARD_JSON))
    assert card.model["parameters"] == 468_394 and "class_names" not in card.model
    assert card.data is card.recipe is card.phases is card.training is card.evaluation is None
    assert card.exports[0]["format"] == "saved_model"
    markdown = card.to_markdown()
    assert "## Training" not in markdown and "## Evaluation" not in markdown


def test_model_card_and_write(result, report, tmp_path):
    card = model_card(result=result, evaluation=report, title="Digits", notes=["A note."])
    assert card.title == "Digits" and card.model["name"] == result.model.name
    md, js = card.write(tmp_path / "cards", prefix="run1.")
    assert os.path.basename(md) == "run1.MODEL_CARD.md" and ModelCard.from_json(js) == card
    assert sorted(os.listdir(tmp_path / "cards")) == ["run1.MODEL_CARD.md", "run1.model_card.json"]
    with pytest.raises(TypeError, match=r"needs `model` or `result`"):
        model_card()
    with pytest.raises(
        TypeError,
        match=r"Argument `evaluation` must be a kerasft.evaluation."
        r"EvaluationReport.*Received: evaluation of type float",
    ):
        model_card(result.model, evaluation=0.9)


def test_shipped_model_readme_is_its_generated_card(shipped_model_path):
    spec = importlib.util.spec_from_file_location(
        "pretrain_mnist", os.path.join(ROOT, "examples", "pretrain_mnist.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    card = module.shipped_model_card(shipped_model_path)
    with open(os.path.join(ROOT, "saved_models", "README.md"), encoding="utf-8") as f:
        shipped = f.read()

    def body(text):  # the date and versions may differ
        return text.split("## Provenance")[0]

    assert body(shipped) == body(card.to_markdown())
    assert card.metrics == {"accuracy on the 10,000 MNIST test images": 0.9869}
    assert round(card.evaluation["accuracy"], 3) == 0.660  # zero-shot on the 1,797 digits
    assert "| parameters | 468,394 |" in shipped


def _three_class_model():
    inputs = keras.Input((4,), name="x")
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(inputs))


def test_card_says_what_the_given_evaluation_ran_on(tmp_path):
    # The card said "held-out validation examples of the fine-tuning run" for a report
    # computed on the user's test set, because the run's sample was the verify data.
    from kerasft.evaluation import evaluate_model
    from kerasft.export import ExportSample, export_model

    model = _three_class_model()
    rng = np.random.default_rng(0)
    x_val, y_val = rng.normal(size=(20, 4)).astype("float32"), rng.integers(0, 3, 20)
    x_test, y_test = rng.normal(size=(50, 4)).astype("float32"), rng.integers(0, 3, 50)
    sample = ExportSample(inputs=x_val, held_out=(x_val, y_val))
    on_test = evaluate_model(model, x_test, y_test)
    path = export_model(model, tmp_path / "given", verify_data=sample, evaluation=on_test)
    assert path.card.evaluation["num_examples"] == 50
    assert "held-out validation" not in path.card.evaluation_data
    named = export_model(
        model,
        tmp_path / "named",
        verify_data=sample,
        evaluation=on_test,
        evaluation_data="the 50 test images",
    )
    assert named.card.evaluation_data == "the 50 test images"
    own = export_model(model, tmp_path / "own", verify_data=sample)
    assert own.card.evaluation["num_examples"] == 20
    assert own.card.evaluation_data == "held-out validation examples of the fine-tuning run"


def test_names_with_markdown_or_html_cannot_break_the_card(tmp_path):
    from kerasft.evaluation import evaluate_model
    from kerasft.export import export_model

    names = ["<script>alert(1)</script>", "a|b", "*bold* `code`"]
    model = _three_class_model()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 4)).astype("float32"), rng.integers(0, 3, 30)
    path = export_model(
        model,
        tmp_path / "m",
        class_names=names,
        evaluation=evaluate_model(model, x, y, class_names=names),
    )
    with open(os.path.join(path, CARD_FILE), encoding="utf-8") as f:
        markdown = f.read()
    assert "<script>" not in markdown
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    tables, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    assert len(tables) >= 5
    for table in tables:  # each row keeps the header's columns: no unescaped | in a cell
        widths = {len(re.findall(r"(?<!\\)\|", row)) for row in table}
        assert len(widths) == 1, table
    assert ModelCard.from_json(os.path.join(path, CARD_JSON)).model["class_names"] == names
