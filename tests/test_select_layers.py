"""Tests for kerasft.surgery.select_layers and walk_layers: one selection rule, one walk.

Every argument that names layers (``unfreeze=``, phase ``layers``, LoRA ``targets``/``train``,
L2-SP's ``new_layers``, ``clip_weights(layers=)``, pruning's ``layers=``) goes through
``select_layers``; these tests pin its rule, its message, and the FutureWarning of the two
arguments whose old rule differed.
"""

from __future__ import annotations

import re
import warnings

import keras
import numpy as np
import pytest
from helpers import nested_model

import kerasft
from kerasft import pruning, regularizers, surgery
from kerasft.peft import _walk

MOBILENET = "mobilenetv2_0.35_32"


@pytest.fixture(scope="module")
def mobilenet():
    """A real keras.applications backbone nested in a classifier (random weights, 32 px)."""
    base = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), alpha=0.35, include_top=False
    )
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(base(inputs))
    outputs = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs, name="classifier")


def names(layers):
    return [layer.name for layer in layers]


@pytest.fixture()
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        yield


# ------------------------------------------------------------------------- spec forms


def test_a_string_matches_names_in_full(shipped_model, no_warnings):
    assert names(kerasft.select_layers(shipped_model, "block1_.*")) == [
        "block1_conv1",
        "block1_bn1",
        "block1_relu1",
        "block1_conv2",
        "block1_bn2",
        "block1_relu2",
        "block1_pool",
    ]
    assert names(kerasft.select_layers(shipped_model, "fc")) == ["fc"]
    assert names(kerasft.select_layers(shipped_model, r"block\d_conv1")) == [
        "block1_conv1",
        "block2_conv1",
    ]


def test_a_string_matches_paths_and_names_inside_nested_models(mobilenet, no_warnings):
    by_path = kerasft.select_layers(mobilenet, f"{MOBILENET}/block_16_.*")
    by_name = kerasft.select_layers(mobilenet, "block_16_.*")
    assert (
        names(by_path)
        == names(by_name)
        == [
            "block_16_expand",
            "block_16_expand_BN",
            "block_16_expand_relu",
            "block_16_depthwise",
            "block_16_depthwise_BN",
            "block_16_depthwise_relu",
            "block_16_project",
            "block_16_project_BN",
        ]
    )
    assert names(kerasft.select_layers(mobilenet, f"{MOBILENET}/Conv1")) == ["Conv1"]
    # Nested models are looked into, not selected.
    assert all(not surgery.is_container(layer) for layer in kerasft.select_layers(mobilenet, ".*"))
    assert len(kerasft.select_layers(mobilenet, ".*")) == len(surgery.leaf_layers(mobilenet))


def test_lists_classes_callables_and_layers(shipped_model, mobilenet, no_warnings):
    m = shipped_model
    # Model order, each layer once, whatever the order of the entries.
    assert names(kerasft.select_layers(m, ["predictions", "fc", "f.*"])) == [
        "flatten",
        "fc",
        "predictions",
    ]
    assert names(kerasft.select_layers(m, ("fc", "dropout"))) == ["fc", "dropout"]
    assert names(kerasft.select_layers(m, keras.layers.Conv2D)) == [
        "block1_conv1",
        "block1_conv2",
        "block2_conv1",
        "block2_conv2",
    ]
    assert names(kerasft.select_layers(m, (keras.layers.Dense, keras.layers.Dropout))) == [
        "fc",
        "dropout",
        "predictions",
    ]
    assert names(kerasft.select_layers(m, [keras.layers.Dense, "flatten"])) == [
        "flatten",
        "fc",
        "predictions",
    ]
    assert names(kerasft.select_layers(m, lambda layer: getattr(layer, "units", 0) == 10)) == [
        "predictions"
    ]
    assert kerasft.select_layers(m, m.get_layer("fc")) == [m.get_layer("fc")]
    # A nested model given as an object stands for its layers.
    base = mobilenet.get_layer(MOBILENET)
    assert kerasft.select_layers(mobilenet, base) == [
        layer for _, layer in surgery.leaf_layers(base)
    ]
    assert names(kerasft.select_layers(mobilenet, [base, "head"]))[-1] == "head"


def test_spec_combines_with_the_older_keywords(shipped_model, no_warnings):
    assert names(
        kerasft.select_layers(shipped_model, "block.*", types=keras.layers.BatchNormalization)
    ) == ["block1_bn1", "block1_bn2", "block2_bn1", "block2_bn2"]
    assert names(kerasft.select_layers(shipped_model, ".*conv.*", up_to="block1_pool")) == [
        "block1_conv1",
        "block1_conv2",
    ]


def test_freeze_and_unfreeze_take_a_spec(shipped_model, no_warnings):
    m = shipped_model
    frozen = kerasft.freeze(m, "block2_.*")
    assert [n for n, t in kerasft.trainable_state(m).items() if not t] == names(frozen)
    unfrozen = kerasft.unfreeze(m, [keras.layers.Conv2D, keras.layers.BatchNormalization])
    assert "block2_bn1" not in names(unfrozen), "BatchNorm stays frozen unless train_bn=True"
    assert m.get_layer("block2_conv1").trainable and not m.get_layer("block2_bn1").trainable


def test_selection_survives_save_and_load(shipped_model, tmp_path, no_warnings):
    path = str(tmp_path / "m.keras")
    shipped_model.save(path)
    loaded = keras.models.load_model(path)
    for spec in ("block2_.*", [keras.layers.Dense, "flatten"]):
        assert names(kerasft.select_layers(loaded, spec)) == names(
            kerasft.select_layers(shipped_model, spec)
        )


# ---------------------------------------------------------------------- the message


def test_one_message_names_the_argument_the_entry_and_the_layers(shipped_model):
    with pytest.raises(ValueError) as info:
        kerasft.select_layers(shipped_model, "block1_conv", argument="unfreeze")
    message = str(info.value)
    assert message.startswith(
        "No layer of model 'mnist_cnn' matches 'block1_conv' in argument `unfreeze`. "
        "Existing layers are: ['rescale', 'block1_conv1', "
    )
    # The usual mistake, a substring, gets the full pattern to write.
    assert (
        "HINT: a string must match a layer's path or name in full: write '.*block1_conv.*'"
        in message
    )
    with pytest.raises(
        ValueError, match=r"matches 'predictons' .*HINT: did you mean 'predictions'\?$"
    ):
        kerasft.select_layers(shipped_model, "predictons", argument="unfreeze")
    with pytest.raises(
        ValueError, match=r"matches 'zzz' in argument `phases\[1\]\['layers'\]`.*Existing layers"
    ):
        kerasft.select_layers(shipped_model, ["fc", "zzz"], argument="phases[1]['layers']")
    other = keras.layers.Dense(2, name="elsewhere")
    with pytest.raises(
        ValueError, match=r"matches layer 'elsewhere' in argument `spec`.*not in this model"
    ):
        kerasft.select_layers(shipped_model, other)
    with pytest.raises(ValueError, match=r"matches Embedding in argument `spec`"):
        kerasft.select_layers(shipped_model, keras.layers.Embedding)


def test_a_nested_model_name_gets_a_hint(mobilenet):
    with pytest.raises(
        ValueError, match=rf"HINT: '{MOBILENET}' is a nested model; write '{MOBILENET}/\.\*'"
    ):
        kerasft.select_layers(mobilenet, MOBILENET)


def test_bad_specs_are_refused_with_the_argument(shipped_model):
    with pytest.raises(ValueError, match=r"Invalid regex '\(' in argument `train`: .*re.escape"):
        kerasft.select_layers(shipped_model, "(", argument="train")
    with pytest.raises(
        TypeError, match=r"Argument `targets` must hold layer-path regexes.*Received: 3 of type int"
    ):
        kerasft.select_layers(shipped_model, [3], argument="targets")
    with pytest.raises(TypeError, match=r"Argument `model` must be a Keras 3 `keras.Model`"):
        kerasft.select_layers("model.keras", "fc")


# ---------------------------------------------------------- old rules, kept with a warning


def test_old_substring_rule_is_kept_with_a_future_warning(shipped_model, mobilenet):
    with pytest.warns(
        FutureWarning, match=r"`unfreeze='conv'` selects layers by searching.*write '\.\*conv\.\*'"
    ) as record:
        chosen = kerasft.select_layers(shipped_model, "conv", argument="unfreeze", legacy="search")
    assert names(chosen) == ["block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2"]
    assert record[0].filename == __file__, "the warning points at the caller"
    # Where the full match selects fewer layers than the search did, the old selection stays.
    with pytest.warns(
        FutureWarning, match=r"in full, 'Conv1' selects \['mobilenetv2_0.35_32/Conv1'\]"
    ):
        chosen = kerasft.select_layers(mobilenet, "Conv1", argument="unfreeze", legacy="search")
    assert names(chosen) == ["Conv1", "bn_Conv1", "Conv1_relu"]
    # The suggested pattern selects the same layers, silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert names(
            kerasft.select_layers(mobilenet, ".*Conv1.*", argument="unfreeze", legacy="search")
        ) == names(chosen)
        assert names(kerasft.select_layers(shipped_model, "block1_conv1", legacy="search")) == [
            "block1_conv1"
        ]


def test_pattern_keyword_keeps_its_search_rule(shipped_model):
    with pytest.warns(
        FutureWarning,
        match=r"`pattern='\^block2_'`.*To keep today's selection, write 'block2_\.\*'",
    ):
        frozen = kerasft.freeze(shipped_model, pattern=r"^block2_")
    assert names(frozen) == names(kerasft.select_layers(shipped_model, "block2_.*"))


def test_old_names_only_rule_is_kept_with_a_future_warning(mobilenet):
    spec = ".*(mobilenet|head).*"
    with pytest.warns(
        FutureWarning,
        match=r"by matching the regular expression against layer names only: \['head'\]",
    ):
        chosen = kerasft.select_layers(mobilenet, spec, argument="layers", legacy="name")
    assert names(chosen) == ["head"]
    suggestion = re.search(r"write '(.*)'\.$", _warning_text(mobilenet, spec)).group(1)
    assert names(kerasft.select_layers(mobilenet, suggestion)) == ["head"]
    # A path the old rule could not read at all is simply selected now.
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert len(kerasft.select_layers(mobilenet, f"{MOBILENET}/.*", legacy="name")) == 153


def _warning_text(model, spec):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        kerasft.select_layers(model, spec, argument="layers", legacy="name")
    return str(record[0].message)


def test_finetune_unfreeze_uses_the_selector(shipped_model, digits_small):
    with pytest.warns(FutureWarning, match=r"`unfreeze='block2'` selects layers by searching"):
        plan = kerasft.plan(
            shipped_model, digits_small, recipe="lp-ft", head_epochs=1, epochs=1, unfreeze="block2"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        same = kerasft.plan(
            shipped_model,
            digits_small,
            recipe="lp-ft",
            head_epochs=1,
            epochs=1,
            unfreeze="block2_.*",
        )
    assert (
        plan.trainable_params == same.trainable_params
        and plan.trainable_params[1][0] > plan.trainable_params[0][0]
    )
    with pytest.raises(
        ValueError,
        match=r"`unfreeze='blok2_.\*'` selects nothing to train: No layer of model "
        r"'mnist_cnn' matches 'blok2_.\*' in argument `unfreeze`",
    ):
        kerasft.plan(
            shipped_model,
            digits_small,
            recipe="lp-ft",
            head_epochs=1,
            epochs=1,
            unfreeze="blok2_.*",
        )


# ------------------------------------------------------------------- every caller


def test_l2sp_and_clipping_select_with_it(shipped_model, no_warnings):
    report = regularizers.apply_l2sp(shipped_model, 0.1, 0.01, new_layers=[keras.layers.Dense])
    assert {p.split("/")[0] for p in report["l2"]} == {"fc", "predictions"}
    assert regularizers.clip_weights(
        shipped_model, 0.5, layers=lambda layer: layer.name == "fc"
    ) == ["fc/kernel", "fc/bias"]
    with pytest.raises(
        ValueError, match=r"No layer of model 'mnist_cnn' matches 'head' in argument `new_layers`"
    ):
        regularizers.apply_l2sp(shipped_model, new_layers="head")


def test_lora_targets_select_with_it(no_warnings):
    from kerasft import peft

    model = nested_model(3)
    result = peft.apply_lora(model, rank=2, targets=[keras.layers.Conv2D], train=["head"])
    assert result.targets == ("backbone/conv1", "backbone/conv2") and result.trained == ("head",)
    with pytest.raises(
        ValueError,
        match=r"No layer of model 'outer' matches 'conv3' in argument `targets`.*did you mean",
    ):
        peft.apply_lora(nested_model(3), targets="conv3")


def test_pruning_layers_select_with_it(mobilenet, no_warnings):
    candidates = [
        layer
        for layer in pruning.prune.leaf_layers(mobilenet, graph_only=True)
        if pruning.wrapper.is_prunable(layer)
    ]
    chosen = pruning.prune.select_layers(mobilenet, f"{MOBILENET}/block_16_.*", candidates)
    assert names(chosen) == ["block_16_expand", "block_16_depthwise", "block_16_project"]
    assert names(pruning.prune.select_layers(mobilenet, keras.layers.Dense, candidates)) == ["head"]
    with pytest.raises(
        ValueError, match=r"No layer of model 'classifier' matches 'dense_9' in argument `layers`"
    ):
        pruning.prune.select_layers(mobilenet, ["dense_9"], candidates)
    with pytest.raises(ValueError, match=r"Layer 'pool' has no prunable weights"):
        pruning.prune.select_layers(mobilenet, ["head", "pool"], candidates)


def test_phases_select_with_it(shipped_model, no_warnings):
    from kerasft.callbacks import GradualUnfreezing

    phases = [{"layers": ["predictions", "fc"]}, {"layers": "block2_.*", "epoch": 2}]
    resolved = GradualUnfreezing(phases=phases).resolved_phases(shipped_model)
    assert [names(layers) for layers, _, _ in resolved] == [
        ["fc", "predictions"],
        names(kerasft.select_layers(shipped_model, "block2_.*")),
    ]
    with pytest.raises(
        ValueError, match=r"matches 'block9_.\*' in argument `phases\[1\]\['layers'\]`"
    ):
        GradualUnfreezing(
            phases=[{"layers": "fc"}, {"layers": "block9_.*", "epoch": 1}]
        ).resolved_phases(shipped_model)


# ------------------------------------------------------------------------- the walk


def test_walk_lists_each_layer_once_parents_first(mobilenet):
    nodes = surgery.walk_layers(mobilenet)
    paths = [n.path for n in nodes]
    assert (
        paths[0] == MOBILENET
        and paths[1] == f"{MOBILENET}/Conv1"
        and paths[-2:] == ["pool", "head"]
    )
    assert len(paths) == len(set(paths)) == len({id(n.layer) for n in nodes})
    assert not any(isinstance(n.layer, keras.layers.InputLayer) for n in nodes)
    assert [(n.path, n.layer) for n in nodes] == surgery.iter_layers(mobilenet)
    assert [n.path for n in surgery.walk_layers(mobilenet, recursive=False)] == [
        MOBILENET,
        "pool",
        "head",
    ]
    inner = next(n for n in nodes if n.path == f"{MOBILENET}/Conv1")
    assert inner.ancestors == (mobilenet, mobilenet.get_layer(MOBILENET))


def test_walk_with_sublayers_reaches_inside_custom_layers():
    inputs = keras.Input((4, 8))
    x = keras.layers.MultiHeadAttention(2, 4, name="attention")(inputs, inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x), name="tiny")
    assert [n.path for n in surgery.walk_layers(model)] == ["attention", "head"]
    deep = [n.path for n in surgery.walk_layers(model, sublayers=True)]
    assert "attention/query" in deep and "attention/value" in deep
    # peft walks the same tree, and LoRA targets select from it.
    assert [n.path for n in _walk.walk(model)] == deep
    assert names(kerasft.select_layers(model, "query", sublayers=True)) == ["query"]
    assert [n.path for n in surgery.walk_layers(model, sublayers=lambda layer: False)] == [
        "attention",
        "head",
    ]


def test_pruning_walks_with_it(mobilenet):
    assert pruning.prune.leaf_layers(mobilenet, graph_only=True) == [
        lyr for _, lyr in surgery.leaf_layers(mobilenet)
    ]
    assert pruning.prune.leaf_layers(mobilenet) == [
        lyr for _, lyr in surgery.leaf_layers(mobilenet)
    ]


# ------------------------------------------------------ the head, the trainable snapshot


def test_peft_head_is_the_last_weighted_layer_not_the_classifier():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(4, name="proj")(inputs)
    encoder = keras.Model(inputs, keras.layers.LayerNormalization(name="norm")(x), name="encoder")
    with pytest.raises(ValueError, match="no Dense output layer"):
        kerasft.find_head(encoder)
    assert _walk.last_weighted_layer(encoder).name == "norm"
    model = nested_model(3)
    assert _walk.last_weighted_layer(model) is kerasft.find_head(model)


def test_trainable_snapshot_puts_every_flag_back(shipped_model):
    m = shipped_model
    kerasft.freeze(m, "block1_.*")
    before = kerasft.trainable_state(m)
    snapshot = surgery.TrainableSnapshot.take(m)
    kerasft.unfreeze(m, train_bn=True)
    m.get_layer("fc").kernel.trainable = False
    snapshot.restore(m)
    assert kerasft.trainable_state(m) == before and m.get_layer("fc").kernel.trainable
    x = np.zeros((2, 28, 28, 1), "float32")
    assert surgery.unused_layers(m, x) == [] and kerasft.trainable_state(m) == before
