"""Parameter-efficient fine-tuning on a real pretrained BERT: LoRA, DoRA, int8 + LoRA, side by side.

The text job of ``kerasft.jobs.textjob``: all-MiniLM-L6-v2 (22.7M parameters) as a KerasHub
``BertTextClassifier`` on 400 labelled Rotten Tomatoes reviews, 600 test, sequence length
64, batch 32, split seed 0. Rows:

- ``full``: the full fine-tune written by hand (KerasHub's recipe: ``Adam(5e-5)``, 3 epochs).
- ``keras_hub_lora``: KerasHub's own LoRA call, ``backbone.enable_lora(4)``, ``Adam(1e-3)``,
  3 epochs (the baseline of the PEFT issue).
- ``lora``, ``dora``, ``int8_lora``: ``kerasft.finetune(task, recipe="lp-lora" /
  "lp-dora", ...)`` with :data:`RECIPE` (and ``quantize="int8"``): the head for 3 epochs
  on cached features, then rank-8 adapters (alpha 16) on every projection of the top
  three transformer layers, 4 epochs at 2e-3, the layers below them frozen and cached.
- ``lora_qv_all``: the same with the default targets (query and value projections of
  every layer), so nothing below can be cached.

Each row runs in a fresh Python process, so that its memory is its own. Memory is TF's
allocator peak on the CPU over the whole process (``tf.config.experimental.get_memory_info``
with ``TF_CPU_ALLOCATOR_USE_BFC=true``, which TensorFlow needs to keep statistics on a CPU:
the tensors TensorFlow allocated, weights, activations, gradients and optimizer slots;
its counter cannot be reset on a CPU, so the peak of loading the model, also printed,
is included) and the process's peak resident set size (``ru_maxrss``: the TensorFlow
runtime, the Python heap and everything else too). "trainable %" is the
largest share of weights any phase trains. "file" is the adapter file
(``kerasft.peft.save_adapters``) for adapter rows and the ``.keras`` file of the whole
task for ``full``.

Run: ``python benchmarks/peft.py`` (about 5 minutes on 2 cores) or
``python benchmarks/peft.py --rows full lora``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROWS = ("full", "keras_hub_lora", "lora", "lora_qv_all", "dora", "int8_lora")
# kerasft's LoRA recipe for the job: the head first on cached features, then rank-8
# adapters on every projection of the top three transformer layers (attention and
# feed-forward), with the head, on the cached output of the frozen layers below them.
RECIPE = dict(
    head_epochs=3,
    epochs=4,
    lr=1e-3,
    finetune_lr=2e-3,
    lora_rank=8,
    lora_alpha=16,
    validation_split=0.0,
    lora_targets=r"bert_backbone/transformer_layer_[345]/.*",
)


def _row(name: str, seed: int) -> dict:
    # TensorFlow keeps allocator statistics on the CPU only with its BFC allocator.
    os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    import kerasft  # noqa: F401  (first: oneDNN off)

    # isort: split
    import keras
    import tensorflow as tf

    from kerasft import peft
    from kerasft.jobs import textdata, textjob

    split = textdata.rotten_tomatoes_few_shot(n_train=400, n_test=600, seed=0)
    keras.utils.set_random_seed(seed)
    task = textjob.build_task()
    directory = tempfile.mkdtemp(prefix="kerasft_peft_")
    loaded = tf.config.experimental.get_memory_info("CPU:0")  # reset_memory_stats is GPU-only
    start = time.perf_counter()
    trainable_share, file_bytes, error = None, None, None
    if name in ("full", "keras_hub_lora"):
        if name == "keras_hub_lora":
            task.backbone.enable_lora(4)
        total = sum(int(w.numpy().size) for w in task.weights)
        trainable_share = sum(int(w.numpy().size) for w in task.trainable_weights) / total
        task.compile(
            optimizer=keras.optimizers.Adam(5e-5 if name == "full" else 1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        task.fit(split.x_train, split.y_train, batch_size=32, epochs=3, verbose=0)
        seconds = time.perf_counter() - start
        accuracy = float(task.evaluate(split.x_test, split.y_test, verbose=0)[1])
        path = os.path.join(directory, "task.keras")
        task.save(path)
        file_bytes = os.path.getsize(path)
    else:
        recipe = {
            "lora": "lp-lora",
            "lora_qv_all": "lp-lora",
            "dora": "lp-dora",
            "int8_lora": "lp-lora",
        }[name]
        extra = {"quantize": "int8"} if name == "int8_lora" else {}
        if name == "lora_qv_all":
            extra = {"lora_targets": None}
        try:
            result = kerasft.finetune(
                task,
                (split.x_train, split.y_train),
                recipe=recipe,
                seed=seed,
                verbose=0,
                copy=False,
                **{**RECIPE, **extra},
            )
        except ValueError as e:
            error = str(e).split(". HINT")[0]
            return {"name": name, "error": error}
        seconds = time.perf_counter() - start
        total = result.plan.total_params
        trainable_share = max(c for row in result.plan.trainable_params for c in row) / total
        accuracy = result.evaluate((split.x_test, split.y_test))["accuracy"]
        file_bytes = os.path.getsize(
            peft.save_adapters(result.model, os.path.join(directory, "adapters.npz"))
        )
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    return {
        "name": name,
        "accuracy": accuracy,
        "seconds": seconds,
        "tf_peak_mb": peak / 2**20,
        "tf_loaded_mb": loaded["current"] / 2**20,
        "tf_load_peak_mb": loaded["peak"] / 2**20,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable": trainable_share,
        "file_mb": file_bytes / 2**20,
        "error": error,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seed", type=int, default=0)
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
        row = (
            json.loads(line[0][4:])
            if line
            else {"name": name, "error": out.stderr.strip().splitlines()[-1]}
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    full = next((r for r in rows if r["name"] == "full" and not r.get("error")), None)
    print(
        "\n| row | test acc | train s | trainable % | TF peak MiB (x full) | RSS MiB (x full) | "
        "file MiB (x full) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("error"):
            print(f"| {r['name']} | refused: {r['error']} | | | | | |")
            continue

        def ratio(key, r=r):
            return f" ({r[key] / full[key]:.2f})" if full else ""

        print(
            f"| {r['name']} | {r['accuracy']:.3f} | {r['seconds']:.1f} | "
            f"{100 * r['trainable']:.2f} | "
            f"{r['tf_peak_mb']:.0f}{ratio('tf_peak_mb')} | {r['rss_mb']:.0f}{ratio('rss_mb')} | "
            f"{r['file_mb']:.2f}{ratio('file_mb')} |"
        )


if __name__ == "__main__":
    main()
