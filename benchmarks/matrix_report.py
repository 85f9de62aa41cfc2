"""Render the benchmark matrix's JSON-lines results as ``docs/matrix.md`` and ``docs/matrix.png``.

``python benchmarks/matrix.py --report`` calls :func:`write`. Per case: kerasft and every
baseline as mean +- standard deviation over seeds (points, x100), the best baseline (the
highest mean), kerasft minus it, and the wall-time ratio kerasft / reference recipe; then
the matrix's targets checked over case-seeds, listing every miss.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from typing import Any

BASELINES = ("fit3", "fit30", "ref", "lp", "lp_cls")
METHODS = ("kerasft", *BASELINES)
WITHIN, FLOOR = 1.0, 3.0  # points: "within 1 of the best baseline", "never more than 3 below"
SHARE = 0.9


def latest(rows: Sequence[dict]) -> dict[tuple, dict]:
    """Each (case, seed, method)'s last row; an error row counts only if nothing later succeeded."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["case"], r["seed"], r["method"])
        if "error" not in r or key not in out or "error" in out[key]:
            out[key] = r
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(rows: Sequence[dict], cases: Sequence[Any]) -> list[dict]:
    """One dict per case that has results: per-method scores and seconds, best baseline, gaps."""
    table = latest(rows)
    out = []
    for case in cases:
        by_method: dict[str, dict[int, dict]] = {}
        for (name, seed, method), r in table.items():
            if name == case.name and "error" not in r:
                by_method.setdefault(method, {})[seed] = r
        if not by_method:
            continue
        stats = {
            m: {
                "scores": {s: r["score"] for s, r in seeds.items()},
                "seconds": {s: r["train_seconds"] for s, r in seeds.items()},
                "accuracy": {s: r.get("accuracy") for s, r in seeds.items()},
                "epochs": next(iter(seeds.values())).get("epochs"),
            }
            for m, seeds in by_method.items()
        }
        for s in stats.values():
            s["mean"], s["std"] = _mean_std(list(s["scores"].values()))
        baselines = [m for m in BASELINES if m in stats]
        best = max(baselines, key=lambda m: stats[m]["mean"]) if baselines else None
        gaps, ratios = {}, {}
        if best and "kerasft" in stats:
            k = stats["kerasft"]
            gaps = {
                s: k["scores"][s] - stats[best]["scores"][s]
                for s in k["scores"]
                if s in stats[best]["scores"]
            }
            if "ref" in stats:
                ratios = {
                    s: k["seconds"][s] / stats["ref"]["seconds"][s]
                    for s in k["seconds"]
                    if s in stats["ref"]["seconds"]
                }
        recipes = sorted(
            {
                str((r.get("detail") or {}).get("recipe"))
                for r in by_method.get("kerasft", {}).values()
            }
        )
        out.append(
            {
                "case": case,
                "stats": stats,
                "best": best,
                "gaps": gaps,
                "ratios": ratios,
                "recipes": recipes,
            }
        )
    return out


def targets(summary: list[dict]) -> list[dict]:
    """The matrix's four targets: ``name``, ``passed``, ``value`` and ``misses`` (text lines)."""
    gaps = [(c["case"].name, s, g) for c in summary for s, g in sorted(c["gaps"].items())]
    ratios = [(c["case"].name, s, r) for c in summary for s, r in sorted(c["ratios"].items())]
    out = []
    near = [g for *_, g in gaps if g >= -WITHIN]
    share = len(near) / len(gaps) if gaps else float("nan")
    out.append(
        {
            "name": f"within {WITHIN:g} point of the best baseline on >= {SHARE:.0%} of case-seeds",
            "passed": bool(gaps) and share >= SHARE,
            "value": f"{len(near)}/{len(gaps)} case-seeds ({share:.0%})" if gaps else "no data",
            "misses": [f"{n} seed {s}: {g:+.2f}" for n, s, g in gaps if g < -WITHIN],
        }
    )
    far = [(n, s, g) for n, s, g in gaps if g < -FLOOR]
    worst = min((g for *_, g in gaps), default=float("nan"))
    out.append(
        {
            "name": f"never more than {FLOOR:g} points below it",
            "passed": bool(gaps) and not far,
            "value": f"worst {worst:+.2f}" if gaps else "no data",
            "misses": [f"{n} seed {s}: {g:+.2f}" for n, s, g in far],
        }
    )
    spread = [
        (c["case"].name, c["stats"]["kerasft"]["std"], c["stats"][c["best"]]["std"], c["best"])
        for c in summary
        if c["gaps"] and len(c["stats"]["kerasft"]["scores"]) > 1
    ]
    wide = [x for x in spread if x[1] > x[2]]
    out.append(
        {
            "name": "kerasft's seed spread (std) no wider than the best baseline's, per case",
            "passed": (not wide) if spread else None,
            "value": f"{len(spread) - len(wide)}/{len(spread)} cases"
            if spread
            else "needs 2+ seeds",
            "misses": [f"{n}: std {k:.2f} vs {b} {s:.2f}" for n, k, s, b in wide],
        }
    )
    median = statistics.median(r for *_, r in ratios) if ratios else float("nan")
    slow = sorted({n for n, _, r in ratios if r > 1.0})
    out.append(
        {
            "name": "median wall time at most the reference recipe's "
            "(median of kerasft/ref per case-seed <= 1)",
            "passed": bool(ratios) and median <= 1.0,
            "value": f"median ratio {median:.2f} over {len(ratios)} case-seeds"
            if ratios
            else "no data",
            "misses": ([f"median {median:.2f} > 1"] if ratios and median > 1.0 else [])
            + [f"slower than ref (mean ratio > 1): {', '.join(slow)}"] * bool(slow),
        }
    )
    return out


def _cell(stats: dict, method: str) -> str:
    if method not in stats:
        return ""
    s = stats[method]
    return f"{s['mean']:.1f} ± {s['std']:.1f}"


def _seconds(stats: dict, method: str) -> str:
    if method not in stats:
        return ""
    return f"{statistics.fmean(stats[method]['seconds'].values()):.0f}"


def render(rows: Sequence[dict], cases: Sequence[Any], results_path: str, png_name: str) -> str:
    summary = summarize(rows, cases)
    # What the tables show: each (case, seed, method)'s latest row.
    last = latest(rows).values()
    shown = [r for r in last if "error" not in r and "machine" in r]
    machines: dict[tuple, list[dict]] = {}
    for r in shown:
        key = (r["machine"]["cpu"], r["machine"]["cores"], r["machine"]["memory_gib"])
        machines.setdefault(key, []).append(r)
    versions = {
        tuple(
            (k, r["machine"].get(k))
            for k in ("python", "tensorflow", "keras", "keras_hub", "onednn")
        )
        for r in shown
    }
    commits = sorted(
        {str(r["machine"].get("commit")) for r in shown if r.get("method") == "kerasft"}
    )
    times = sorted(r["time"] for r in shown if "time" in r)
    seeds = sorted({r["seed"] for r in rows})
    loads = [r["loadavg"] for r in shown if "loadavg" in r]
    errors = [r for r in last if "error" in r]
    lines = [
        "# Benchmark matrix: kerasft's defaults against the baselines a user would write",
        "",
        "The evidence for kerasft's default recipe. Each case is a real pretrained",
        "model on real data; for every case and seed, `benchmarks/matrix.py` runs",
        "`kerasft.finetune(model, (x_train, y_train), seed=seed, verbose=0)` with the",
        "defaults, and beside it, in the same process and on the same split, the baselines",
        "that a user would otherwise write. The seed picks which examples are labelled",
        "(stratified) and seeds training; test sets are disjoint from the labelled examples.",
        "Scores are points (x100), mean ± standard deviation over seeds.",
        "",
        "```bash",
        (
            "python benchmarks/matrix.py --quick        # every case, 1 seed, small test sets, "
            "no fit30"
        ),
        "python benchmarks/matrix.py                # every case x seeds 0 1 2, resumable",
        (
            "python benchmarks/matrix.py --only kerasft # re-run kerasft's rows against "
            "stored baselines"
        ),
        "python benchmarks/matrix.py --report       # this page and matrix.png",
        "```",
        "",
        "## How it ran",
        "",
    ]
    if any(r.get("quick") for r in rows):
        lines.append(
            "- **Quick run** (`--quick`): one seed, test sets capped at 500 images / 200 texts, "
            "no fit30. Indicative only."
        )
    for (cpu, cores, mem), ran in sorted(machines.items(), key=lambda kv: -len(kv[1])):
        which = ""
        if len(ran) < len(shown) / 2:  # name the few rows of a second machine
            by_case: dict[str, set] = {}
            for r in ran:
                by_case.setdefault(r["case"], set()).add(r["method"])
            which = ": " + "; ".join(
                f"{case} ({', '.join(sorted(methods))})" for case, methods in by_case.items()
            )
        lines.append(
            f"- Machine: {cpu}, {cores} cores, {mem} GiB RAM, no GPU, {len(ran)} of the "
            f"{len(shown)} rows in the tables{which}."
        )
    if loads:
        mixed = (
            "; a time ratio whose two rows ran on different machines mixes their speeds"
            if len(machines) > 1
            else ""
        )
        lines.append(
            f"- {'Machines' if len(machines) > 1 else 'The machine was'} shared with other jobs "
            f"(1-minute load average at the start of a row: {min(loads):.1f}-{max(loads):.1f}), "
            f"so seconds drift by 10-20%{mixed}."
        )
    for v in sorted(versions):
        d = dict(v)
        lines.append(
            f"- Python {d['python']}, TensorFlow {d['tensorflow']} (oneDNN off: "
            f"`TF_ENABLE_ONEDNN_OPTS={d['onednn']}`), Keras {d['keras']}, KerasHub "
            f"{d['keras_hub']}."
        )
    lines += [
        f"- kerasft at commit {', '.join(f'`{c}`' for c in commits) or 'n/a'} "
        f"(the `kerasft` rows shown); rows shown from {times[0] if times else 'n/a'} to "
        f"{times[-1] if times else 'n/a'}; "
        f"seeds {', '.join(map(str, seeds))}; {len(rows)} rows in `{results_path}`.",
        "- Batch 32 everywhere; MiniLM at sequence length 128 (`BertTextClassifierPreprocessor"
        "(tokenizer, sequence_length=128)`); seconds are training only (for `lp`: the frozen"
        " forward pass over the labelled examples plus the scikit-learn fit), and for kerasft"
        " the whole `finetune` call.",
        "",
        "## Cases",
        "",
        "Dev cases were used to tune the defaults; held-out cases never were: judge on those.",
        "",
        "| case | set | metric | model -> data |",
        "|---|---|---|---|",
    ]
    for case in cases:
        lines.append(f"| {case.name} | {case.group} | {case.metric} | {case.description} |")
    lines += [
        "",
        "## Methods",
        "",
        "- **kerasft**: `kerasft.finetune(model, (x_train, y_train), seed=seed, verbose=0)`, all",
        "  defaults, scored with `result.evaluate((x_test, y_test))`.",
        (
            "- **fit3**, **fit30**: plain Keras `fit` of the pretrained model, "
            "everything trainable, all"
        ),
        "  labels, no validation, 3 and 30 epochs; `Adam(1e-3)` for the CNNs and the GloVe model,",
        "  `AdamW(5e-5)` for MiniLM. For MiniLM, **fit30 means 10 epochs**: 30 epochs of a",
        "  22M-parameter BERT at sequence length 128 take hours on 2 CPU cores. A new `Dense` head",
        "  of the task's width replaces the pretrained one when the class count differs.",
        "- **ref**: the family's reference recipe. CNNs and GloVe: the Keras transfer-learning",
        "  guide's: pretrained layers frozen (BatchNormalization in inference mode), the head and",
        "  the other new layers trained 20 epochs with `Adam(1e-3)`, then everything but",
        "  BatchNormalization 10 epochs with `Adam(1e-5)`. MiniLM: KerasHub's full fine-tune,",
        "  `Adam(5e-5)`, 3 epochs (fit3 with Adam instead of AdamW).",
        (
            "- **lp**: linear probe on frozen features with scikit-learn: "
            "`LogisticRegression(max_iter=2000)`"
        ),
        "  (one per label for multi-label), `Ridge()` for regression. Features: the head's input;",
        (
            "  for MiniLM the masked mean of `sequence_output`. **lp_cls**: MiniLM's [CLS] "
            "`pooled_output`."
        ),
        (
            "- Baselines score with `kerasft.report_from_predictions` (0.5 thresholds for "
            "multi-label),"
        ),
        "  the same figures as `result.evaluate`.",
        "",
        "## Results",
        "",
        "Best baseline: the one with the highest mean. `kerasft - best`: mean over seeds of",
        "kerasft's score minus that baseline's on the same seed. `time`: mean kerasft seconds /",
        "mean ref seconds.",
        "",
        (
            "| case | set | seeds | kerasft | fit3 | fit30 | ref | lp | lp_cls "
            "| best | kerasft - best | time kerasft/ref |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in summary:
        st, best = c["stats"], c["best"]
        gap = f"{statistics.fmean(c['gaps'].values()):+.1f}" if c["gaps"] else ""
        ratio = ""
        if "kerasft" in st and "ref" in st:
            ours = statistics.fmean(st["kerasft"]["seconds"].values())
            ref = statistics.fmean(st["ref"]["seconds"].values())
            ratio = f"{ours / ref:.2f}"
        n = max(len(s["scores"]) for s in st.values())
        lines.append(
            f"| {c['case'].name} | {c['case'].group} | {n} | "
            + " | ".join(_cell(st, m) for m in METHODS)
            + f" | {best or ''} | {gap} | {ratio} |"
        )
    lines += [
        "",
        "Training seconds (mean over seeds):",
        "",
        "| case | kerasft | fit3 | fit30 | ref | lp | lp_cls |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in summary:
        lines.append(
            f"| {c['case'].name} | " + " | ".join(_seconds(c["stats"], m) for m in METHODS) + " |"
        )
    lines += [
        "",
        f"![kerasft minus the best baseline, per case and seed]({png_name})",
        "",
        "## Targets",
        "",
    ]
    for t in targets(summary):
        status = {True: "PASS", False: "MISS", None: "N/A"}[t["passed"]]
        lines.append(f"- {status}: {t['name']}: {t['value']}.")
        lines += [f"  - {m}" for m in t["misses"]]
    recipes = [(c["case"].name, ", ".join(c["recipes"])) for c in summary if c["recipes"]]
    if recipes:
        lines += [
            "",
            "kerasft's recipe per case (`result.options.recipe`): "
            + "; ".join(f"{n}: `{r}`" for n, r in recipes)
            + ".",
        ]
    if errors:
        lines += ["", "## Failed rows", ""]
        lines += [
            f"- {r['case']} seed {r['seed']} {r['method']}: {r['error'][:300]}" for r in errors
        ]
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [c for c in summary if c["gaps"]]
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(rows), 1) + 1.2))
    for i, c in enumerate(rows):
        color = "tab:blue" if c["case"].group == "dev" else "tab:orange"
        gaps = list(c["gaps"].values())
        ax.scatter(gaps, [i] * len(gaps), color=color, s=18, alpha=0.7)
        ax.scatter([statistics.fmean(gaps)], [i], color=color, marker="D", s=40, edgecolor="black")
    ax.axvline(0, color="black", lw=0.8)
    ax.axvline(-WITHIN, color="gray", ls="--", lw=0.8)
    ax.axvline(-FLOOR, color="red", ls=":", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{c['case'].name} (vs {c['best']})" for c in rows])
    ax.invert_yaxis()
    ax.set_xlabel("kerasft minus best baseline (points); dots: seeds, diamond: mean")
    ax.set_title("blue: dev cases, orange: held-out; dashed -1, dotted -3", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(rows: Sequence[dict], cases: Sequence[Any], doc: str, *, results_path: str) -> None:
    """Write ``doc`` (Markdown) and the PNG beside it (same name, ``.png``)."""
    png = os.path.splitext(doc)[0] + ".png"
    plot(summarize(rows, cases), png)
    with open(doc, "w", encoding="utf-8") as f:
        f.write(render(rows, cases, results_path, os.path.basename(png)))
