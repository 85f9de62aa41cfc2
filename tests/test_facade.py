"""The signature of ``kerasft.finetune``: flat keywords, config objects, and the old keywords."""

import dataclasses
import inspect
import os
import warnings

import numpy as np
import pytest

import kerasft
from kerasft import configs
from kerasft.configs import CONFIGS, FLAT, LEGACY, SHORTHANDS, sort_keywords
from kerasft.engine import Options

# Every keyword finetune took before the configs (kerasft 0.1.0), besides `model` and `data`.
OLD_KEYWORDS = [
    "validation_data",
    "validation_split",
    "recipe",
    "head_epochs",
    "epochs",
    "lr",
    "finetune_lr",
    "warmup",
    "unfreeze",
    "train_bn",
    "batch_size",
    "optimizer",
    "weight_decay",
    "clipnorm",
    "global_clipnorm",
    "lr_mult",
    "layer_decay",
    "layer_groups",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
    "lora_train",
    "quantize",
    "l2sp",
    "clip_weights",
    "use_ema",
    "reduce_on_plateau",
    "task",
    "num_classes",
    "label_mode",
    "label_columns",
    "head",
    "class_weight",
    "standardize_targets",
    "thresholds",
    "label_smoothing",
    "augment",
    "from_logits",
    "new_head",
    "head_dropout",
    "head_activation",
    "loss",
    "metrics",
    "monitor",
    "patience",
    "callbacks",
    "prune",
    "tensorboard",
    "checkpoint_dir",
    "cache_features",
    "cache_budget",
    "feature_store",
    "jit_compile",
    "mixed_precision",
    "steps_per_execution",
    "distribute",
    "seed",
    "copy",
    "safe_mode",
    "verbose",
]
# A valid value, other than the default, for each of them.
SAMPLES = {
    "validation_data": ("x", "y"),
    "validation_split": 0.1,
    "recipe": "full",
    "head_epochs": 2,
    "epochs": 3,
    "lr": 3e-3,
    "finetune_lr": 3e-4,
    "warmup": 0.2,
    "unfreeze": 2,
    "train_bn": True,
    "batch_size": 16,
    "optimizer": "sgd",
    "weight_decay": 0.01,
    "clipnorm": 1.0,
    "global_clipnorm": 2.0,
    "lr_mult": 10,
    "layer_decay": 0.8,
    "layer_groups": ["block1.*", "fc"],
    "lora_rank": 4,
    "lora_alpha": 8.0,
    "lora_dropout": 0.1,
    "lora_targets": ["fc"],
    "lora_train": ("head", "norm"),
    "quantize": "int8",
    "l2sp": 0.1,
    "clip_weights": 0.5,
    "use_ema": True,
    "reduce_on_plateau": True,
    "task": "regression",
    "num_classes": 3,
    "label_mode": "sparse",
    "label_columns": "label",
    "head": "aux",
    "class_weight": "balanced",
    "standardize_targets": True,
    "thresholds": None,
    "label_smoothing": 0.1,
    "augment": "light",
    "from_logits": True,
    "new_head": True,
    "head_dropout": 0.2,
    "head_activation": "softmax",
    "loss": "huber",
    "metrics": ["mae"],
    "monitor": "loss",
    "patience": 2,
    "callbacks": [],
    "prune": 0.5,
    "tensorboard": "runs/tb",
    "checkpoint_dir": "runs/ckpt",
    "cache_features": False,
    "cache_budget": 1024,
    "feature_store": kerasft.speed.FeatureStore(),
    "jit_compile": False,
    "mixed_precision": "mixed_bfloat16",
    "steps_per_execution": 4,
    "distribute": "auto",
    "seed": 3,
    "copy": False,
    "safe_mode": False,
    "verbose": 0,
}
SHOTS = 3


def _parameters():
    params = inspect.signature(kerasft.finetune).parameters
    return {
        n: p for n, p in params.items() if n not in ("model", "data") and p.kind is p.KEYWORD_ONLY
    }


# ------------------------------------------------------------------------- the signature


def test_signature_is_flat_keywords_then_one_keyword_per_config():
    params = _parameters()
    assert list(params) == [*FLAT][:9] + ["optimizer"] + [*FLAT][9:] + [
        k for k in CONFIGS if k != "optimizer"
    ]
    assert 15 <= len(params) - len(CONFIGS) + 1 <= 18, (
        "the flat keywords a Keras/fastai user expects"
    )
    assert {n: p.default for n, p in params.items() if n in FLAT} == FLAT
    assert all(params[k].default is None for k in CONFIGS)
    assert (
        inspect.signature(kerasft.finetune).parameters["legacy"].kind
        is inspect.Parameter.VAR_KEYWORD
    )


def test_every_option_is_reachable_exactly_once():
    """Each field of each engine group: one flat keyword, or one field of one config."""
    options = Options().keywords()
    routes = {name: [] for name in options}
    for name in _parameters():
        if name in FLAT:
            routes[name].append(name)
    for keyword, cls in CONFIGS.items():
        for field in dataclasses.fields(cls):
            routes[cls.flat_name(field.name)].append(f"{keyword}.{field.name}")
    assert {name: len(r) for name, r in routes.items() if len(r) != 1} == {}
    assert set(FLAT).isdisjoint(LEGACY) and set(FLAT) | set(LEGACY) == set(options)
    # The configs that are engine groups travel whole; the others' fields join their groups.
    speed, regularization = (
        kerasft.SpeedConfig(jit_compile=False),
        kerasft.RegularizationConfig(l2sp=0.1),
    )
    built = Options.build({}, {"speed": speed, "regularization": regularization})
    assert built.speed is speed and built.regularization is regularization
    assert Options.build({}, {"lora": kerasft.LoraConfig(rank=4)}).recipe.lora_rank == 4


@pytest.mark.parametrize("name", OLD_KEYWORDS)
def test_every_old_keyword_still_maps_to_its_option(name):
    value = SAMPLES[name]
    deprecated = name in LEGACY and name not in SHORTHANDS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flat, groups = sort_keywords({name: value}, deprecated=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    if deprecated:
        keyword, field = LEGACY[name]
        spelled = f"{keyword}=kerasft.{CONFIGS[keyword].__name__}({field}="
        assert len(messages) == 1 and messages[0].startswith(f"`{name}=") and spelled in messages[0]
    else:
        assert messages == []
    assert Options.assemble(flat, groups).keywords()[name] is value


# ------------------------------------------------------------- warnings, conflicts, typos


def test_old_keyword_warns_with_the_new_spelling_at_the_callers_line(
    shipped_model_path, digits_small
):
    with pytest.warns(DeprecationWarning) as caught:
        plan = kerasft.plan(
            shipped_model_path, digits_small, recipe="lp-lora", lora_rank=4, epochs=1
        )
    (warning,) = [w for w in caught if "deprecated" in str(w.message)]
    assert (
        str(warning.message)
        == "`lora_rank=4` is deprecated; pass `lora=kerasft.LoraConfig(rank=4)`."
    )
    assert warning.filename == __file__
    assert [p.name for p in plan.phases] == ["head", "adapters"]


def test_a_setting_given_both_ways_is_refused_naming_both(shipped_model_path, digits_small):
    with pytest.raises(
        ValueError,
        match=r"`lora_rank=4` and `lora=LoraConfig\(\)` \(rank=8 there\) both set lora options"
        r".*HINT: lora=kerasft.LoraConfig\(rank=4\)",
    ):
        kerasft.finetune(
            shipped_model_path,
            digits_small,
            recipe="lora",
            lora_rank=4,
            lora=kerasft.LoraConfig(rank=8),
            verbose=0,
        )
    with pytest.raises(
        ValueError,
        match=r"`weight_decay=0.1` and `optimizer=OptimizerConfig\(name='adamw'\)` "
        r"\(weight_decay=None there\)",
    ):
        kerasft.plan(
            shipped_model_path,
            digits_small,
            optimizer=kerasft.OptimizerConfig("adamw"),
            weight_decay=0.1,
        )
    # A name and an old optimizer keyword together are one config, not a conflict.
    with pytest.warns(
        DeprecationWarning,
        match=r"pass `optimizer=kerasft.OptimizerConfig\(name='adamw', "
        r"weight_decay=0.1\)`",
    ):
        _, groups = sort_keywords({"optimizer": "adamw", "weight_decay": 0.1}, deprecated=True)
    assert groups["optimizer"] == kerasft.OptimizerConfig("adamw", weight_decay=0.1)


def test_unknown_keywords_and_wrong_types_are_type_errors(shipped_model_path, digits_small):
    with pytest.raises(
        TypeError,
        match=r"finetune\(\) got an unexpected keyword argument 'epoch'\. "
        r"Did you mean 'epochs'\?",
    ):
        kerasft.finetune(shipped_model_path, digits_small, epoch=3)
    with pytest.raises(
        TypeError,
        match=r"'lora_rnk'\. Did you mean lora=kerasft.LoraConfig\(rank=\.\.\.\) "
        r"\(formerly 'lora_rank'\)\?",
    ):
        kerasft.plan(shipped_model_path, digits_small, lora_rnk=3)
    with pytest.raises(
        TypeError,
        match=r"Argument `speed` must be a kerasft.SpeedConfig or None. Received: "
        r"speed='fast'",
    ):
        kerasft.finetune(shipped_model_path, digits_small, speed="fast")
    with pytest.raises(TypeError, match=r"Argument `head` must be a kerasft.HeadConfig or None"):
        kerasft.finetune(shipped_model_path, digits_small, head=3)
    with pytest.raises(
        ValueError,
        match=r"Argument `optimizer` must be one of \['adam', 'adamw', 'sgd', "
        r"'rmsprop'\].*Received: optimizer='lion'",
    ):
        kerasft.finetune(shipped_model_path, digits_small, optimizer="lion")


# ------------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: kerasft.LoraConfig(rank=0),
            r"Argument `rank` must be a positive integer. Received: rank=0",
        ),
        (
            lambda: kerasft.LoraConfig(quantize="int4"),
            r"`quantize` must be None or 'int8'. Received: quantize='int4'",
        ),
        (
            lambda: kerasft.LoraConfig(dropout=1.0),
            r"Argument `dropout` must be in \[0, 1\). Received: dropout=1.0",
        ),
        (
            lambda: kerasft.HeadConfig(task="ranking"),
            r"`task` must be 'auto' or one of \['classification'",
        ),
        (lambda: kerasft.HeadConfig(label_smoothing=1.5), r"Received: label_smoothing=1.5"),
        (
            lambda: kerasft.HeadConfig(task="regression", loss="focal"),
            r"`loss='focal'` is a classification loss",
        ),
        (
            lambda: kerasft.LayerwiseConfig(lr_mult=10, layer_decay=0.5),
            r"pass one. Received: lr_mult=10, layer_decay=0.5",
        ),
        (
            lambda: kerasft.LayerwiseConfig(warmup=1.0),
            r"Argument `warmup` must be in \[0, 1\). Received: warmup=1.0",
        ),
        (
            lambda: kerasft.LayerwiseConfig(train_bn="yes"),
            r"`train_bn` must be True, False or None",
        ),
        (
            lambda: kerasft.OptimizerConfig(use_ema="yes"),
            r"Argument `use_ema` must be True or False",
        ),
        (
            lambda: kerasft.OptimizerConfig(clipnorm=-1),
            r"Argument `clipnorm` must be a number >= 0 or None",
        ),
        (
            lambda: kerasft.RegularizationConfig(augment="strong"),
            r"`augment` must be None, one of \['light'",
        ),
        (lambda: kerasft.RegularizationConfig(prune=1.5), r"`prune`: Argument `target_sparsity`"),
        (
            lambda: kerasft.RegularizationConfig(l2sp=-0.1),
            r"Argument `l2sp` must be a finite number >= 0",
        ),
        (
            lambda: kerasft.SpeedConfig(cache_features="yes"),
            r"`cache_features` must be True, False or 'auto'",
        ),
        (
            lambda: kerasft.RunConfig(tensorboard=3),
            r"`tensorboard` must be a directory path or None. Received: ",
        ),
        (lambda: kerasft.RunConfig(safe_mode="no"), r"`safe_mode` must be True or False"),
    ],
)
def test_configs_check_their_values_when_built(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_configs_print_compare_and_stay_frozen():
    built = [
        kerasft.HeadConfig(task="regression", standardize_targets=True, output="aux"),
        kerasft.LayerwiseConfig(lr_mult=100, train_bn=True),
        kerasft.LoraConfig(rank=4, alpha=8, targets=["fc"]),
        kerasft.OptimizerConfig("adamw", weight_decay=0.05, global_clipnorm=1.0),
        kerasft.RegularizationConfig(l2sp=0.1, prune={"target_sparsity": 0.5}),
        kerasft.SpeedConfig(cache_features=False),
        kerasft.RunConfig(tensorboard="runs/tb"),
    ]
    assert {type(c) for c in built} == set(CONFIGS.values())
    for config in built:
        text = repr(config)
        assert text.startswith(type(config).__name__ + "(") and "=" in text
        assert eval(text, dict(vars(kerasft))) == config  # noqa: S307  (a repr round trip)
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.seed = 1
    assert repr(kerasft.LoraConfig()) == "LoraConfig()"
    assert str(kerasft.LoraConfig(rank=4)) == "LoraConfig(rank=4)"


def test_configs_flatten_to_the_options_a_call_set():
    assert configs.flatten({"lora": kerasft.LoraConfig(rank=4), "epochs": 2}) == {
        "lora_rank": 4,
        "epochs": 2,
    }
    given = configs.given_keywords(
        {"epochs": 3, "seed": 0, "verbose": 1},
        {"optimizer": kerasft.OptimizerConfig("sgd"), "head": kerasft.HeadConfig()},
    )
    assert given == {"epochs": 3, "optimizer": "sgd"}


# ----------------------------------------------------------------------- real model, data


@pytest.fixture(scope="module")
def few():
    split = kerasft.datasets.digits_few_shot(shots=SHOTS)
    return split.x_train, split.y_train


@pytest.mark.parametrize(
    "old, new",
    [
        (
            dict(
                recipe="gradual",
                head_epochs=1,
                epochs=1,
                lr_mult=10,
                warmup=0.2,
                train_bn=True,
                optimizer="adamw",
                weight_decay=0.01,
                use_ema=True,
                l2sp=0.1,
                label_smoothing=0.1,
                num_classes=10,
                cache_features=False,
            ),
            dict(
                recipe="gradual",
                head_epochs=1,
                epochs=1,
                layerwise=kerasft.LayerwiseConfig(lr_mult=10, warmup=0.2, train_bn=True),
                optimizer=kerasft.OptimizerConfig("adamw", weight_decay=0.01, use_ema=True),
                regularization=kerasft.RegularizationConfig(l2sp=0.1),
                head=kerasft.HeadConfig(label_smoothing=0.1, num_classes=10),
                speed=kerasft.SpeedConfig(cache_features=False),
            ),
        ),
        (
            dict(
                recipe="lp-lora",
                head_epochs=1,
                epochs=1,
                lora_rank=4,
                lora_alpha=8,
                lora_targets=["fc"],
                tensorboard="runs/tb",
                safe_mode=False,
            ),
            dict(
                recipe="lp-lora",
                head_epochs=1,
                epochs=1,
                lora=kerasft.LoraConfig(rank=4, alpha=8, targets=["fc"]),
                run=kerasft.RunConfig(tensorboard="runs/tb", safe_mode=False),
            ),
        ),
        (
            dict(epochs=1, augment="feature_mixup", head_dropout=0.1, new_head=True),
            dict(
                epochs=1,
                regularization=kerasft.RegularizationConfig(augment="feature_mixup"),
                head=kerasft.HeadConfig(dropout=0.1, new=True),
            ),
        ),
    ],
    ids=["gradual", "lp-lora", "auto"],
)
def test_old_and_new_spellings_plan_the_same_run(shipped_model_path, few, old, new):
    with pytest.warns(DeprecationWarning):
        before = kerasft.plan(shipped_model_path, few, **old)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        after = kerasft.plan(shipped_model_path, few, **new)
    assert str(after) == str(before)
    assert after.phases == before.phases and after.trainable_params == before.trainable_params
    assert Options.from_keywords(**old) == Options.build(*sort_keywords(new))


def test_one_config_object_serves_several_calls(shipped_model_path, few):
    lora = kerasft.LoraConfig(rank=4, targets=["fc"])
    first = kerasft.plan(shipped_model_path, few, recipe="lp-lora", epochs=1, lora=lora)
    second = kerasft.plan(shipped_model_path, few, recipe="lora", epochs=1, lora=lora)
    again = kerasft.plan(shipped_model_path, few, recipe="lp-lora", epochs=1, lora=lora)
    assert str(first) == str(again) and [p.name for p in second.phases] == ["probe", "adapters"]
    assert lora == kerasft.LoraConfig(rank=4, targets=["fc"])


def test_finetune_with_config_objects_trains(shipped_model_path, few, tmp_path):
    optimizer = kerasft.OptimizerConfig("adamw", weight_decay=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = kerasft.finetune(
            shipped_model_path,
            few,
            recipe="lp-lora",
            head_epochs=1,
            epochs=1,
            validation_split=0.0,
            lora=kerasft.LoraConfig(rank=4, targets=["fc"]),
            optimizer=optimizer,
            run=kerasft.RunConfig(tensorboard=str(tmp_path / "tb")),
            verbose=0,
        )
    assert not [w for w in caught if "is deprecated; pass" in str(w.message)]
    assert [(p.name, p.epochs) for p in result.phases] == [("head", 1), ("adapters", 1)]
    assert all(np.isfinite(p.history["loss"]).all() for p in result.phases)
    assert result.options.optimizer is optimizer  # the group travelled whole
    assert result.options.recipe.lora_rank == 4 and result.adapters is not None
    assert any(files for _, _, files in os.walk(tmp_path / "tb"))  # RunConfig reached the run
    accuracy = result.evaluate(few)["accuracy"]
    assert 0.0 <= accuracy <= 1.0
