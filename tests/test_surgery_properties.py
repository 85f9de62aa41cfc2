"""Property-based tests of the surgery functions on generated Sequential / Functional models."""

from __future__ import annotations

import keras
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kerasft

LAYER_KINDS = ("dense", "dense_relu", "bn", "dropout", "layernorm")


def _layer(kind: str, i: int) -> keras.layers.Layer:
    if kind == "dense":
        return keras.layers.Dense(
            5, kernel_initializer=keras.initializers.GlorotUniform(i), name=f"dense_{i}"
        )
    if kind == "dense_relu":
        return keras.layers.Dense(
            4,
            activation="relu",
            name=f"relu_{i}",
            kernel_initializer=keras.initializers.GlorotUniform(i),
        )
    if kind == "bn":
        return keras.layers.BatchNormalization(name=f"bn_{i}")
    if kind == "dropout":
        return keras.layers.Dropout(0.1, seed=i, name=f"drop_{i}")
    return keras.layers.LayerNormalization(name=f"ln_{i}")


def build(style: str, kinds: list[str], classes: int) -> keras.Model:
    """A model of the given style: 'sequential', 'functional' or 'nested' (backbone inside)."""
    body = [_layer(k, i) for i, k in enumerate(kinds)]
    head = keras.layers.Dense(
        classes,
        activation="softmax",
        name="head",
        kernel_initializer=keras.initializers.GlorotUniform(99),
    )
    if style == "sequential":
        return keras.Sequential([keras.Input((6,)), *body, head], name="seq")
    inputs = keras.Input((6,))
    if style == "nested":
        inner_in = keras.Input((6,))
        x = inner_in
        for layer in body:
            x = layer(x)
        x = keras.Model(inner_in, x, name="backbone")(inputs)
    else:
        x = inputs
        for layer in body:
            x = layer(x)
    return keras.Model(inputs, head(x), name="func")


models = st.builds(
    build,
    st.sampled_from(["sequential", "functional", "nested"]),
    st.lists(st.sampled_from(LAYER_KINDS), min_size=1, max_size=5),
    st.integers(2, 6),
)
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _leaf_paths(model: keras.Model) -> list[str]:
    return [p for p, lyr in kerasft.iter_layers(model) if not isinstance(lyr, keras.Model)]


@SETTINGS
@given(model=models, data=st.data())
def test_freeze_then_unfreeze_restores_the_trainable_set(model, data):
    before = kerasft.trainable_state(model)
    weights_before = {id(w) for w in model.trainable_weights}
    names = data.draw(st.lists(st.sampled_from(_leaf_paths(model)), min_size=1, unique=True))
    frozen = kerasft.freeze(model, names=names)
    assert {id(lyr) for lyr in frozen} == {id(kerasft.get_layer(model, n)) for n in names}
    assert all(not kerasft.trainable_state(model)[n] for n in names)
    kerasft.unfreeze(model, names=names, train_bn=True)
    assert kerasft.trainable_state(model) == before
    assert {id(w) for w in model.trainable_weights} == weights_before


@SETTINGS
@given(model=models, data=st.data())
def test_trainable_state_round_trips_through_set_trainable(model, data):
    paths = _leaf_paths(model)
    wanted = {p: data.draw(st.booleans(), label=p) for p in paths}
    kerasft.set_trainable(model, wanted)
    state = kerasft.trainable_state(model)
    assert state == wanted
    expected = {
        id(w) for p in paths if wanted[p] for w in kerasft.get_layer(model, p).trainable_weights
    }
    kerasft.freeze(model)
    assert model.trainable_weights == []
    kerasft.set_trainable(model, state)
    assert kerasft.trainable_state(model) == wanted
    assert {id(w) for w in model.trainable_weights} == expected


@SETTINGS
@given(model=models, classes=st.integers(1, 7), dropout=st.sampled_from([0.0, 0.3]))
def test_replace_head_keeps_every_other_weight(model, classes, dropout):
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    before = {
        p: [w.copy() for w in lyr.get_weights()]
        for p, lyr in kerasft.iter_layers(model)
        if p != "head" and not isinstance(lyr, keras.Model)
    }
    features_before = keras.Model(model.inputs[0], model.get_layer("head").input)(x)
    activation = "sigmoid" if classes == 1 else "softmax"
    new = kerasft.replace_head(model, classes, activation=activation, dropout=dropout, seed=1)
    assert new.outputs[0].shape[-1] == classes
    head = kerasft.find_head(new)
    assert head.units == classes
    after = {p: lyr for p, lyr in kerasft.iter_layers(new) if not isinstance(lyr, keras.Model)}
    for path, weights in before.items():
        assert path in after, (path, list(after))
        for u, v in zip(weights, after[path].get_weights(), strict=True):
            np.testing.assert_array_equal(u, v)
    features_after = keras.Model(new.inputs[0], head.input)(x, training=False)
    np.testing.assert_array_equal(np.asarray(features_before), np.asarray(features_after))
