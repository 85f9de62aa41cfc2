"""Every input form Keras's fit takes, fed through finetune and checked by name."""

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import kerasft
from kerasft import data as data_lib
from kerasft.jobs import textdata

QUICK = dict(head_epochs=1, epochs=2, verbose=0)


def two_input_model(dict_inputs: bool) -> keras.Model:
    """A model of two named inputs: an 8x8 digit image and its 4 row sums."""
    image = keras.Input((8, 8, 1), name="image")
    rows = keras.Input((8,), name="rows")
    x = keras.layers.Flatten(name="flat")(image)
    x = keras.layers.Concatenate(name="join")(
        [
            keras.layers.Dense(32, activation="relu", name="img_fc")(x),
            keras.layers.Dense(8, activation="relu", name="row_fc")(rows),
        ]
    )
    out = keras.layers.Dense(10, activation="softmax", name="head")(x)
    inputs = {"image": image, "rows": rows} if dict_inputs else [image, rows]
    return keras.Model(inputs, out, name="two_inputs")


@pytest.fixture(scope="module")
def digits8():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]
    return x, x.sum(axis=2)[..., 0], d.target


@pytest.mark.parametrize("form", ["tuple", "list", "dict", "tf.data dict", "tf.data tuple batched"])
def test_two_input_models_take_every_structure(digits8, form):
    image, rows, y = digits8
    model = two_input_model(dict_inputs=form.startswith("dict") or "dict" in form)
    if form == "tuple":
        data = ((image, rows), y)
    elif form == "list":
        data = ([image, rows], y)
    elif form == "dict":
        data = ({"image": image, "rows": rows}, y)
    elif form == "tf.data dict":
        data = tf.data.Dataset.from_tensor_slices(({"image": image, "rows": rows}, y))
    else:
        data = tf.data.Dataset.from_tensor_slices(((image, rows), y)).batch(50)
    result = kerasft.finetune(model, data, recipe="full", epochs=4, lr=3e-3, verbose=0)
    report = result.evaluate(data)
    assert report.num_examples == len(y) and report["accuracy"] > 0.6


def test_dataframe_with_label_columns(digits8):
    image, rows, y = digits8
    frame = pd.DataFrame(rows, columns=[f"r{i}" for i in range(8)]).assign(digit=y)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(32, activation="relu", name="fc"),
            keras.layers.Dense(10, activation="softmax", name="head"),
        ]
    )
    result = kerasft.finetune(
        model, frame, label_columns="digit", recipe="full", epochs=5, lr=1e-2, verbose=0
    )
    assert (
        result.evaluate(frame, label_columns="digit")["accuracy"] > 0.3
    )  # row sums alone are weak
    # A model with one named input per column gets the columns by name.
    inputs = {f"r{i}": keras.Input((1,), name=f"r{i}") for i in range(8)}
    joined = keras.layers.Concatenate(name="join")(list(inputs.values()))
    named = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="head")(joined))
    result = kerasft.finetune(
        named, frame, label_columns="digit", recipe="full", epochs=2, verbose=0
    )
    assert result.evaluate(frame, label_columns="digit").num_examples == len(frame)


@pytest.fixture(scope="module")
def reviews():
    split = textdata.rotten_tomatoes_few_shot(n_train=300, n_test=200, seed=0)
    return split


def test_raw_strings_into_a_text_vectorization_model(reviews):
    vectorize = keras.layers.TextVectorization(
        max_tokens=3000, output_sequence_length=40, name="vectorize"
    )
    vectorize.adapt(reviews.x_train)
    inputs = keras.Input((), dtype="string", name="text")
    x = vectorize(inputs)
    x = keras.layers.Embedding(3000, 16, name="embed")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))
    result = kerasft.finetune(
        model, (reviews.x_train, reviews.y_train), recipe="full", epochs=3, verbose=0
    )
    report = result.evaluate((reviews.x_test, reviews.y_test))
    assert report.task == "binary" and report.num_examples == 200
    # Numbers into a text model are refused by name.
    with pytest.raises(
        ValueError, match=r"holds numbers \(dtype float64\), but the model takes text"
    ):
        kerasft.finetune(model, (np.zeros((10,)), np.arange(10) % 2), verbose=0)


def test_raw_strings_reach_the_closed_form_probe(reviews):
    """The default recipe probes a text model's head on its features from the raw strings."""
    vectorize = keras.layers.TextVectorization(
        max_tokens=3000, output_sequence_length=40, name="vectorize"
    )
    vectorize.adapt(reviews.x_train)
    inputs = keras.Input((), dtype="string", name="text")
    x = keras.layers.Embedding(3000, 16, name="embed")(vectorize(inputs))
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))
    texts = np.asarray(reviews.x_train)  # numpy's fixed-width unicode, as users hold text
    assert texts.dtype.kind == "U"
    result = kerasft.finetune(model, (texts, reviews.y_train), seed=0, verbose=0)
    assert result.probe is not None and result.probe.pooling == "head input"
    assert result.probe.head.selection == "5-fold cross-validation"
    assert result.evaluate((np.asarray(reviews.x_test), reviews.y_test)).num_examples == 200


def test_a_text_classifier_fine_tunes_from_the_probes_head_halved(reviews):
    """A model that trains its embeddings: the fine-tune starts from the probe's head with
    its kernel times ``EMBEDDING_HEAD_SCALE``, its bias as the probe fitted it, at a rate
    held after the warmup."""
    from kerasft.engine import auto

    vectorize = keras.layers.TextVectorization(
        max_tokens=2000, output_sequence_length=32, name="vectorize"
    )
    vectorize.adapt(reviews.x_train[:120])
    inputs = keras.Input((), dtype="string", name="text")
    x = keras.layers.Embedding(2000, 16, name="embed")(vectorize(inputs))
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))
    seen = []

    class FirstStep(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if not seen:
                head = self.model.get_layer("head")
                seen.append((np.array(head.kernel), np.array(head.bias)))

    texts = np.asarray(reviews.x_train[:120])
    result = kerasft.finetune(
        model, (texts, reviews.y_train[:120]), seed=0, epochs=1, verbose=0, callbacks=[FirstStep()]
    )
    decision = result.decision
    assert decision.head_scale == auto.EMBEDDING_HEAD_SCALE == 0.5
    assert decision.schedule == "warmup_constant"
    assert "from the probe's head, its kernel times 0.5," in str(result.plan)
    kernel, bias = seen[0]
    probe = result.probe.head
    np.testing.assert_allclose(
        kernel, 0.5 * probe.kernel.reshape(kernel.shape), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(bias, probe.bias.reshape(bias.shape), rtol=1e-4, atol=1e-6)
    # A kernel that is no float variable (low-rank adapters summed in) is left as it is.
    from kerasft import probe as probe_lib

    dense = keras.layers.Dense(2)
    dense.build((None, 4))
    before = np.array(dense.kernel)
    assert probe_lib.scale_head(dense, 0.5)
    np.testing.assert_allclose(np.array(dense.kernel), 0.5 * before)
    dense.enable_lora(2)
    assert not probe_lib.scale_head(dense, 0.5)


def test_variable_length_token_ids_are_padded(reviews):
    words = {
        w: i + 1
        for i, w in enumerate(sorted({w for t in reviews.x_train for w in t.lower().split()}))
    }
    ids = [[words.get(w, 0) for w in t.lower().split()] for t in reviews.x_train]
    assert len({len(s) for s in ids}) > 5  # really variable
    model = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(len(words) + 1, 16, mask_zero=True),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(2, activation="softmax", name="head"),
        ]
    )
    result = kerasft.finetune(model, (ids, reviews.y_train), recipe="full", epochs=2, verbose=0)
    assert result.phases[0].epochs >= 1
    ragged = tf.data.Dataset.from_generator(
        lambda: ((np.asarray(s, "int32"), y) for s, y in zip(ids, reviews.y_train)),
        output_signature=(tf.TensorSpec((None,), tf.int32), tf.TensorSpec((), tf.int64)),
    )
    prepared = data_lib.prepare_data(ragged, model=model)
    xb, _ = next(iter(prepared.train))
    assert xb.shape[1] == max(len(s) for s in ids)


def test_bad_inputs_name_the_input(digits8):
    image, rows, y = digits8
    model = two_input_model(dict_inputs=True)
    with pytest.raises(
        ValueError,
        match=r"input 'rows' is missing. The model's inputs are \['image' \(8, 8, 1\) float32, "
        r"'rows' \(8,\) float32\]",
    ):
        kerasft.finetune(model, ({"image": image}, y), verbose=0)
    with pytest.raises(ValueError, match=r"has inputs \['extra'\] that the model does not take"):
        kerasft.finetune(model, ({"image": image, "rows": rows, "extra": rows}, y), verbose=0)
    with pytest.raises(
        ValueError, match=r"input 'rows' each input has shape \(4,\), but the model expects \(8,\)"
    ):
        kerasft.finetune(model, ({"image": image, "rows": rows[:, :4]}, y), verbose=0)
    with pytest.raises(ValueError, match=r"the model takes 2 inputs .* but the data has 3"):
        kerasft.finetune(two_input_model(False), ((image, rows, rows), y), verbose=0)
    with pytest.raises(
        ValueError,
        match=r"inputs must be numeric arrays \(the model takes float32\), but have dtype <U",
    ):
        kerasft.finetune(model, ({"image": image, "rows": np.full((len(y), 8), "x")}, y), verbose=0)
    frame = pd.DataFrame(rows)
    with pytest.raises(
        ValueError, match=r"is a DataFrame; kerasft needs to know which columns are labels"
    ):
        kerasft.finetune(model, frame, verbose=0)
    with pytest.raises(ValueError, match=r"`label_columns='digit'`: no column 'digit'"):
        kerasft.finetune(model, frame, label_columns="digit", verbose=0)
