"""A table of several methods' scores per case and seed, and kerasft's gain over one of them."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable


def print_side_by_side(
    cases: Iterable[str],
    seeds: Iterable[int],
    methods: tuple[str, ...],
    against: str,
    scores: Callable[[str, int], tuple[str, dict[str, float]]],
) -> None:
    """Print a Markdown row per case and seed, then kerasft - ``against`` a case.

    ``scores(case, seed)`` runs every method on that case and seed and returns the case's
    set (``"dev"`` or ``"held-out"``) and ``{method: score}``.
    """
    seeds = list(seeds)
    print(f"| case | set | seed | {' | '.join(methods)} | kerasft - {against} |")
    print("|---|---|---|" + "---|" * len(methods) + "---|")
    gains: dict[str, list[float]] = {}
    for name in cases:
        for seed in seeds:
            group, got = scores(name, seed)
            gain = got["kerasft"] - got[against]
            gains.setdefault(name, []).append(gain)
            cells = " | ".join(f"{got[m]:.2f}" for m in methods)
            print(f"| {name} | {group} | {seed} | {cells} | {gain:+.2f} |", flush=True)
    for name, values in gains.items():
        wins = sum(v > 0 for v in values)
        print(
            f"{name}: kerasft - {against} {statistics.mean(values):+.2f} a seed, "
            f"higher on {wins} of {len(values)}"
        )


def main(
    description: str,
    cases: Iterable[str],
    methods: tuple[str, ...],
    against: str,
    scores: Callable[[str, int], tuple[str, dict[str, float]]],
    argv: list[str] | None = None,
) -> None:
    """``--cases`` (default: all of ``cases``) and ``--seeds`` (default 0 1 2), then the table."""
    import argparse

    cases = list(cases)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cases", nargs="+", default=cases, choices=cases)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args(argv)
    print_side_by_side(args.cases, args.seeds, methods, against, scores)
