"""Feature caching: same results as without it, on real digits and the shipped model."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import nested_model

import kerasft
from kerasft import surgery
from kerasft.data import prepare_data
from kerasft.speed import caching
from kerasft.speed.caching import CachedFeatureModel, FeatureCache, split_frozen_prefix

QUICK = dict(verbose=0, patience=None)
DERIVED = "derived from the next phase's features (kept for it)"
KEPT = "kept from the previous phase"


def _run(model, data, **kwargs):
    return kerasft.finetune(model, data, **{**QUICK, **kwargs})


def _assert_same_run(a, b, rtol=1e-4, atol=1e-5):
    assert [p.name for p in a.phases] == [p.name for p in b.phases]
    for pa, pb in zip(a.phases, b.phases):
        for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
            np.testing.assert_allclose(
                pa.history[key], pb.history[key], rtol=rtol, atol=atol, err_msg=f"{pa.name} {key}"
            )
    for wa, wb in zip(a.model.get_weights(), b.model.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-3, atol=1e-4)


def test_lp_ft_on_cached_features_matches_uncached(shipped_model_path, digits_small):
    # The shipped model has Dropout before its head: the cut stops below it, and the
    # dropout masks (same layer, same seed generator) are the same as without caching.
    kwargs = dict(head_epochs=3, epochs=2, unfreeze=2)
    plain = _run(
        keras.models.load_model(shipped_model_path), digits_small, cache_features=False, **kwargs
    )
    cached = _run(
        keras.models.load_model(shipped_model_path), digits_small, cache_features=True, **kwargs
    )
    phases = cached.speed.phases
    assert [p.cached for p in phases] == [True, True]
    assert "'dropout'" in phases[0].reason
    # the fine-tuning phase's (lower) cut is computed once, in the head phase
    assert [p.feature_source for p in phases] == [DERIVED, KEPT]
    assert not any(p.cached for p in plain.speed.phases)
    _assert_same_run(plain, cached)
    # the weights trained on features are the returned model's
    before = keras.models.load_model(shipped_model_path)
    for name, moved in (
        ("predictions", True),
        ("fc", True),
        ("block2_conv2", True),
        ("block1_conv1", False),
    ):
        same = np.array_equal(
            before.get_layer(name).get_weights()[0], cached.model.get_layer(name).get_weights()[0]
        )
        assert same != moved, name


def test_nested_backbone_cut_inside_and_steps_per_execution(digits_small):
    x, y = digits_small
    runs = {}
    for mode in (False, "auto"):
        keras.utils.set_random_seed(1)
        model = nested_model()
        runs[mode] = _run(
            model,
            (x, y),
            head_epochs=2,
            epochs=2,
            unfreeze="backbone/conv2|pool",
            cache_features=mode,
            steps_per_execution=4 if mode else 1,
        )
    phases = runs["auto"].speed.phases
    assert [p.cached for p in phases] == [True, True]
    assert phases[1].reason.endswith("'backbone/conv2' (trainable)")
    assert [p.steps_per_execution for p in phases] == [4, 4]
    assert [p.feature_source for p in phases] == [DERIVED, KEPT]
    _assert_same_run(runs[False], runs["auto"])


def test_features_beyond_budget_go_to_a_cache_file(shipped_model_path, digits_small, tmp_path):
    kwargs = dict(recipe="head", epochs=2)
    plain = _run(
        keras.models.load_model(shipped_model_path), digits_small, cache_features=False, **kwargs
    )
    on_file = _run(
        keras.models.load_model(shipped_model_path), digits_small, cache_budget=0, **kwargs
    )
    assert on_file.speed.phases[0].cached
    _assert_same_run(plain, on_file)

    model = keras.models.load_model(shipped_model_path)
    surgery.freeze(model)
    surgery.set_trainable(model, {"predictions": True})
    prepared = prepare_data(digits_small, model=model, seed=0)
    cache = FeatureCache(prepared, mode=True, budget=0, directory=str(tmp_path / "features"))
    setup = cache.setup_phase(model, 0)
    assert os.listdir(tmp_path / "features"), "features were not written to the cache directory"
    features, labels = next(iter(setup.train))
    assert features.shape == (32, 128) and labels.shape == (32,)
    temp = FeatureCache(prepared, mode=True, budget=0)
    temp.setup_phase(model, 0)
    directory = temp._tmpdir
    assert os.path.isdir(directory)
    temp.close()
    assert not os.path.exists(directory)


def test_random_pipeline_is_not_cached_and_forcing_it_raises(shipped_model_path, digits_small):
    x, y = digits_small
    ds = tf.data.Dataset.from_tensor_slices((x, y)).map(
        lambda a, b: (tf.image.random_flip_left_right(a), b)
    )
    result = _run(keras.models.load_model(shipped_model_path), ds, recipe="head", epochs=1)
    phase = result.speed.phases[0]
    assert not phase.cached and "random" in phase.reason
    with pytest.raises(ValueError, match=r"cache_features=True.*random numbers"):
        _run(
            keras.models.load_model(shipped_model_path),
            ds,
            recipe="head",
            epochs=1,
            cache_features=True,
        )


def test_augmentation_layer_at_the_input(digits_small):
    def model_with_flip():
        keras.utils.set_random_seed(2)
        inputs = keras.Input((28, 28, 1))
        h = keras.layers.RandomFlip("horizontal", seed=3, name="flip")(inputs)
        h = keras.layers.Rescaling(1 / 255)(h)
        h = keras.layers.Conv2D(4, 3, name="conv")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="head")(h))

    with pytest.raises(ValueError, match=r"cache_features=True.*\['flip'\]"):
        _run(model_with_flip(), digits_small, recipe="head", epochs=1, cache_features=True)
    auto = _run(model_with_flip(), digits_small, recipe="head", epochs=2)
    plain = _run(model_with_flip(), digits_small, recipe="head", epochs=2, cache_features=False)
    assert not auto.speed.phases[0].cached
    _assert_same_run(plain, auto)


class _Noisy(keras.layers.Layer):
    def call(self, x, training=None):
        return x + 1.0 if training else x


def test_split_frozen_prefix_rules():
    inputs = keras.Input((6,))
    a = keras.layers.Dense(5, name="a")(inputs)
    b = keras.layers.BatchNormalization(name="bn")(a)
    c = keras.layers.Dense(5, name="c")(b)
    d = _Noisy(name="noisy")(c)
    out = keras.layers.Dense(2, name="out")(keras.layers.Concatenate()([c, d]))
    model = keras.Model(inputs, out)
    surgery.freeze(model)
    surgery.set_trainable(model, {"out": True})
    split = split_frozen_prefix(model)
    assert split.prefix_layers == ["a", "bn", "c"]
    assert "custom layer" in split.stopped_by
    assert split.suffix.get_layer("out") is model.get_layer("out")
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    np.testing.assert_allclose(split.suffix(split.prefix(x)), model(x), rtol=1e-5, atol=1e-6)
    # a BatchNormalization in training mode is not deterministic: the cut stops below it
    surgery.set_trainable(model, {"bn": True})
    model.get_layer("bn").trainable = True
    assert split_frozen_prefix(model).prefix_layers == ["a"]
    # nothing frozen below the trainable layers: nothing to cache
    surgery.set_trainable(model, {"a": True})
    assert split_frozen_prefix(model) is None


def test_cached_model_speaks_for_the_full_model(shipped_model_path, tmp_path):
    model = keras.models.load_model(shipped_model_path)
    surgery.freeze(model)
    surgery.set_trainable(model, {"predictions": True})
    split = split_frozen_prefix(model)
    fit_model = CachedFeatureModel(split.suffix, model)
    assert len(fit_model.get_weights()) == len(model.get_weights())
    weights = [w * 0 for w in model.get_weights()]
    fit_model.set_weights(weights)
    assert not np.any(model.get_layer("fc").get_weights()[0])
    fit_model.save(str(tmp_path / "m.keras"))
    assert keras.models.load_model(str(tmp_path / "m.keras")).name == model.name


def test_model_trained_on_features_saves_and_loads(shipped_model_path, digits_small, tmp_path):
    result = _run(
        keras.models.load_model(shipped_model_path),
        digits_small,
        head_epochs=1,
        epochs=1,
        unfreeze=1,
    )
    assert all(p.cached for p in result.speed.phases)
    path = str(tmp_path / "tuned.keras")
    result.model.save(path)
    loaded = keras.models.load_model(path)
    x = digits_small[0][:16]
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), result.model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_cache_argument_errors(shipped_model, digits_small):
    with pytest.raises(
        ValueError,
        match=r"Argument `cache_features` must be True, False or 'auto'\. Received: "
        r"cache_features='yes'",
    ):
        kerasft.finetune(shipped_model, digits_small, cache_features="yes", verbose=0)
    with pytest.raises(
        ValueError,
        match=r"Argument `cache_budget` must be a number of bytes >= 0\. Received: cache_budget=-1",
    ):
        kerasft.finetune(shipped_model, digits_small, cache_budget=-1, verbose=0)
    assert caching.CACHE_CHOICES == (True, False, "auto")


def _first_batch(setup):
    features, labels = next(iter(setup.train))
    return [np.asarray(f) for f in keras.tree.flatten(features)], np.asarray(labels)


@pytest.mark.parametrize("budget", [2**30, 0], ids=["memory", "file"])
def test_features_derived_from_the_next_cut_and_reused(shipped_model_path, digits_small, budget):
    model = keras.models.load_model(shipped_model_path)
    prepared = prepare_data(digits_small, model=model, seed=0)
    surgery.freeze(model)
    surgery.set_trainable(model, {"predictions": True})
    later = [model.get_layer("fc"), model.get_layer("predictions")]

    other = FeatureCache(prepared, mode=True, budget=budget)  # its files live as long as it does
    direct = other.setup_phase(model, 0)
    cache = FeatureCache(prepared, mode=True, budget=budget)
    derived = cache.setup_phase(model, 0, later_trainable=later)
    assert (direct.feature_source, derived.feature_source) == ("computed", DERIVED)
    assert derived.model.suffix.layers[-1] is model.get_layer("predictions")
    for a, b in zip(
        _first_batch(direct)[0] + [_first_batch(direct)[1]],
        _first_batch(derived)[0] + [_first_batch(derived)[1]],
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    surgery.set_trainable(model, {"fc": True})
    kept = cache.setup_phase(model, 1)
    fresh = other.setup_phase(model, 1)
    assert kept.feature_source == KEPT
    for a, b in zip(_first_batch(kept)[0], _first_batch(fresh)[0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    vk, vf = next(iter(kept.validation)), next(iter(fresh.validation))
    np.testing.assert_allclose(vk[0], vf[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(vk[1], vf[1])

    # weights below the cut changed since: the kept features are stale and recomputed
    conv = model.get_layer("block1_conv1")
    conv.set_weights([w + 0.01 for w in conv.get_weights()])
    assert cache.setup_phase(model, 1).feature_source == "computed"
    cache.close()
    assert cache._kept is None


# ------------------------------------------- raw operations, KerasHub layers, fallback


def _residual_tokens_model():
    """A residual add and a token slice written as tensor expressions (raw operations)."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = x + keras.layers.Conv2D(8, 3, padding="same", name="block1_conv")(x)
    x = keras.layers.LayerNormalization(name="block1_norm")(x)
    cls = keras.layers.Reshape((64, 8), name="tokens")(x)[:, 0]
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(cls))


def test_raw_operations_are_constant_when_their_inputs_are():
    model = _residual_tokens_model()
    assert {type(op).__name__ for op in model.operations} >= {"Add", "GetItem"}
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    surgery.freeze(model)
    surgery.set_trainable(model, {"head": True})
    split = split_frozen_prefix(model)
    assert split.prefix_layers == ["stem", "block1_conv", "block1_norm", "tokens"]  # layers only
    assert split.stopped_by == "'head' (trainable)"
    assert split.prefix.outputs[0].shape == (None, 8)  # the slice x[:, 0] is below the cut
    np.testing.assert_allclose(split.suffix(split.prefix(x)), model(x), rtol=1e-5, atol=1e-6)
    # the norm trains: the cut is the output of the raw `x + conv(x)`
    surgery.set_trainable(model, {"block1_norm": True})
    split = split_frozen_prefix(model)
    assert split.prefix_layers == ["stem", "block1_conv"]
    assert split.prefix.outputs[0].shape == (None, 8, 8, 8)
    np.testing.assert_allclose(split.suffix(split.prefix(x)), model(x), rtol=1e-5, atol=1e-6)


def test_keras_hub_layers_are_known_and_unseeded_noise_is_seen():
    import keras_hub

    def frozen_dino(drop_path_rate):
        backbone = keras_hub.models.DINOV2Backbone(
            patch_size=8,
            num_layers=2,
            hidden_dim=16,
            num_heads=2,
            intermediate_dim=32,
            drop_path_rate=drop_path_rate,
            image_shape=(32, 32, 3),
            position_embedding_shape=(32, 32, 3),
        )
        pooled = keras.layers.GlobalAveragePooling1D(name="pool")(backbone.output)
        model = keras.Model(backbone.input, keras.layers.Dense(3, name="head")(pooled))
        surgery.freeze(model)
        surgery.set_trainable(model, {"head": True})
        return model

    # KerasHub's encoder takes `training` for its Dropout sublayers (rate 0: no
    # SeedGenerator), so it is known to compute the same in training: cached through.
    split = split_frozen_prefix(frozen_dino(0.0))
    assert split.prefix_layers == ["embeddings", "encoder", "layernorm", "pool"]
    assert split.stopped_by == "'head' (trainable)"
    # DINOv2's DropPath draws `keras.random.uniform` without a SeedGenerator: seen by its rate
    split = split_frozen_prefix(frozen_dino(0.2))
    assert split.prefix_layers == ["embeddings"]
    assert (
        split.stopped_by
        == "'encoder' (draws random numbers in training (dropout/noise/augmentation))"
    )


def _variable_size_cnn():
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="head")(x))


def test_variable_size_inputs_are_cached_at_the_size_of_the_data(digits_small):
    # Input((None, None, 1)): the feature map's size comes from the 28x28 digits
    runs = {}
    for mode in (False, "auto"):
        keras.utils.set_random_seed(2)
        runs[mode] = _run(
            _variable_size_cnn(),
            digits_small,
            head_epochs=2,
            epochs=2,
            unfreeze=1,
            cache_features=mode,
        )
    phases = runs["auto"].speed.phases
    assert [p.cached for p in phases] == [True, True]
    assert [p.feature_source for p in phases] == [DERIVED, KEPT]
    assert phases[1].feature_bytes == len(digits_small[0]) * 26 * 26 * 8 * 4  # conv1's maps
    _assert_same_run(runs[False], runs["auto"])


def _text_cnn(texts):
    # TextVectorization pads each batch to its longest review: features of no fixed size
    vectorize = keras.layers.TextVectorization(max_tokens=2000, name="vectorize")
    vectorize.adapt(texts)
    inputs = keras.Input((), dtype="string")
    x = keras.layers.Embedding(2000, 16, name="embed")(vectorize(inputs))
    x = keras.layers.Conv1D(16, 3, padding="same", name="conv")(x)
    x = keras.layers.GlobalMaxPooling1D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))


def test_speed_path_falls_back_when_features_would_depend_on_batching(capsys):
    # A real model the cache cannot serve: TextVectorization pads each batch to its
    # longest review, so the embedding and conv features below any cut depend on which
    # reviews share a batch. The run trains on the inputs, as without caching.
    from kerasft.jobs import textdata

    split = textdata.rotten_tomatoes_few_shot(n_train=200, n_test=2, seed=0)
    data = (split.x_train, split.y_train)
    # copy=False: Keras's clone_model loses the adapted vocabulary (not a weight)
    kwargs = dict(head_epochs=1, epochs=1, unfreeze=1, batch_size=16, copy=False)
    runs = {}
    for mode in (False, "auto"):
        keras.utils.set_random_seed(3)
        runs[mode] = _run(_text_cnn(split.x_train), data, cache_features=mode, **kwargs)
    phases = runs["auto"].speed.phases
    assert [p.cached for p in phases] == [False, False]
    for phase in phases:
        assert phase.reason.startswith(
            "caching abandoned: computing the frozen layers' features failed (ValueError: tensors "
            "below the cut have shapes [(None, None), (None, None, 16)"
        ), phase.reason
    _assert_same_run(runs[False], runs["auto"], rtol=1e-6, atol=1e-7)
    capsys.readouterr()
    with pytest.warns(
        RuntimeWarning, match=r"Argument `cache_features=True`, but caching abandoned"
    ):
        forced = _run(
            _text_cnn(split.x_train), data, cache_features=True, **{**kwargs, "verbose": 1}
        )
    assert [p.cached for p in forced.speed.phases] == [False, False]
    lines = [line for line in capsys.readouterr().out.splitlines() if "caching abandoned" in line]
    assert lines == [
        f"kerasft: not caching features: {p.reason}; training on the inputs"
        for p in forced.speed.phases
    ]
