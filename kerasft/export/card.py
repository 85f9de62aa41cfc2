"""Model cards: what a model is, what it was trained on and how, and how well it does.

Every export of `export_model` writes a card beside the model, as Markdown for people
(`MODEL_CARD.md`) and as JSON for tools (`model_card.json`), from what is known: the
model itself always (name, parameters, input signature, classes); the data, recipe,
options and phases when it comes from a `kerasft.finetune` result; an evaluation report;
the exported files with their sizes and the LiteRT check of a TFLite file; library
versions and the date. `model_card` builds one, `ModelCard.write` writes both files
atomically, and `ModelCard.from_json` reads the JSON twin back.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import importlib.metadata
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kerasft._fileio import atomic_file
from kerasft._records import read_json, record_from_dict

__all__ = ["CARD_FILE", "CARD_JSON", "ModelCard", "model_card", "library_versions"]

CARD_FILE = "MODEL_CARD.md"
CARD_JSON = "model_card.json"
_LIBRARIES = ("kerasft", "keras", "tensorflow", "numpy", "ai-edge-litert")
_MAX_MATRIX_CLASSES = 20


@dataclass
class ModelCard:
    """A model card; every field holds plain JSON values, so `from_dict(to_dict())` is equal.

    Attributes:
        title: the card's heading.
        model: `name`, `parameters`, `trainable_parameters`, `input` (`name`, `shape`,
            `dtype`), `output_kind`, `num_classes`, `class_names`.
        date: when the card was made (ISO 8601, UTC).
        versions: library versions (kerasft, keras, tensorflow, numpy, ai-edge-litert).
        description: a paragraph on what the model is. Defaults to `None`.
        data: the training data: `task`, `num_classes`, `label_mode`, `num_examples`,
            `examples_per_class` (class name -> count), `description`. Defaults to `None`.
        recipe: `name` and `options`, the non-default keywords of `finetune`. Defaults to `None`.
        phases: one dict per training phase: `name`, `epochs`, `trainable_params`,
            `seconds`, `learning_rate`, `best` (best value of `monitor` in the phase).
            Defaults to `None`.
        training: `monitor`, `best_score`, `best_phase` of a run, or free-form facts
            (optimizer, epochs...) for a model trained otherwise. Defaults to `None`.
        evaluation: an `EvaluationReport.to_dict()`. Defaults to `None`.
        evaluation_data: what the evaluation ran on. Defaults to `None`.
        metrics: further figures, by description (e.g. accuracies measured elsewhere).
            Defaults to `None`.
        exports: one dict per exported file: `format`, `file`, `size_bytes`, `quantize`,
            `io_dtype`, `check` (a `TFLiteCheck.to_dict()`). Defaults to `[]`.
        intended_use: what the model is for, and not for. Defaults to `None`.
        notes: further remarks, one paragraph each. Defaults to `[]`.
    """

    title: str
    model: dict[str, Any]
    date: str
    versions: dict[str, str | None]
    description: str | None = None
    data: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    phases: list[dict[str, Any]] | None = None
    training: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    evaluation_data: str | None = None
    metrics: dict[str, Any] | None = None
    exports: list[dict[str, Any]] = field(default_factory=list)
    intended_use: str | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, _plain(getattr(self, f.name)))

    def to_dict(self) -> dict[str, Any]:
        """Every field, as plain Python values (JSON-serialisable)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self, *, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """Rebuild a card from `to_dict()` output.

        Raises:
            ValueError: if `data` has keys that are not card fields.
        """
        return record_from_dict(cls, data)

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> ModelCard:
        """Rebuild a card from JSON text or from the path of a `model_card.json`."""
        return cls.from_dict(read_json(source))

    def to_markdown(self) -> str:
        """The card as Markdown: sections with tables, in the order a reader asks."""
        parts = [f"# {self.title}", ""]
        if self.description:
            parts += [self.description, ""]
        parts += _model_section(self.model)
        if self.data:
            parts += _data_section(self.data)
        if self.recipe or self.phases or self.training:
            parts += _training_section(self.recipe, self.phases, self.training)
        if self.evaluation or self.metrics:
            parts += _evaluation_section(self.evaluation, self.evaluation_data, self.metrics)
        if self.exports:
            parts += _exports_section(self.exports)
        if self.intended_use:
            parts += ["## Intended use", "", self.intended_use, ""]
        if self.notes:
            parts += ["## Notes", ""] + [line for note in self.notes for line in (note, "")]
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items() if v)
        parts += ["## Provenance", "", f"Card written {self.date} with {versions}.", ""]
        return "\n".join(parts)

    def write(self, directory: str | os.PathLike, *, prefix: str = "") -> tuple[str, str]:
        """Write `MODEL_CARD.md` and `model_card.json` into `directory`, each atomically.

        Args:
            directory: where to write (created if missing).
            prefix: put before both file names (`"digits."` gives `digits.MODEL_CARD.md`).
                Defaults to `""`.

        Returns:
            The paths of the Markdown and the JSON file.
        """
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        paths = (
            os.path.join(directory, prefix + CARD_FILE),
            os.path.join(directory, prefix + CARD_JSON),
        )
        for path, text in zip(paths, (self.to_markdown(), self.to_json() + "\n")):
            with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
        return paths


def model_card(
    model: Any = None,
    *,
    result: Any = None,
    class_names: Sequence[str] | None = None,
    evaluation: Any = None,
    evaluation_data: str | None = None,
    exports: Sequence[Mapping[str, Any]] = (),
    title: str | None = None,
    description: str | None = None,
    data: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    intended_use: str | None = None,
    notes: Sequence[str] = (),
    date: str | None = None,
) -> ModelCard:
    """Build the model card of `model` from what is known about it.

    Example:

    ```python
    card = model_card(result.model, result=result, class_names=names,
                      evaluation=result.evaluate((x_test, y_test)))
    print(card.to_markdown())
    card.write("exported/digits")  # MODEL_CARD.md and model_card.json
    ```

    Args:
        model: the Keras model. Defaults to `None` (`result.model`).
        result: the `kerasft.FinetuneResult` it came from, for the data, the recipe and
            options, and the phases. Defaults to `None`.
        class_names: one name per class. Defaults to `None`.
        evaluation: a `kerasft.evaluation.EvaluationReport` (or its `to_dict()`).
            Defaults to `None`.
        evaluation_data: what the evaluation ran on. Defaults to `None`.
        exports: the exported files (`format`, `file`, `size_bytes`, ...). Defaults to `()`.
        title: the heading, as Markdown. Defaults to `None` ("Model card: <model name>",
            the name escaped).
        description: a paragraph on what the model is, as Markdown (title, description,
            intended use, notes, `evaluation_data`, `metrics` and the facts in `data` and
            `training` are the caller's Markdown; every name the card takes from the model,
            the data or the files (model, input, class and file names) is escaped).
            Defaults to `None`.
        data: facts on the training data, merged over what `result` says. Defaults to `None`.
        training: facts on the training, merged over what `result` says (for a model
            trained without `finetune`). Defaults to `None`.
        metrics: further figures, by description. Defaults to `None`.
        intended_use: what the model is for. Defaults to `None`.
        notes: further paragraphs. Defaults to `()`.
        date: the card's date. Defaults to `None` (now, UTC).

    Returns:
        A `ModelCard`.

    Raises:
        TypeError: if neither `model` nor `result` is given, or `evaluation` is not a report.
    """
    if model is None:
        if result is None:
            raise TypeError(
                "model_card() needs `model` or `result`. Received: model=None, result=None"
            )
        model = result.model
    if evaluation is not None and not isinstance(evaluation, Mapping):
        if not hasattr(evaluation, "to_dict"):
            raise TypeError(
                "Argument `evaluation` must be a kerasft.evaluation.EvaluationReport or its "
                f"to_dict(). Received: evaluation of type {type(evaluation).__name__}"
            )
        evaluation = evaluation.to_dict()
    names = list(class_names) if class_names is not None else None
    data_facts = _data_facts(result, names) if result is not None else {}
    if data:
        data_facts.update(data)
    training_facts = _run_facts(result) if result is not None else {}
    if training:
        training_facts.update(training)
    return ModelCard(
        title=title or f"Model card: {_text(model.name)}",
        model=_model_facts(model, names),
        date=date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        versions=library_versions(),
        description=description,
        data=data_facts or None,
        recipe=_recipe_facts(result) if result is not None else None,
        phases=_phase_facts(result) if result is not None and result.phases else None,
        training=training_facts or None,
        evaluation=evaluation,
        evaluation_data=evaluation_data,
        metrics=dict(metrics) if metrics else None,
        exports=[dict(e) for e in exports],
        intended_use=intended_use,
        notes=list(notes),
    )


def library_versions() -> dict[str, str | None]:
    """Installed versions of kerasft, keras, tensorflow, numpy and ai-edge-litert."""
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# ---------------------------------------------------------------------------------------
# Facts


def _model_facts(model: Any, names: list[str] | None) -> dict[str, Any]:
    facts: dict[str, Any] = {"name": model.name, "parameters": int(model.count_params())}
    facts["trainable_parameters"] = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    inputs = [
        {"name": t.name, "shape": list(t.shape), "dtype": str(getattr(t.dtype, "name", t.dtype))}
        for t in getattr(model, "inputs", None) or []
    ]
    if len(inputs) == 1:
        facts["input"] = inputs[0]
    elif inputs:
        facts["inputs"] = inputs
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) == 1:
        facts["output_shape"] = list(outputs[0].shape)
    if names is not None:
        facts["class_names"] = names
    return facts


def _data_facts(result: Any, names: list[str] | None) -> dict[str, Any]:
    spec = result.spec
    facts: dict[str, Any] = {
        "task": result.task,
        "num_classes": result.num_classes,
        "label_mode": result.label_mode,
    }
    if spec is None:
        return facts
    facts["num_examples"] = int(spec.num_examples)
    counts = dict(sorted(spec.class_counts.items()))
    if counts:

        def label(k: int) -> str:
            return names[k] if names is not None and 0 <= k < len(names) else str(k)

        facts["examples_per_class"] = {label(int(k)): int(v) for k, v in counts.items()}
    return facts


def _recipe_facts(result: Any) -> dict[str, Any] | None:
    options = result.options
    if options is None:
        return None
    given = options.keywords()
    defaults = type(options)().keywords()
    changed = {k: _describe(v) for k, v in given.items() if _differs(v, defaults.get(k))}
    return {"name": options.recipe.kind, "options": changed}


def _run_facts(result: Any) -> dict[str, Any]:
    return {
        "monitor": result.monitor,
        "best_score": result.best_score,
        "best_phase": result.best_phase,
        "batch_size": result.batch_size,
    }


def _phase_facts(result: Any) -> list[dict[str, Any]]:
    from kerasft.callbacks import monitor_mode

    best = min if monitor_mode(result.monitor) == "min" else max
    rows = []
    for p in result.phases:
        values = [
            v for v in p.history.get(result.monitor, []) if v is not None and math.isfinite(v)
        ]
        rows.append(
            {
                "name": p.name,
                "epochs": int(p.epochs),
                "trainable_params": int(p.trainable_params),
                "seconds": round(float(p.seconds), 2),
                "learning_rate": float(p.learning_rate),
                "best": float(best(values)) if values else None,
            }
        )
    return rows


def _differs(value: Any, default: Any) -> bool:
    if value is default:
        return False
    try:
        return bool(value != default)
    except Exception:  # arrays and other objects without a truth value for !=
        return True


def _describe(value: Any) -> Any:
    """A JSON-friendly, short description of an option's value."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) or hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"array of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return {str(k): _describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    text = repr(value)
    return type(value).__name__ if len(text) > 80 or text.startswith("<") else text


def _plain(value: Any) -> Any:
    """Plain JSON values: lists for tuples and arrays, str keys, Python numbers, None for NaN."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------
# Markdown
#
# Names in a card come from users (class names, file names, descriptions of data): each
# goes through `_text` or `_code`, so that `<script>`, `|` or `*` in a class name shows as
# typed instead of breaking a table or turning into HTML. Cells already written as
# Markdown by this module are `_Md` strings, left as they are.


class _Md(str):
    """Markdown written by this module (not user text): not escaped again."""


# Characters that start Markdown syntax; "_" only where it could open or close emphasis
# (GitHub leaves digit_0 alone), and <, > and & become HTML entities.
_MARKDOWN_SYNTAX = re.compile(r"[\\`*\[\]|~#]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def _text(value: Any) -> _Md:
    """User text as inline Markdown that renders as typed: HTML and Markdown escaped, one line."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return _Md(_MARKDOWN_SYNTAX.sub(lambda m: "\\" + m.group(0), text))


def _code(value: Any) -> _Md:
    """User text in a code span: literal, whatever backticks or pipes it holds."""
    text = " ".join(str(value).split())
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    # GitHub's tables split cells on | even inside code spans, unless it is escaped.
    return _Md(f"{fence}{pad}{text.replace('|', chr(92) + '|')}{pad}{fence}")


def _table(
    header: Sequence[Any], rows: Sequence[Sequence[Any]], align: str | None = None
) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(_cell(c) for c in header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, _Md):
        return value
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    # The caller's own text (facts, metrics): Markdown, kept inside its cell.
    return str(value).replace("|", "\\|").replace("\n", " ")


def _f4(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _size(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n / 1024**2:.2f} MiB" if n >= 1024**2 else f"{n / 1024:.1f} KiB"


def _model_section(model: dict[str, Any]) -> list[str]:
    rows = [
        ("name", _code(model["name"])),
        ("parameters", model.get("parameters")),
        ("trainable parameters", model.get("trainable_parameters")),
    ]
    for i in model.get("inputs") or ([model["input"]] if "input" in model else []):
        shape = "(" + ", ".join("batch" if d is None else str(d) for d in i["shape"]) + ")"
        rows.append(("input", _Md(f"{_code(i['name'])}: {_text(i['dtype'])} {shape}")))
    if "output_shape" in model:
        rows.append(
            (
                "output",
                "("
                + ", ".join("batch" if d is None else str(d) for d in model["output_shape"])
                + ")",
            )
        )
    if model.get("class_names"):
        rows.append(("classes", _Md(", ".join(_text(n) for n in model["class_names"]))))
    return ["## Model", ""] + _table(["", ""], rows, "ll")


def _data_section(data: dict[str, Any]) -> list[str]:
    lines = ["## Data", ""]
    if data.get("description"):  # the caller's Markdown, as the card's description
        lines += [data["description"], ""]
    rows = [
        (k.replace("_", " "), data[k])
        for k in ("source", "task", "num_classes", "label_mode", "num_examples", "augmentation")
        if k in data
    ]
    if rows:
        lines += _table(["", ""], rows, "ll")
    per_class = data.get("examples_per_class")
    if per_class:
        lines += ["Examples per class:", ""] + _table(
            [_text(n) for n in per_class], [list(per_class.values())]
        )
    return lines


def _training_section(recipe, phases, training) -> list[str]:
    lines = ["## Training", ""]
    if recipe:
        lines += [_Md(f"Recipe {_code(recipe['name'])}."), ""]
        if recipe.get("options"):
            lines += ["Options (the non-default keywords of `kerasft.finetune`):", ""]
            lines += _table(
                ["option", "value"],
                [(_code(k), _text(json.dumps(v))) for k, v in recipe["options"].items()],
                "ll",
            )
        else:
            lines += ["All `kerasft.finetune` options at their defaults.", ""]
    if phases:
        monitor = (training or {}).get("monitor", "monitor")
        lines += _table(
            ["phase", "epochs", "trainable params", "seconds", "learning rate", f"best {monitor}"],
            [
                (
                    p["name"],
                    p["epochs"],
                    p["trainable_params"],
                    p["seconds"],
                    p["learning_rate"],
                    p["best"],
                )
                for p in phases
            ],
        )
    if training:
        facts = [
            (k.replace("_", " "), v) for k, v in training.items() if k != "monitor" or not phases
        ]
        if facts:
            lines += _table(["", ""], facts, "ll")
    return lines


def _evaluation_section(report, source, metrics) -> list[str]:
    lines = ["## Evaluation", ""]
    if metrics:
        lines += _table(["", ""], list(metrics.items()), "lr")
    if not report:
        return lines
    lines += [
        f"On {report['num_examples']:,} examples" + (f" ({source})" if source else "") + ".",
        "",
    ]
    if report["task"] == "regression":
        return lines + _regression_table(report)
    return lines + _figures_table(report) + _per_class_table(report) + _confusion_table(report)


def _regression_table(report: dict[str, Any]) -> list[str]:
    """Per output: MSE, RMSE, MAE and R2."""
    return _table(
        ["output", "MSE", "RMSE", "MAE", "R2"],
        [
            (
                _text(n),
                report["mse"][i],
                report["rmse"][i],
                report["mae"][i],
                _f4(report["r2"][i]),
            )
            for i, n in enumerate(report["class_names"])
        ],
    )


def _figures_table(report: dict[str, Any]) -> list[str]:
    """The classifier's overall figures: loss, accuracy, top-k accuracy, ROC-AUC."""
    figures = [("loss", _f4(report["loss"])), ("accuracy", _f4(report["accuracy"]))]
    if report.get("top_k") is not None:
        figures.append((f"top-{report['top_k']} accuracy", _f4(report["top_k_accuracy"])))
    if report.get("roc_auc") is not None:
        figures.append(("ROC-AUC", _f4(report["roc_auc"])))
    return _table(["figure", "value"], figures)


def _per_class_table(report: dict[str, Any]) -> list[str]:
    """Precision, recall, f1 and support per class, then their averages."""
    rows = [
        (
            _text(n),
            _f4(report["precision"][i]),
            _f4(report["recall"][i]),
            _f4(report["f1"][i]),
            report["support"][i],
        )
        for i, n in enumerate(report["class_names"])
    ]
    total = sum(report["support"])
    for average in ("micro", "macro", "weighted", "samples"):
        if average in report.get("averages", {}):
            a = report["averages"][average]
            rows.append(
                (
                    _Md(f"*{average} avg*"),
                    _f4(a["precision"]),
                    _f4(a["recall"]),
                    _f4(a["f1"]),
                    total,
                )
            )
    return _table(["class", "precision", "recall", "f1", "support"], rows)


def _confusion_table(report: dict[str, Any]) -> list[str]:
    """The confusion matrix, when it has few enough classes to read."""
    matrix = report.get("confusion_matrix")
    if not matrix or len(matrix) > _MAX_MATRIX_CLASSES:
        return []
    names = [_text(n) for n in report["class_names"]]
    lines = ["Confusion matrix (rows: true class, columns: predicted):", ""]
    return lines + _table(
        [_Md("true \\ predicted")] + names, [[n] + row for n, row in zip(names, matrix)]
    )


def _exports_section(exports: list[dict[str, Any]]) -> list[str]:
    rows, checks, served = [], [], []
    for e in exports:
        io = e.get("io_dtype")
        rows.append(
            (
                e.get("format"),
                _code(e.get("file")),
                _size(e.get("size_bytes")),
                e.get("quantize") or ("float32" if e.get("format") == "tflite" else ""),
                io or "",
            )
        )
        if e.get("check"):
            checks.append((_code(e.get("file")), e["check"]))
        if e.get("serving_check"):
            served.append((_code(e.get("file")), e["serving_check"]))
    lines = ["## Exports", ""] + _table(["format", "file", "size", "weights", "I/O"], rows, "lllll")
    for name, c in served:
        lines += [
            f"{name} served by TensorFlow beside the Keras model on {c['examples']:,} inputs "
            f"({c.get('data')}): top-1 agreement {_f4(c['agreement'])}, max abs. "
            f"probability difference {c['max_abs_difference']:.3g}.",
            "",
        ]
    for name, c in checks:
        if not c.get("examples"):
            lines += [
                f"{name}: loads and runs in LiteRT ({c.get('runtime')}); no data was given "
                "to compare it with the Keras model.",
                "",
            ]
            continue
        lines += [
            f"{name} run by LiteRT ({c.get('runtime')}) on {c['examples']:,} examples"
            + (f" ({c['data']})" if c.get("data") else "")
            + ":",
            "",
        ]
        rows = [("top-1 agreement with Keras", _f4(c["agreement"]))]
        if c.get("accuracy") is not None:
            rows += [
                ("accuracy (TFLite)", _f4(c["accuracy"])),
                ("accuracy (Keras)", _f4(c["keras_accuracy"])),
            ]
        rows.append(("max abs. probability difference", c["max_abs_difference"]))
        lines += _table(["", ""], rows, "lr")
    return lines
