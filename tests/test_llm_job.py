"""The generative job's command line and the pieces that need no model.

The job itself runs in benchmarks/generate.py.
"""

from __future__ import annotations

import kerasft  # noqa: F401  (first: oneDNN off)

# isort: split
from kerasft import cli
from kerasft.jobs import generate as job
from kerasft.llm.options import SFTConfig


def test_cli_refuses_options_the_job_does_not_take(capsys):
    assert cli.main(["finetune", "--task", "generate", "--shots", "3", "--unfreeze", "2"]) == 2
    err = capsys.readouterr().err
    assert "Arguments ['--shots', '--unfreeze'] do not apply to --task generate" in err
    args = cli.build_parser().parse_args(
        ["finetune", "--task", "generate", "--lr", "3e-4", "--export", "m.gguf"]
    )
    assert args.task == "generate" and args.lr == 3e-4 and args.export == "m.gguf"


def test_review_prompts_and_recipe():
    [(prompt, answer)] = job.review_pairs(["  A joyless slog. "], [0])
    assert (
        prompt.endswith("Review: A joyless slog.")
        and "fresh or rotten" in prompt
        and answer == "rotten"
    )
    SFTConfig(**job.GENERATE_RECIPE)  # the recipe is a valid configuration
    assert kerasft.llm.GGUFTokenizer.__name__ == "GGUFTokenizer"  # kerasft.llm loads on first use
