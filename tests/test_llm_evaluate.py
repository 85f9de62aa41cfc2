"""Generation, answer parsing, perplexity and exports of a fine-tuned tiny Llama."""

from __future__ import annotations

import os

import kerasft  # noqa: F401  (first: oneDNN off)

# isort: split
import numpy as np
import pytest
from test_llm_gguf import REVIEW, write_tiny_gguf

from kerasft import llm, peft
from kerasft.llm import sft
from kerasft.llm.evaluate import parse_answer

PAIRS = [(f"Say {w}", w) for w in ("fresh", "rotten") * 12]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> str:
    return write_tiny_gguf(str(tmp_path_factory.mktemp("evaluate") / "tiny.gguf"), seed=3)


@pytest.fixture(scope="module")
def trained(tiny_path):
    return llm.finetune_causal_lm(
        tiny_path,
        PAIRS,
        recipe="dora",
        epochs=2,
        lr=1e-2,
        verbose=0,
        lora_targets="all-linear",
        lora_rank=4,
    )


def test_generate_matches_keras_hub_greedy(tiny_path):
    model = llm.load_gguf(tiny_path, sequence_length=64)
    prompts = [llm.apply_chat_template(model, [{"role": "user", "content": REVIEW}])]
    ours = llm.generate(model, prompts, max_new_tokens=6)
    model.compile(sampler="greedy")
    tokenizer = model.preprocessor.tokenizer
    for prompt, text in zip(prompts, ours):
        n = len(np.asarray(tokenizer(prompt)))
        theirs = model.generate(prompt, max_length=n + 6, strip_prompt=True)
        assert text == theirs


def test_parse_answer():
    assert parse_answer("Rotten, though the cast is fresh", ["fresh", "rotten"]) == "rotten"
    assert parse_answer("freshly made", ["fresh", "rotten"]) is None
    assert parse_answer("  Paris. ") == "Paris."


def test_evaluate_reports_loss_and_accuracy(trained):
    report = trained.evaluate(PAIRS[:6], choices=["fresh", "rotten"], max_new_tokens=3)
    tokenizer = trained.model.preprocessor.tokenizer
    _, examples = sft.tokenize_examples(PAIRS[:6], tokenizer, chat_template=tokenizer.chat_template)
    assert report.tokens == sum(
        int(e.loss_mask[1:].sum()) for e in examples
    )  # the answers and turn ends
    assert report.perplexity == pytest.approx(np.exp(report.loss))
    assert (
        report.accuracy is not None and 0.0 <= report.unparsed <= 1.0 and len(report.answers) == 6
    )
    text = llm.evaluate_causal_lm(trained.model, [REVIEW, REVIEW + " Again."])
    assert text.accuracy is None and text.tokens > 20
    with pytest.raises(ValueError, match="Argument `max_new_tokens` must be a positive integer"):
        llm.generate(trained.model, ["x"], max_new_tokens=0)


def test_exports_read_back_and_match(trained, tiny_path, tmp_path):
    model = trained.model
    assert peft.has_adapters(model)
    keras_file = trained.export(str(tmp_path / "merged.keras"))
    assert keras_file.format == "keras" and keras_file.check["max_abs_diff"] < 1e-5
    preset = trained.export(str(tmp_path / "preset"))
    assert preset.format == "preset" and preset.check["max_abs_diff"] < 1e-5
    assert os.path.exists(os.path.join(preset, "tokenizer.json"))
    adapters = trained.export(str(tmp_path / "adapters.npz"))
    assert adapters.format == "adapters" and adapters.check is None
    base = llm.load_gguf(tiny_path)
    peft.load_adapters(base, adapters)
    assert llm.export.compare_logits(model, base)["max_abs_diff"] < 1e-5
    for dtype, tol in (("f16", 5e-2), ("q8_0", 0.5)):
        gguf_file = trained.export(str(tmp_path / f"model.{dtype}.gguf"), dtype=dtype)
        assert gguf_file.format == "gguf" and gguf_file.check["max_abs_diff"] < tol
        assert gguf_file.check["top1_agreement"] > 0.9
    with pytest.raises(ValueError, match="exists. HINT: pass overwrite=True"):
        trained.export(str(tmp_path / "merged.keras"))
    with pytest.raises(ValueError, match="Argument `format` must be 'auto' or one of"):
        trained.export(str(tmp_path / "x"), format="onnx")


def test_int8_base_and_gguf_refusal(tiny_path, tmp_path):
    config = llm.SFTConfig(quantize="int8", lora_rank=4)
    prepared = llm.finetune.prepare_sft(tiny_path, PAIRS[:8], config)
    assert prepared.adapters.base_bytes_after < prepared.adapters.base_bytes_before
    with pytest.raises(ValueError, match="has quantized layers"):
        llm.export_gguf(prepared.causal_lm, str(tmp_path / "q.gguf"))
