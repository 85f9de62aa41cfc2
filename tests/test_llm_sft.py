"""Supervised fine-tuning on a tiny random Llama.

KerasHub classes, a real BPE vocabulary and the SmolLM2 chat template.
"""

from __future__ import annotations

import kerasft  # noqa: F401  (first: oneDNN off)

# isort: split
import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from test_llm_gguf import write_tiny_gguf

from kerasft import llm
from kerasft.llm import sft
from kerasft.llm.trainer import SFTModel

PAIRS = [(f"Say {w}", w) for w in ("fresh", "rotten") * 12]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> str:
    return write_tiny_gguf(str(tmp_path_factory.mktemp("sft") / "tiny.gguf"))


@pytest.fixture(scope="module")
def tiny(tiny_path):  # read-only: the tests that train copy it or load their own
    return llm.load_gguf(tiny_path, sequence_length=64)


def _masked_text(tokenizer, example: sft.Example) -> str:
    return tokenizer.detokenize(
        [[int(t) for t, m in zip(example.token_ids, example.loss_mask) if m]]
    )[0]


def test_loss_masks(tiny):
    tok = tiny.preprocessor.tokenizer
    template = tok.chat_template
    kind, [pair] = sft.tokenize_examples([("Is it good?", "fresh")], tok, chat_template=template)
    assert kind == "pairs"
    assert _masked_text(tok, pair) == "fresh<|im_end|>"
    full = tok.detokenize([pair.token_ids.tolist()])[0]
    assert full == llm.render_chat(
        template,
        [{"role": "user", "content": "Is it good?"}, {"role": "assistant", "content": "fresh"}],
    )
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Verdict?"},
        {"role": "assistant", "content": "rotten"},
    ]
    kind, [chat] = sft.tokenize_examples([conversation], tok, chat_template=template)
    assert kind == "messages" and _masked_text(tok, chat) == "Hello.<|im_end|>rotten<|im_end|>"
    _, [plain] = sft.tokenize_examples([("Q: ", "A")], tok, chat_template=None)
    assert (
        _masked_text(tok, plain) == "A<|im_end|>"
        and tok.detokenize([plain.token_ids.tolist()])[0] == "Q: A<|im_end|>"
    )
    _, [text] = sft.tokenize_examples(["plain text here"], tok)
    assert text.loss_mask.all()
    _, [everything] = sft.tokenize_examples(
        [("Is it good?", "fresh")], tok, chat_template=template, loss_on="all"
    )
    assert everything.loss_mask.all() and len(everything) == len(pair)
    _, chunks = sft.tokenize_examples(["word " * 50], tok, max_length=16)
    assert len(chunks) > 2 and max(len(c) for c in chunks) == 16


def test_data_forms_and_errors(tiny):
    tok = tiny.preprocessor.tokenizer
    prompts, completions = ["a", "b"], ["x", "y"]
    forms = [
        list(zip(prompts, completions)),
        (prompts, completions),
        {"prompt": prompts, "completion": completions},
        pd.DataFrame({"prompt": prompts, "completion": completions}),
        [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)],
    ]
    for form in forms:
        assert sft.normalize_data(form) == ("pairs", [("a", "x"), ("b", "y")])
    assert sft.normalize_data({"text": ["t"]}) == ("text", ["t"])
    with pytest.raises(
        ValueError, match="has columns \\['label', 'review'\\]; it needs 'prompt' and 'completion'"
    ):
        sft.normalize_data({"review": ["r"], "label": [1]})
    with pytest.raises(ValueError, match="Argument `data` must be a non-empty list"):
        sft.normalize_data([])
    with pytest.raises(ValueError, match="needs lists of the same length"):
        sft.normalize_data((["a"], ["x", "y"]))
    with pytest.raises(ValueError, match="message 0 must have a role in"):
        sft.normalize_data([[{"role": "robot", "content": "x"}]])
    with pytest.raises(
        ValueError, match="Argument `loss_on` must be one of \\['completion', 'all'\\]"
    ):
        sft.tokenize_examples(PAIRS, tok, loss_on="prompt")
    with pytest.raises(ValueError, match="has no token to learn from"):
        sft.tokenize_examples(["a"], tok)  # one token: nothing to predict


def test_packing_changes_no_loss(tiny):
    tok = tiny.preprocessor.tokenizer
    _, examples = sft.tokenize_examples(
        PAIRS[:6] + [("A longer prompt about a film that bored me", "rotten")],
        tok,
        chat_template=tok.chat_template,
        loss_on="all",
    )
    packed = sft.pack(examples, 256, pad_id=tok.pad_token_id)
    padded = sft.pad(examples, 128, pad_id=tok.pad_token_id)
    assert len(packed.token_ids) < len(padded.token_ids) and packed.tokens == padded.tokens
    model = SFTModel(tiny)

    def loss(rows: sft.PackedData) -> float:
        hidden = model(rows.inputs())
        return float(
            model.compute_loss(y=rows.target_ids, y_pred=hidden, sample_weight=rows.loss_weights)
        )

    assert abs(loss(packed) - loss(padded)) < 1e-5
    # KerasHub's own forward pass and loss on one example agree with the packed view.
    e = examples[-1]
    ids = e.token_ids[None, :-1]
    logits = tiny({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    expected = keras.losses.sparse_categorical_crossentropy(
        e.token_ids[None, 1:], logits, from_logits=True
    )
    alone = sft.pad([e], 128)
    assert abs(loss(alone) - float(np.mean(expected))) < 1e-5


def test_remat_gives_the_same_gradients(tiny):
    tok = tiny.preprocessor.tokenizer
    _, examples = sft.tokenize_examples(PAIRS[:4], tok, chat_template=tok.chat_template)
    rows = sft.pack(examples, 160, pad_id=tok.pad_token_id)
    adapted = llm.finetune.copy_causal_lm(tiny)
    kerasft.peft.apply_lora(adapted, rank=4, train=())
    for model in (tiny, adapted):  # everything trainable; LoRA on a frozen base
        grads = []
        for remat in (False, True):
            trainer = SFTModel(model, remat=remat)
            with tf.GradientTape() as tape:
                value = trainer.compute_loss(
                    y=rows.target_ids,
                    y_pred=trainer(rows.inputs(), training=True),
                    sample_weight=rows.loss_weights,
                )
            grads.append(
                [
                    np.asarray(tf.convert_to_tensor(g))
                    for g in tape.gradient(value, model.trainable_variables)
                ]
            )
        assert len(grads[0]) == len(model.trainable_variables)
        assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_finetune_learns_the_answers(tiny_path):
    result = kerasft.finetune(tiny_path, PAIRS, recipe="full", epochs=6, lr=2e-2, verbose=0)
    assert isinstance(result, llm.SFTResult) and result.epochs_run == 6
    assert result.history["loss"][-1] < 0.2 * result.history["loss"][0]
    report = result.evaluate(PAIRS[:8], choices=["fresh", "rotten"])
    assert report.accuracy == 1.0 and report.unparsed == 0.0 and report.perplexity < 2.0
    assert result.plan.fill > 0.8 and result.tokens_per_second > 0


def test_plan_validation_accumulation_and_resume(tiny, tiny_path, tmp_path):
    plan = kerasft.plan(
        tiny,
        PAIRS,
        recipe=llm.SFTConfig(sequence_length=128, lora_targets="all-linear", lora_rank=4),
    )
    assert plan.sequence_length == 128 and plan.recipe == "lora"
    assert 0 < plan.trainable < plan.total and "kerasft SFT plan: 24 examples" in str(plan)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    options = dict(
        epochs=2,
        validation_split=0.25,
        gradient_accumulation=2,
        lora_rank=4,
        verbose=0,
        checkpoint_dir=str(tmp_path / "ckpt"),
    )
    with pytest.raises(KeyboardInterrupt):
        llm.finetune_causal_lm(tiny, PAIRS, callbacks=[Interrupt()], **options)
    assert not kerasft.peft.has_adapters(tiny)  # trained a copy
    result = llm.finetune_causal_lm(tiny, PAIRS, **options)
    assert result.epochs_run == 1 and len(result.history["loss"]) == 2  # resumed after epoch 1
    assert result.plan.validation_examples == 6 and len(result.history["val_loss"]) == 2
    assert result.best_val_loss == min(result.history["val_loss"])
    with pytest.raises(ValueError, match="holds the checkpoint of a different call"):
        llm.finetune_causal_lm(tiny, PAIRS[:10], **options)


def test_nan_guard(tiny):
    result = llm.finetune_causal_lm(
        tiny,
        PAIRS[:6],
        recipe="full",
        lr=1e12,
        optimizer="sgd",
        global_clipnorm=None,
        epochs=2,
        verbose=0,
    )
    assert (
        result.nan is not None
        and not np.isfinite(result.nan.loss)
        and result.nan.learning_rate == 1e12
    )
    assert all(np.all(np.isfinite(np.asarray(v))) for v in result.model.trainable_variables)


def test_option_errors(tiny):
    with pytest.raises(
        ValueError, match=r"Argument `batch_size` must be an integer >= 1. Received: batch_size=0"
    ):
        llm.SFTConfig(batch_size=0)
    with pytest.raises(
        ValueError, match=r"Argument `recipe` must be one of \['lora', 'dora', 'full'\]"
    ):
        kerasft.finetune(tiny, PAIRS, recipe="lp-ft")
    with pytest.raises(
        ValueError, match=r"Arguments \['head_epochs'\] do not apply to a causal LM"
    ):
        kerasft.finetune(tiny, PAIRS, head_epochs=2)
    with pytest.raises(ValueError, match="needs recipe='lora'"):
        llm.SFTConfig(recipe="full", quantize="int8")
    with pytest.raises(TypeError, match="must be a KerasHub CausalLM"):
        llm.finetune_causal_lm(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), PAIRS)
