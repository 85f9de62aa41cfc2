"""Data preparation: every accepted form, label detection, splits, and input checks."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasft import data as data_lib


def _labels(ds):
    return np.concatenate([y for _, y in ds.as_numpy_iterator()])


def test_numpy_tuple_stratified_reproducible_split(digits_small, shipped_model):
    x, y = digits_small
    a = data_lib.prepare_data((x, y), model=shipped_model, validation_split=0.2, seed=3)
    b = data_lib.prepare_data((x, y), model=shipped_model, validation_split=0.2, seed=3)
    assert a.spec.num_classes == 10 and a.spec.label_mode == "sparse"
    assert a.n_train == 240 and a.n_validation == 60
    va, vb = _labels(a.validation), _labels(b.validation)
    np.testing.assert_array_equal(va, vb)
    assert np.bincount(va).tolist() == [6] * 10  # stratified: 20% of 30 per class
    assert a.steps_per_epoch == 8


def test_in_memory_pipelines_run_without_tf_data_autotuning(digits_small, shipped_model):
    # Its tuning restarts with every iterator (each epoch and evaluation): over arrays in
    # memory there is nothing to tune, and it stalled a third of the epochs' first steps.
    x, y = digits_small
    prepared = data_lib.prepare_data((x, y), model=shipped_model, validation_split=0.2, seed=0)
    for ds in (prepared.train, prepared.validation):
        assert ds.options().autotune.enabled is False
    # The same batches in the same order as the pipeline with tuning on.
    ds = data_lib.make_pipeline(x, y, 32, 0, shuffle=True)
    tuned = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=0).batch(32)
    np.testing.assert_array_equal(_labels(ds), _labels(tuned.prefetch(tf.data.AUTOTUNE)))


@pytest.mark.parametrize("batched", [False, True])
def test_tf_data_batched_or_not(digits_small, shipped_model, batched):
    x, y = digits_small
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if batched:
        ds = ds.batch(17)
    p = data_lib.prepare_data(ds, model=shipped_model, validation_split=0.2, batch_size=32)
    assert p.in_memory and p.n_train + p.n_validation == 300
    xb, yb = next(iter(p.train))
    assert xb.shape == (32, 28, 28, 1) and yb.dtype == tf.int64


def test_dataset_of_dicts_like_tfds(digits_small, shipped_model):
    x, y = digits_small
    ds = tf.data.Dataset.from_tensor_slices({"image": x, "label": y})
    p = data_lib.prepare_data(ds, model=shipped_model)
    assert p.spec.num_classes == 10


def test_tfds_builder_offline(tmp_path, digits_small, shipped_model):
    tfds = pytest.importorskip("tensorflow_datasets")
    x, y = digits_small
    ds = tf.data.Dataset.from_tensor_slices({"image": x.astype("uint8"), "label": y})
    tfds.dataset_builders.store_as_tfds_dataset(
        name="digits_small",
        version="1.0.0",
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(28, 28, 1)),
                "label": tfds.features.ClassLabel(num_classes=10),
            }
        ),
        split_datasets={"train": ds},
        data_dir=str(tmp_path),
        config=None,
        description="digits",
    )
    builder = tfds.builder_from_directory(str(tmp_path / "digits_small" / "1.0.0"))
    p = data_lib.prepare_data(builder, model=shipped_model)
    assert p.n_train + p.n_validation == 300 and p.spec.num_classes == 10
    split = builder.as_dataset(split="train", as_supervised=False)
    assert data_lib.prepare_data(split, model=shipped_model).spec.num_classes == 10


def test_one_hot_and_binary_detection(digits_small):
    x, y = digits_small
    onehot = keras.utils.to_categorical(y, 10)
    assert data_lib.infer_spec(onehot).label_mode == "one_hot"
    yb = (y % 2).astype("int64")
    assert data_lib.infer_spec(yb, head_units=1).label_mode == "binary"
    assert data_lib.infer_spec(yb, head_units=10).label_mode == "sparse"
    assert data_lib.infer_spec(y.astype("float32")).num_classes == 10  # whole floats are fine


def test_random_pipelines_are_streamed_not_frozen(digits_small, shipped_model):
    x, y = digits_small
    ds = tf.data.Dataset.from_tensor_slices((x, y)).map(
        lambda a, b: (a + tf.random.uniform(tf.shape(a), 0, 1), b)
    )
    assert data_lib.has_random_ops(ds)
    assert not data_lib.has_random_ops(tf.data.Dataset.from_tensor_slices((x, y)).shuffle(10))
    p = data_lib.prepare_data(ds, model=shipped_model, validation_split=0.25, seed=0)
    assert not p.in_memory
    n_train = sum(int(b.shape[0]) for _, b in p.train)
    n_val = sum(int(b.shape[0]) for _, b in p.validation)
    assert n_train + n_val == 300 and 40 <= n_val <= 110
    # the split is a function of position and seed only: the same every epoch
    assert [int(b.shape[0]) for _, b in p.validation] == [int(b.shape[0]) for _, b in p.validation]


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda x, y: (x, y + 5),
            r"label 14 is out of range for num_classes=10; labels must be in \[0, 10\)",
        ),
        (lambda x, y: (x, y - 1), r"labels must be in \[0, num_classes\), but the smallest is -1"),
        (lambda x, y: (x, y + 0.5), r"labels are floats that are not class indices"),
        (
            lambda x, y: (x[:, :8, :8], y),
            r"each input has shape \(8, 8, 1\), but the model expects \(28, 28, 1\)",
        ),
        (lambda x, y: (x[:0], y[:0]), r"Argument `data` is empty"),
        (lambda x, y: (x, y[:10]), r"x and y must have the same length"),
        (lambda x, y: (np.where(x > 250, np.nan, x), y), r"inputs contain NaN or inf"),
        (
            lambda x, y: (x, keras.utils.to_categorical(y, 12)),
            r"does not match the one-hot label width 12",
        ),
        (lambda x, y: (x, np.zeros_like(y)), r"a classifier needs at least 2 classes"),
        (lambda x, y: (x, np.where(y == 3, 4, y)), r"classes \[3\] have no examples"),
    ],
)
def test_bad_data_messages(digits_small, shipped_model, make, message):
    x, y = make(*digits_small)
    num_classes = 10 if "one-hot" in message or "out of range" in message else None
    # Float targets are regression targets unless the task is said to be classification.
    task = "classification" if "floats" in message else None
    with pytest.raises(ValueError, match=message):
        data_lib.prepare_data((x, y), model=shipped_model, num_classes=num_classes, task=task)


def test_wrong_structure_messages(digits_small, shipped_model):
    x, y = digits_small
    with pytest.raises(ValueError, match=r"must yield \(x, y\) pairs, but it yields TensorSpec"):
        data_lib.prepare_data(tf.data.Dataset.from_tensor_slices(x), model=shipped_model)
    with pytest.raises(ValueError, match=r"yields 3-tuples"):
        data_lib.prepare_data(tf.data.Dataset.from_tensor_slices((x, y, y)), model=shipped_model)
    with pytest.raises(TypeError, match=r"Received: str"):
        data_lib.prepare_data("not data", model=shipped_model)
    with pytest.raises(ValueError, match=r"Argument `data` is empty"):
        data_lib.prepare_data(
            tf.data.Dataset.from_tensor_slices((x, y)).take(0), model=shipped_model
        )
    with pytest.raises(
        ValueError,
        match=r"Argument `validation_split` must be in \[0, 1\). Received: validation_split=1.5",
    ):
        data_lib.prepare_data((x, y), validation_split=1.5)


def _tiny_roberta():
    import keras_hub

    vocabulary = {
        "<s>": 0,
        "<pad>": 1,
        "</s>": 2,
        "<mask>": 3,
        "<unk>": 4,
        "a": 5,
        "b": 6,
        "Ġa": 7,
        "Ġb": 8,
        "ab": 9,
        "Ġab": 10,
        "Ġ": 11,
    }
    tokenizer = keras_hub.models.RobertaTokenizer(
        vocabulary=vocabulary, merges=["a b", "Ġ a", "Ġ b", "Ġa b"]
    )
    preprocessor = keras_hub.models.RobertaTextClassifierPreprocessor(tokenizer, sequence_length=8)
    backbone = keras_hub.models.RobertaBackbone(
        vocabulary_size=12,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
    )
    return keras_hub.models.RobertaTextClassifier(
        backbone, num_classes=2, preprocessor=preprocessor
    )


def test_tokenizer_that_refuses_numpy_strings_gets_a_tensor():
    # KerasHub's byte-pair tokenizers on the `tokenizers` library take str, a list of str
    # or a string tensor, and raised "Input should be a string or a list of strings" on
    # the numpy array kerasft used to pass.
    import kerasft

    x = np.array(["a b", "b a", "ab ab", "a", "b b", "a a"] * 4)
    y = np.array([0, 1, 0, 1, 1, 0] * 4)
    result = kerasft.finetune(
        _tiny_roberta(), (x, y), head_epochs=1, epochs=1, batch_size=8, verbose=0
    )
    assert result.evaluate((x, y))["accuracy"] >= 0.0
    assert result.model.preprocessor is not None
