"""The ``kerasft`` command line: ``kerasft finetune``, ``kerasft export``, ``kerasft lr-find``.

``kerasft finetune`` with no arguments is the bundled demonstration: it fine-tunes the
shipped MNIST CNN on scikit-learn's digits with 10 labels per class, and reports test
accuracy before fine-tuning, after it, and for the same architecture trained from
scratch on the same budget. Errors in the input are printed as one line, without a
traceback, and the exit status is 2; they name the command's options (``--overwrite``),
not the Python keywords behind them.

This module imports only the standard library at the top (and ``kerasft._commandline``,
which does the same), and ``import kerasft`` in the ``kerasft`` console script defers the
library (see ``kerasft/__init__.py``), so the command answers ``--help`` and ``--version``
and refuses a bad option without importing TensorFlow. ``python -m kerasft.cli`` imports
the whole package, TensorFlow with it, first.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from kerasft._commandline import flag_names, progress_verbosity

__all__ = ["main", "run", "parse_args", "build_parser", "default_model_path", "progress_verbosity"]

_EXIT_USAGE = 2
DEFAULT_EXPORT = os.path.join("saved_models", "digits_finetuned")


def default_model_path() -> str:
    """Path of the shipped pretrained MNIST CNN (``saved_models/mnist_cnn.keras``)."""
    env = os.environ.get("KERASFT_MODEL")
    if env:
        return env
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(root, "saved_models", "mnist_cnn.keras")


def _int_at_least(minimum: int, wording: str):
    """An argparse ``type`` for integers >= ``minimum``; ``wording`` names them in errors."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be {wording}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _unfreeze(text: str) -> str | int | float:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _learning_rate(text: str) -> str | float:
    if text == "find":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be 'find' or a positive number, got {text!r}"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be 'find' or a positive number, got {text!r}")
    return value


def _version() -> str:
    """``kerasft.__version__``, read from ``kerasft/__init__.py`` without running it.

    Running it would import TensorFlow.
    """
    with open(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "__init__.py"), encoding="utf-8"
    ) as f:
        match = re.search(r"""^__version__ = ["']([^"']+)["']""", f.read(), re.M)
    if match is None:
        raise RuntimeError(
            'kerasft/__init__.py assigns no `__version__ = "..."` line for `kerasft --version`.'
        )
    return match.group(1)


def _subcommands() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``kerasft`` parser and the parser of each command, by name."""
    parser = _Parser(prog="kerasft", description="Fine-tune pretrained Keras models.")
    parser.add_argument(
        "--version",
        action="version",
        version=f"kerasft {_version()}",
        help="print kerasft's version and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_finetune_options(
        sub.add_parser("finetune", help="fine-tune a model (no arguments: the bundled digits demo)")
    )
    _add_export_options(
        sub.add_parser("export", help="export a .keras model as a SavedModel or TFLite file")
    )
    _add_lr_find_options(sub.add_parser("lr-find", help="sweep learning rates and suggest one"))
    return parser, dict(sub.choices)


def _add_model_argument(command: argparse.ArgumentParser) -> None:
    """The optional MODEL of ``finetune`` and ``lr-find``: the shipped MNIST CNN by default."""
    command.add_argument(
        "model",
        nargs="?",
        default=None,
        help="a .keras/.h5 file or SavedModel dir (default: the shipped MNIST CNN)",
    )


def _add_json_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line"
    )


def _add_unsafe_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--unsafe",
        action="store_true",
        help="allow Python code (Lambda layers) in the model file: trusted files only",
    )


def _add_finetune_options(ft: argparse.ArgumentParser) -> None:
    """``kerasft finetune``'s arguments, in the order ``--help`` lists them."""
    _add_finetune_inputs(ft)
    _add_finetune_training(ft)
    _add_finetune_outputs(ft)


def _add_finetune_inputs(ft: argparse.ArgumentParser) -> None:
    """What ``kerasft finetune`` fine-tunes on: MODEL, ``--task``, ``--data``, ``--shots``."""
    _add_model_argument(ft)
    ft.add_argument(
        "--task",
        default="image",
        choices=["image", "text", "generate"],
        help="image (default: digits or --data folder) or text: MiniLM (a pretrained BERT) "
        "on 400 Rotten Tomatoes reviews, beside KerasHub's hand-written recipe "
        "(kerasft.finetune with its defaults; of the options below only "
        "--seed, --json and -q apply); or generate: SmolLM2-135M-Instruct (GGUF) taught "
        "to answer fresh/rotten (--epochs, --lr, --batch-size, --export FILE.gguf also apply)",
    )
    ft.add_argument(
        "--no-baseline", action="store_true", help="--task text: skip KerasHub's recipe"
    )
    ft.add_argument(
        "--data",
        default=None,
        help="'digits' (scikit-learn digits, default) or an image folder with one "
        "sub-folder per class (or train/ and test/ splits of such folders)",
    )
    ft.add_argument(
        "--shots",
        type=_positive_int,
        default=None,
        help="digits only: labelled examples per class for training+validation (default 10)",
    )


def _add_finetune_training(ft: argparse.ArgumentParser) -> None:
    """How ``kerasft finetune`` trains: the recipe, its epochs and rates, batch and seed."""
    ft.add_argument(
        "--recipe",
        default=None,
        help="auto (default: decided from the model and the data; see kerasft.plan), lp-ft, "
        "full, head, gradual, or a YAML/JSON file of phases",
    )
    ft.add_argument(
        "--head-epochs",
        type=_non_negative_int,
        default=None,
        help="epochs of a head trained by gradient (lp-ft, gradual: default 5; implies lp-ft)",
    )
    ft.add_argument(
        "--epochs",
        type=_non_negative_int,
        default=None,
        help="fine-tuning epochs (default: auto's step budget; 10 for the other recipes)",
    )
    ft.add_argument(
        "--lr",
        type=_learning_rate,
        default=None,
        help="auto: the fine-tuning rate (default by model family); other recipes: the "
        "head-phase rate (default 1e-2), or 'find' to run the LR finder",
    )
    ft.add_argument(
        "--finetune-lr",
        type=float,
        default=None,
        help="peak rate of the fine-tuning phase, after unfreezing (default: --lr / 10; "
        "auto: by model family)",
    )
    ft.add_argument(
        "--unfreeze",
        type=_unfreeze,
        default=None,
        help="'all' (default), top N weighted layers, top fraction, or a regex",
    )
    ft.add_argument("--batch-size", type=_positive_int, default=None, help="default 32")
    ft.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the data split, the shuffling and the new weights (default 0)",
    )


def _add_finetune_outputs(ft: argparse.ArgumentParser) -> None:
    """What ``kerasft finetune`` writes and prints, and what it may load."""
    ft.add_argument(
        "--export",
        default=None,
        metavar="DIR",
        help=f"SavedModel directory to export to (default with no MODEL: {DEFAULT_EXPORT}); "
        "checked before training",
    )
    ft.add_argument("--no-export", action="store_true", help="do not export")
    ft.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing export directory (only an earlier kerasft export)",
    )
    ft.add_argument("--no-scratch", action="store_true", help="skip the from-scratch baseline")
    ft.add_argument(
        "--plots", default=None, metavar="DIR", help="save training-curve and confusion PNGs"
    )
    ft.add_argument(
        "--tensorboard", default=None, metavar="DIR", help="write TensorBoard event files"
    )
    _add_json_option(ft)
    _add_unsafe_option(ft)
    ft.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_export_options(ex: argparse.ArgumentParser) -> None:
    """``kerasft export``'s arguments."""
    ex.add_argument("model", help="the model to export: a .keras/.h5 file or SavedModel directory")
    ex.add_argument(
        "path", help="where to export: a SavedModel directory, or a file ending in .tflite"
    )
    ex.add_argument(
        "--format",
        default=None,
        help="saved_model or tflite (default: tflite for a PATH ending in .tflite, "
        "else saved_model)",
    )
    ex.add_argument(
        "--quantize",
        default=None,
        help="tflite only: float16, dynamic (int8 weights) or int8 (full-integer, "
        "calibrated on --data)",
    )
    ex.add_argument(
        "--io-dtype",
        default="float32",
        help="--quantize int8 only: float32 (default), int8 or uint8 model input/output",
    )
    ex.add_argument(
        "--data",
        default=None,
        help="'digits' (default when the model takes 28x28x1 digits), an image folder, "
        "or 'none': int8 calibration inputs, and held-out data for the LiteRT "
        "check and the model card's evaluation",
    )
    ex.add_argument("--class-names", default=None, help="comma-separated class names")
    ex.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing export at PATH (only an earlier kerasft export)",
    )
    _add_unsafe_option(ex)


def _add_lr_find_options(lf: argparse.ArgumentParser) -> None:
    """``kerasft lr-find``'s arguments."""
    _add_model_argument(lf)
    lf.add_argument(
        "--data",
        default="digits",
        help="'digits' (scikit-learn digits, default) or an image folder with one "
        "sub-folder per class",
    )
    lf.add_argument(
        "--shots",
        type=_positive_int,
        default=10,
        help="digits only: labelled examples per class to sweep on (default 10)",
    )
    lf.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="save the loss-against-rate curve, suggestions marked, to this PNG",
    )
    _add_json_option(lf)
    _add_unsafe_option(lf)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``kerasft`` command line (no "Did you mean": `parse_args` adds it)."""
    return _subcommands()[0]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a ``kerasft`` command line, or exit as argparse does.

    ``--help`` and ``--version`` print and exit with status 0; a bad command line prints
    the usage and the error, with the closest option for a misspelt one (``--epocs``:
    "Did you mean --epochs?"), and exits with status 2.
    """
    parser, commands = _subcommands()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = commands.get(args.command, parser)
        command.error(
            f"unrecognized arguments: {' '.join(unknown)}{_did_you_mean(unknown, command)}"
        )
    return args


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that keeps the arguments added to it (argparse has no public list).

    Its sub-command parsers are of this class too (``add_subparsers`` uses the parent's).
    """

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.arguments = [*getattr(self, "arguments", []), action]
        return action


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The optional arguments (flags) of ``parser``."""
    return [action for action in getattr(parser, "arguments", []) if action.option_strings]


def _did_you_mean(unknown: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """``". Did you mean --epochs?"`` for the misspelt options among ``unknown``, or ``""``."""
    flags = [
        flag
        for action in _options(parser)
        for flag in action.option_strings
        if flag.startswith("--")
    ]
    hints = []
    for word in unknown:
        given = word.split("=", 1)[0]
        if not given.startswith("-"):
            continue
        # Compared without the dashes that every flag shares, which would make anything look close.
        close = difflib.get_close_matches(given.lstrip("-"), [f[2:] for f in flags], n=1)
        if close:
            hints.append((given, "--" + close[0]))
    if not hints:
        return ""
    if len(hints) == 1:
        return f". Did you mean {hints[0][1]}?"
    return ". Did you mean " + ", ".join(f"{flag} for {given}" for given, flag in hints) + "?"


# `kerasft finetune` options of the image job, with their defaults. `--task text` runs a
# fixed recipe on bundled data and refuses them rather than ignore them.
# None: kerasft.finetune decides (recipe "auto": from the model and the data).
_IMAGE_DEFAULTS = {
    "model": None,
    "data": "digits",
    "shots": 10,
    "recipe": None,
    "head_epochs": None,
    "epochs": None,
    "lr": None,
    "finetune_lr": None,
    "unfreeze": None,
    "batch_size": None,
    "export": None,
    "no_export": False,
    "overwrite": False,
    "no_scratch": False,
    "plots": None,
    "tensorboard": None,
    "unsafe": False,
}


def _check_text_options(args: argparse.Namespace) -> None:
    given = [name for name in _IMAGE_DEFAULTS if getattr(args, name) not in (None, False)]
    if given:
        raise ValueError(
            f"Arguments {flag_names(given)} do not apply to --task text, which fine-tunes MiniLM "
            "on the bundled Rotten Tomatoes reviews with kerasft.finetune's defaults; only --seed, "
            "--no-baseline, --json and -q apply. HINT: for your own text data call "
            "kerasft.finetune(model, data) from Python."
        )


def _image_defaults(args: argparse.Namespace) -> None:
    for name, default in _IMAGE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def _load_task(data: str, shots: int, seed: int, model) -> dict[str, Any]:
    """Train/test arrays and class names for ``--data``."""
    import numpy as np

    from kerasft import datasets

    if data == "digits":
        split = datasets.digits_few_shot(shots=shots, seed=seed)
        return dict(
            x_train=split.x_train,
            y_train=split.y_train,
            x_test=split.x_test,
            y_test=split.y_test,
            class_names=[str(i) for i in range(10)],
            description=f"scikit-learn digits, {shots} labels per class "
            f"({len(split.x_train)} train+validation, {len(split.x_test)} test)",
        )
    if not os.path.isdir(data):
        raise ValueError(
            "Argument `--data` must be 'digits' or an existing image folder. "
            f"Received: --data={data!r}"
        )
    from kerasft.imagefolder import load_image_folder

    shape = tuple(model.inputs[0].shape[1:])
    image_size = shape[:2] if len(shape) == 3 and None not in shape[:2] else None
    color = None
    if len(shape) == 3 and shape[2] in (1, 3):
        color = "grayscale" if shape[2] == 1 else "rgb"
    kwargs = {"image_size": image_size}
    if color:
        kwargs["color_mode"] = color
    if os.path.isdir(os.path.join(data, "train")) and os.path.isdir(os.path.join(data, "test")):
        x_train, y_train, names = load_image_folder(os.path.join(data, "train"), **kwargs)
        x_test, y_test, test_names = load_image_folder(os.path.join(data, "test"), **kwargs)
        if test_names != names:
            raise ValueError(
                f"Argument `--data`: {data!r} has train classes {names} "
                f"but test classes {test_names}."
            )
    else:
        x, y, names = load_image_folder(data, **kwargs)
        split = datasets.few_shot_split(
            x, y, shots=1, seed=seed
        )  # validates every class has >1 image
        rng = np.random.default_rng(seed)
        test_mask = np.zeros(len(y), dtype=bool)
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            test_mask[rng.choice(idx, size=max(1, len(idx) // 5), replace=False)] = True
        del split
        x_train, y_train, x_test, y_test = x[~test_mask], y[~test_mask], x[test_mask], y[test_mask]
    return dict(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=names,
        description=f"image folder {data} ({len(x_train)} train+validation, {len(x_test)} test)",
    )


def _accuracy(model, x, y) -> float:
    import numpy as np

    return float(np.mean(_predicted_classes(model, x) == y))


def _predicted_classes(model, x):
    probs = model.predict(x, verbose=0, batch_size=256)
    return (
        (probs[:, 0] > (0.0 if probs.min() < 0 else 0.5)).astype(int)
        if probs.shape[-1] == 1
        else probs.argmax(-1)
    )


def _cmd_finetune(args: argparse.Namespace) -> dict[str, Any]:
    if args.task == "text":
        _check_text_options(args)
        return _cmd_finetune_text(args)
    if args.task == "generate":
        from kerasft.jobs.generate import run_cli

        return run_cli(args)
    return _cmd_finetune_image(args)


def _cmd_finetune_image(args: argparse.Namespace) -> dict[str, Any]:
    """``kerasft finetune`` on images: load, fine-tune, compare, export, report."""
    _image_defaults(args)
    verbose = progress_verbosity(args)
    start = time.perf_counter()
    export_path, overwrite = _checked_export_destination(args)
    model, task = _load_model_and_task(args)
    # A SavedModel's body is one opaque layer: it has no architecture to train from scratch.
    opaque = _is_saved_model(model)
    pretrained = _pretrained_accuracy(model, task)
    result = _finetune_images(args, model, task, verbose)
    evaluation = result.evaluate((task["x_test"], task["y_test"]), class_names=task["class_names"])
    test_acc, finetune_seconds = evaluation["accuracy"], sum(result.seconds.values())
    scratch = _scratch_accuracy(args, model, task, result, opaque, verbose)
    if export_path is not None:
        export_path = result.export(
            export_path,
            class_names=task["class_names"],
            overwrite=overwrite,
            evaluation=evaluation,
            evaluation_data=f"the test split of {task['description']}",
        )
    if args.plots:
        _save_plots(args.plots, result, task)
    report = {
        "test_accuracy": round(test_acc, 4),
        "pretrained_accuracy": None if pretrained is None else round(pretrained, 4),
        "scratch_accuracy": None if scratch is None else round(scratch, 4),
        "seconds": round(time.perf_counter() - start, 1),
        "finetune_seconds": round(finetune_seconds, 1),
        "export_path": export_path,
        "recipe": args.recipe or str(result.options.recipe.recipe),
        "train_examples": int(len(task["x_train"])),
        "test_examples": int(len(task["x_test"])),
        "best_" + result.monitor: result.best_score,
        "evaluation": evaluation.to_dict(),
    }
    if not (args.quiet or args.json):
        print(evaluation, flush=True)
    print(_result_line(report), flush=True)
    return report


def _checked_export_destination(args: argparse.Namespace) -> tuple[str | None, bool]:
    """`_export_destination`, checked before training: a run is not thrown away for it."""
    from kerasft.export import check_destination

    export_path, overwrite = _export_destination(args)
    if export_path is not None:
        check_destination(export_path, format="saved_model", overwrite=overwrite)
    return export_path, overwrite


def _load_model_and_task(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The model of ``kerasft finetune`` (MODEL, or the shipped CNN) and its `_load_task`."""
    from kerasft import finetuning as ft

    model_path = args.model or default_model_path()
    model = ft.load_model(model_path, safe_mode=not args.unsafe)
    task = _load_task(args.data, args.shots, args.seed, model)
    print(f"kerasft: fine-tuning {model_path} on {task['description']}", flush=True)
    return model, task


def _is_saved_model(model) -> bool:
    from kerasft.export import SavedModelLayer

    return any(isinstance(layer, SavedModelLayer) for layer in model.layers)


def _pretrained_accuracy(model, task: dict[str, Any]) -> float | None:
    """Test accuracy before fine-tuning, when the head already has one output per class."""
    from kerasft import surgery

    head = surgery.find_head(model)
    if surgery.head_units(head) != len(task["class_names"]):
        return None
    return _accuracy(model, task["x_test"], task["y_test"])


def _finetune_images(args: argparse.Namespace, model, task: dict[str, Any], verbose: int):
    """`kerasft.finetune` with ``kerasft finetune``'s options; the `FinetuneResult`."""
    from kerasft import finetuning as ft
    from kerasft.configs import HeadConfig, RunConfig

    return ft.finetune(
        model,
        (task["x_train"], task["y_train"]),
        recipe=args.recipe,
        head_epochs=args.head_epochs,
        epochs=args.epochs,
        lr=args.lr,
        finetune_lr=args.finetune_lr,
        unfreeze=args.unfreeze,
        batch_size=args.batch_size,
        seed=args.seed,
        head=HeadConfig(num_classes=len(task["class_names"])),
        verbose=verbose,
        run=RunConfig(tensorboard=args.tensorboard),
        copy=False,  # loaded here for this run alone (and a SavedModel's layer cannot be copied)
    )


def _scratch_accuracy(
    args: argparse.Namespace, model, task: dict[str, Any], result, opaque: bool, verbose: int
) -> float | None:
    """Test accuracy of ``model``'s architecture trained from new weights on the same budget.

    ``None`` with ``--no-scratch``, or for a SavedModel (``opaque``), which says so.
    """
    if args.no_scratch:
        return None
    if opaque:
        print(
            "kerasft: no from-scratch baseline for a SavedModel (its body is one opaque layer)",
            flush=True,
        )
        return None
    import keras

    from kerasft import finetuning as ft
    from kerasft.configs import HeadConfig

    keras.utils.set_random_seed(args.seed)
    fresh = keras.models.clone_model(model)  # same architecture, new initial weights
    print("kerasft: training the same architecture from scratch, same budget", flush=True)
    # The same number of optimizer steps as the fine-tune, as one plain run would take them:
    # Adam at 1e-3, batch 32. BatchNormalization stays in inference mode: learning its
    # statistics from 100 images in batches of 32 scored 0.11-0.48 here, against 0.925.
    steps = max(1, sum(p.epochs * p.steps_per_epoch for p in result.phases if p.name != "probe"))
    per_epoch = -(-len(task["x_train"]) // 32)
    base = ft.finetune(
        fresh,
        (task["x_train"], task["y_train"]),
        recipe="full",
        epochs=-(-steps // per_epoch),
        lr=1e-3,
        batch_size=32,
        seed=args.seed,
        head=HeadConfig(num_classes=len(task["class_names"])),
        verbose=verbose,
        copy=False,
        validation_split=0.0,
        patience=None,
    )
    return _accuracy(base.model, task["x_test"], task["y_test"])


def _save_plots(directory: str, result, task: dict[str, Any]) -> None:
    """``--plots DIR``: the training curves and the test confusion matrix, as PNGs."""
    from kerasft import plots

    plots.plot_history(result, os.path.join(directory, "history.png"))
    pred = _predicted_classes(result.model, task["x_test"])
    plots.plot_confusion_matrix(
        task["y_test"], pred, task["class_names"], os.path.join(directory, "confusion.png")
    )


def _result_line(report: dict[str, Any]) -> str:
    """The last line of ``kerasft finetune``; a baseline that was not measured is left out.

    The pretrained model is scored only when its head already has one output per class,
    and the from-scratch run is skipped with ``--no-scratch`` or for a SavedModel.
    """
    parts = [f"kerasft: test accuracy {report['test_accuracy']:.4f} after fine-tuning"]
    if report["pretrained_accuracy"] is not None:
        parts.append(f"pretrained {report['pretrained_accuracy']:.4f}")
    if report["scratch_accuracy"] is not None:
        parts.append(f"from scratch {report['scratch_accuracy']:.4f}")
    parts.append(f"{report['seconds']} s")
    if report["export_path"]:
        parts.append(f"exported to {report['export_path']}")
    return " | ".join(parts)


def _export_destination(args: argparse.Namespace) -> tuple[str | None, bool]:
    """Where ``kerasft finetune`` exports, and whether it may replace an earlier export there."""
    if args.no_export:
        return None, False
    if args.export is None and args.model is None and args.data == "digits":
        return DEFAULT_EXPORT, True  # the demo's own output
    return args.export, args.overwrite


def _cmd_finetune_text(args: argparse.Namespace) -> dict[str, Any]:
    from kerasft.jobs import textjob

    verbose = progress_verbosity(args)
    print(
        "kerasft: fine-tuning all-MiniLM-L6-v2 (KerasHub BertTextClassifier) "
        "on 400 Rotten Tomatoes reviews, testing on 600",
        flush=True,
    )
    start = time.perf_counter()
    job = textjob.run_text_job(seed=args.seed, baseline=not args.no_baseline, verbose=verbose)
    after, hand = job["after"], job["baseline"]
    if verbose:
        print(after, flush=True)
    report = {
        "test_accuracy": round(job["accuracy"], 4),
        "pretrained_accuracy": round(job["before"]["accuracy"], 4),
        "finetune_seconds": round(job["seconds"], 1),
        "baseline_accuracy": None if hand is None else round(hand["accuracy"], 4),
        "baseline_seconds": None if hand is None else round(hand["seconds"], 1),
        "seconds": round(time.perf_counter() - start, 1),
        "recipe": {k: v for k, v in job["recipe"].items()},
        "train_examples": job["train_examples"],
        "test_examples": job["test_examples"],
        "evaluation": after.to_dict(),
        "evaluation_before": job["before"].to_dict(),
    }
    line = (
        f"kerasft: test accuracy {report['test_accuracy']:.4f} after fine-tuning "
        f"({report['finetune_seconds']} s) | before {report['pretrained_accuracy']}"
    )
    if hand is not None:
        line += (
            f" | KerasHub's recipe by hand {report['baseline_accuracy']:.4f} "
            f"({report['baseline_seconds']} s; kerasft/hand {job['seconds'] / hand['seconds']:.2f})"
        )
    print(line, flush=True)
    return report


def _cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from kerasft import finetuning as ft
    from kerasft.export import export_model

    model = ft.load_model(args.model, safe_mode=not args.unsafe)
    names = args.class_names.split(",") if args.class_names else None
    data = _export_data(args, model)
    representative = verify = None
    if data is not None:
        representative, verify = data["x_train"], (data["x_test"], data["y_test"])
    path = export_model(
        model,
        args.path,
        format=_export_format(args),
        class_names=names,
        quantize=args.quantize,
        io_dtype=args.io_dtype,
        representative_data=representative,
        verify_data=verify,
        overwrite=args.overwrite,
    )
    size = path.metadata["size_bytes"]
    print(f"kerasft: exported {args.model} to {path} ({size / 1024:.1f} KiB)")
    if path.check is not None:
        print(f"kerasft: {path.check}")
    report = {"export_path": path, "size_bytes": size}
    if path.check is not None:
        report["tflite_check"] = path.check.to_dict()
    return report


def _export_format(args: argparse.Namespace) -> str:
    """``--format``, or read off PATH: ``tflite`` for a file ending in ``.tflite``."""
    if args.format is not None:
        return args.format
    return "tflite" if os.fspath(args.path).endswith(".tflite") else "saved_model"


def _export_data(args: argparse.Namespace, model) -> dict[str, Any] | None:
    """``--data`` of ``kerasft export``: calibration and held-out arrays, or ``None``."""
    if args.data == "none":
        if args.quantize == "int8":
            raise ValueError(
                "Argument `--quantize int8` needs representative data to calibrate on. Received: "
                "--data none. Pass --data digits or --data DIR (an image folder), or use "
                "--quantize dynamic, which needs no data."
            )
        return None
    shape = tuple(model.inputs[0].shape[1:]) if len(model.inputs) == 1 else None
    width = model.outputs[0].shape[-1] if len(model.outputs) == 1 else None
    if args.data in (None, "digits") and (shape != (28, 28, 1) or width != 10):
        if args.data is None and args.quantize != "int8":
            print(
                "kerasft: no data to check the export on (the model does not take the 28x28x1, "
                "10-class digits); pass --data DIR for a LiteRT check and an evaluation"
            )
            return None
        raise ValueError(
            f"Argument `--data digits`: the digits are 28x28x1 images of 10 classes, but model "
            f"{model.name!r} takes inputs of shape {shape} and has {width} outputs. "
            "Pass --data DIR (an image folder with one sub-folder per class) "
            "for representative data."
        )
    return _load_task(args.data or "digits", 10, 0, model)


def _cmd_lr_find(args: argparse.Namespace) -> dict[str, Any]:
    from kerasft import finetuning as ft
    from kerasft.lr_finder import lr_find

    model = ft.load_model(args.model or default_model_path(), safe_mode=not args.unsafe)
    task = _load_task(args.data, args.shots, 0, model)
    result = lr_find(
        model,
        (task["x_train"], task["y_train"]),
        plot=args.plot,
        loss="sparse_categorical_crossentropy",
    )
    report = {k: float(v) for k, v in result.suggestions.items()}
    print(
        "kerasft: suggested learning rates: " + ", ".join(f"{k} {v:.2e}" for k, v in report.items())
    )
    if args.plot:
        report["plot"] = args.plot
    return report


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a bad input, file or environment raises: printed as one line, exit status 2.

    Everything else is a bug in kerasft and keeps its traceback.
    """
    import tensorflow as tf

    errors: list[type[BaseException]] = [
        ValueError,
        TypeError,
        RuntimeError,
        OSError,
        tf.errors.OpError,
    ]
    try:
        import yaml
    except ImportError:
        pass
    else:
        errors.append(yaml.YAMLError)
    return tuple(errors)


def _one_line(error: BaseException) -> str:
    return str(error).strip() or type(error).__name__


# A library keyword written `name=value` in an error message: `overwrite=True`, `recipe='warp'`,
# `lr=<rate>`, `finetune_lr=-1.0`; with the "pass " before it, and the "(CLI: --flag)" that a
# few messages add after it (dropped once the keyword is written as the flag).
_KEYWORD = re.compile(
    r"(?<![\w.\-])(?P<verb>pass )?(?P<name>[a-z][a-z0-9_]*)="
    r"(?P<value>'[^']*'|\"[^\"]*\"|<[^>]*>|True|False|None|-?\d+(?:\.\d+)?(?:e[+-]?\d+)?\b)"
    r"(?P<cli> \(CLI: [^)]*\))?"
)
# Keywords the commands spell differently from the library: `--unsafe` turns safe_mode off,
# and `kerasft finetune` exports to `--export`, export_model's `path`. The library's `task`
# (classification, regression...) and `data` (arrays) are not the options of those names.
_SAFE_MODE = {"False": "--unsafe", "True": "safe mode (on unless --unsafe)"}
_RENAMED = {"finetune": {"path": "--export"}}
_NOT_OPTIONS = {"task", "data"}


def _in_flags(message: str, command: str) -> str:
    """``message`` with the library's keyword arguments written as ``kerasft COMMAND``'s options.

    ``overwrite=True`` becomes ``--overwrite``, ``recipe='warp'`` ``--recipe 'warp'``,
    ``pass quantize=None`` ``leave out --quantize``. Keywords that are no option of the
    command (``pattern=...``, ``task=...``) stay as they are.
    """
    commands = _subcommands()[1]
    if command not in commands:
        return message
    actions = {a.dest: a for a in _options(commands[command]) if a.dest not in _NOT_OPTIONS}
    renamed = _RENAMED.get(command, {})

    def flag_of(name: str) -> str | None:
        if name in renamed:
            return renamed[name]
        action = actions.get(name)
        return (
            None if action is None else next(f for f in action.option_strings if f.startswith("--"))
        )

    def spell(match: re.Match) -> str:
        name, value, verb = match["name"], match["value"], match["verb"] or ""
        if name == "safe_mode" and value in _SAFE_MODE:
            return verb + _SAFE_MODE[value]
        flag = flag_of(name)
        if flag is None:
            return match[0]
        switch = name in actions and actions[name].nargs == 0  # --overwrite, --unsafe: no value
        if (switch and value == "True") or (not switch and value not in ("None", "False")):
            return verb + (flag if switch else f"{flag} {value}")
        return ("leave out " if verb else "no ") + flag

    message = _KEYWORD.sub(spell, message)
    for name, flag in renamed.items():
        message = message.replace(f"Argument `{name}`", f"Argument `{flag}`")
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Run a ``kerasft`` command line; returns the exit status.

    The ``kerasft`` console script: the command line is parsed before the library and
    TensorFlow load (`run` loads them).
    """
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run a parsed command line (`parse_args`); returns the exit status."""
    if args.command is None:
        build_parser().print_help()
        return _EXIT_USAGE
    # Quiet TensorFlow's C++ chatter (CUDA probing on CPU-only machines). Its start-up lines
    # are printed on import, before this: the console script sets the variable earlier.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import importlib

    import tensorflow as tf

    importlib.import_module("kerasft._api")  # the whole library: its layers registered for loading

    tf.get_logger().setLevel("ERROR")

    commands = {"finetune": _cmd_finetune, "export": _cmd_export, "lr-find": _cmd_lr_find}
    try:
        report = commands[args.command](args)
    except _user_errors() as e:
        print(
            f"kerasft {args.command}: error: {_in_flags(_one_line(e), args.command)}",
            file=sys.stderr,
        )
        return _EXIT_USAGE
    except KeyboardInterrupt:
        print("kerasft: interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
