"""Plans of every recipe and option combination, built without training."""

import itertools
import json

import keras
import numpy as np
import pytest

import kerasft
from kerasft.engine import Options, build_plan, default_hooks, hooks
from kerasft.engine.options import CONFLICTS, RecipeOptions
from kerasft.engine.plan import Rate, prunable_recipes, trainable_layers

DIGITS_SHAPE = (28, 28, 1)


def _counts(model, names):
    return sum(int(np.prod(w.shape)) for n in names for w in model.get_layer(n).trainable_weights)


def _plan(model, **recipe):
    options = RecipeOptions(**recipe)
    return build_plan(model, kerasft.find_head(model), options, steps_per_epoch=4).count(
        model, kerasft.find_head(model)
    )


def test_lp_ft_plan(shipped_model):
    plan = _plan(shipped_model, head_epochs=3, epochs=7, lr=1e-2)
    head, body = plan.phases
    assert (head.name, head.epochs, head.trains, float(head.rate), head.schedule) == (
        "head",
        3,
        "head",
        1e-2,
        "constant",
    )
    assert (body.name, body.epochs, body.trains, body.schedule, body.spread) == (
        "finetune",
        7,
        "all",
        "warmup_cosine",
        True,
    )
    assert float(body.rate) == pytest.approx(1e-3)
    assert plan.trainable_params[0] == [_counts(shipped_model, ["predictions"])]
    # BatchNormalization stays frozen: everything but its parameters trains.
    bn = sum(
        int(np.prod(w.shape))
        for lyr in shipped_model.layers
        if isinstance(lyr, keras.layers.BatchNormalization)
        for w in lyr.weights
    )
    assert plan.trainable_params[1] == [shipped_model.count_params() - bn]
    assert head.cacheable and body.cacheable


@pytest.mark.parametrize(
    "recipe, names, epochs",
    [("full", ["full"], [10]), ("head", ["head"], [10]), ("lp-ft", ["head", "finetune"], [5, 10])],
)
def test_builtin_recipes(shipped_model, recipe, names, epochs):
    plan = _plan(shipped_model, recipe=recipe)
    assert [p.name for p in plan.phases] == names and [p.epochs for p in plan.phases] == epochs


def test_the_plan_knows_what_can_prune_and_how_long_it_trains(shipped_model, digits_small):
    from kerasft.engine.plan import prunable_recipes

    assert prunable_recipes() == ("lp-ft", "full", "head")
    lp_ft = _plan(shipped_model, head_epochs=3, epochs=7)
    assert [p.prunable for p in lp_ft.phases] == [True, True]
    assert lp_ft.total_epochs == 10 and lp_ft.total_steps == 40
    gradual = _plan(shipped_model, recipe="gradual", head_epochs=2, epochs=6)
    assert not gradual.phases[-1].prunable and gradual.total_epochs == 8
    auto = kerasft.plan(shipped_model, digits_small)
    probe, finetune = auto.phases
    assert not probe.prunable and finetune.prunable
    assert auto.total_epochs == finetune.epochs  # the closed-form probe takes no epochs
    with pytest.raises(ValueError, match=r"`prune` works with recipe 'lp-ft', 'full' or 'head'"):
        kerasft.plan(shipped_model, digits_small, recipe="lora", prune=0.5)


def test_gradual_plan_stages_and_rates(shipped_model):
    plan = _plan(shipped_model, recipe="gradual", head_epochs=2, epochs=6, lr=1e-2, lr_mult=100)
    (phase,) = plan.phases
    assert phase.staged and not phase.cacheable and phase.epochs == 8
    assert [s.epoch for s in phase.stages] == [0, 2, 4, 6]
    assert phase.stages[0].layers == ["predictions"] and phase.stages[1].layers == ["fc"]
    # Stage 0 trains at the head rate, the others at the body rate spread by lr_mult,
    # deepest lowest.
    assert [float(s.rate) for s in phase.stages] == pytest.approx([1e-2, 1e-3, 1e-4, 1e-5])
    counts = plan.trainable_params[0]
    assert counts == sorted(counts) and len(set(counts)) == 4
    assert counts[1] - counts[0] == _counts(shipped_model, ["fc"])
    assert "gradual[3] from epoch 6" in str(plan)


def test_phase_list_and_file_recipes_give_the_same_plan(shipped_model, tmp_path):
    phases = [
        {"layers": ["predictions", "fc"], "lr": 2e-3},
        {"layers": r"block2_conv\d", "epoch": 3},
    ]
    path = tmp_path / "phases.json"
    path.write_text(json.dumps({"phases": phases}))
    listed = _plan(shipped_model, recipe=phases, epochs=5, lr=1e-2)
    filed = _plan(shipped_model, recipe=str(path), epochs=5, lr=1e-2)
    assert listed.phases == filed.phases
    (phase,) = listed.phases
    assert [float(s.rate) for s in phase.stages] == pytest.approx([2e-3, 1e-3])
    assert listed.trainable_params[0][1] - listed.trainable_params[0][0] == _counts(
        shipped_model, ["block2_conv1", "block2_conv2"]
    )


def test_phase_list_starting_after_the_run_is_refused(shipped_model):
    with pytest.raises(
        ValueError, match=r"phases start at epochs \[0, 9\] but the run lasts 4 epochs"
    ):
        _plan(
            shipped_model,
            recipe=[{"layers": "predictions"}, {"layers": "fc", "epoch": 9}],
            epochs=4,
        )


def test_find_rates_resolve(shipped_model):
    plan = _plan(shipped_model, lr="find")
    assert [str(p.rate) for p in plan.phases] == ["find", "find/10"]
    with pytest.raises(ValueError, match="not known before the LR finder"):
        float(plan.phases[0].rate)
    resolved = plan.resolve_rates(3e-2)
    assert [float(p.rate) for p in resolved.phases] == pytest.approx([3e-2, 3e-3])
    assert str(Rate(of_found=0.1)) == "find/10"


@pytest.mark.parametrize(
    "unfreeze, trained",
    [
        (1, ["fc"]),
        (2, ["block2_conv2", "fc"]),
        (0.6, ["block2_conv1", "block2_conv2", "fc"]),
        (r"^block2_conv2$", ["block2_conv2"]),
    ],
)
def test_unfreeze_selects_the_top_of_the_body(shipped_model, unfreeze, trained):
    plan = _plan(shipped_model, unfreeze=unfreeze)
    layers = trainable_layers(shipped_model, kerasft.find_head(shipped_model), plan.phases[1])
    weighted = [lyr.name for lyr in layers if lyr.weights and lyr.name != "predictions"]
    assert weighted == trained


def test_plan_leaving_nothing_to_train(shipped_model):
    with pytest.raises(ValueError, match=r"`head_epochs=0` and `epochs=0` leave nothing to train"):
        _plan(shipped_model, head_epochs=0, epochs=0)


def test_kerasft_plan_prints_a_table_and_leaves_the_model_alone(shipped_model, digits_small):
    before = [w.copy() for w in shipped_model.get_weights()]
    state = kerasft.trainable_state(shipped_model)
    plan = kerasft.plan(shipped_model, digits_small, recipe="lp-ft", head_epochs=2, epochs=3)
    table = str(plan)
    assert table.splitlines()[0].split() == ["phase", "epochs", "trainable", "rate"]
    assert "head" in table and "finetune" in table and "warmup+cosine" in table
    assert plan.steps_per_epoch == int(np.ceil(0.8 * len(digits_small[0]) / 32))
    assert kerasft.trainable_state(shipped_model) == state
    assert all(np.array_equal(a, b) for a, b in zip(before, shipped_model.get_weights()))
    assert getattr(shipped_model, "optimizer", None) is None  # nothing was compiled or trained


def test_kerasft_plan_rebuilds_the_head_for_new_classes(shipped_model, digits_small):
    x, y = digits_small
    keep = y < 3
    plan = kerasft.plan(shipped_model, (x[keep], y[keep]), recipe="head", epochs=1)
    assert plan.trainable_params == [[128 * 3 + 3]]


# ------------------------------------------------------------------ options and hooks

RECIPE_CHOICES = [
    "lp-ft",
    "full",
    "head",
    "gradual",
    "lora",
    "dora",
    "lp-lora",
    "lp-dora",
    [{"layers": "predictions"}, {"layers": "fc", "epoch": 1}],
]
EXTRAS = {
    "lr_mult": dict(lr_mult=10),
    "layer_decay": dict(layer_decay=0.5),
    "unfreeze": dict(unfreeze=2),
    "find": dict(lr="find"),
    "prune": dict(prune=0.5),
    "ema": dict(use_ema=True),
    "plateau": dict(reduce_on_plateau=True),
    "l2sp": dict(l2sp=0.1),
    "clip": dict(clip_weights=1.0),
    "checkpoint": dict(checkpoint_dir="ckpt"),
    "tensorboard": dict(tensorboard="logs"),
    "no patience": dict(patience=None),
}


def _expected_error(recipe, extras):
    """The error validation should raise for a recipe and two extra options, if any.

    Values are checked first (in the order of the keywords' groups), then the table of
    conflicts, row by row.
    """
    kind = recipe if isinstance(recipe, str) else "phases"
    keys = set(extras)
    if {"lr_mult", "layer_decay"} <= keys:
        return "pass one"
    if "prune" in keys and kind not in prunable_recipes():
        return "Argument `prune` works with recipe"
    if kind == "head" and keys & {"lr_mult", "layer_decay"}:
        return "spread rates over layer groups"
    if kind == "head" and "unfreeze" in keys:
        return "recipe='head' trains only the head"
    if kind in ("gradual", "phases") and "unfreeze" in keys:
        return "unfreezes by phases"
    if RecipeOptions(recipe=kind).adapters and "unfreeze" in keys:
        return "trains low-rank adapters"
    if "prune" in keys and keys & {"lr_mult", "layer_decay", "l2sp", "clip", "checkpoint"}:
        return "Argument `prune` cannot be combined with"
    return None


@pytest.fixture(scope="module")
def model_for_plans(shipped_model_path):
    """One model for the whole matrix: building plans and hooks does not change it."""
    return keras.models.load_model(shipped_model_path)


@pytest.mark.parametrize(
    "recipe", RECIPE_CHOICES, ids=lambda r: r if isinstance(r, str) else "phase-list"
)
@pytest.mark.parametrize("pair", list(itertools.combinations(EXTRAS, 2)), ids="+".join)
def test_option_matrix_builds_plans_or_refuses(model_for_plans, recipe, pair):
    shipped_model = model_for_plans
    keywords = {"recipe": recipe, "epochs": 2, "head_epochs": 1}
    for key in pair:
        keywords.update(EXTRAS[key])
    expected = _expected_error(recipe, pair)
    if expected is not None:
        with pytest.raises(ValueError, match=expected) as refused:
            Options.from_keywords(**keywords)
        # the message names an argument of the pair that clashed
        named = [f"`{name}" for key in pair for name in EXTRAS[key]]
        assert any(arg in str(refused.value) for arg in named), (str(refused.value), named)
        return
    options = Options.from_keywords(**keywords)
    plan = build_plan(
        shipped_model, kerasft.find_head(shipped_model), options.recipe, steps_per_epoch=2
    )
    # one-phase recipes (lora and dora fit their head in closed form first: 0 epochs)
    single = ("full", "head", "lora", "dora")
    assert sum(p.epochs for p in plan.phases) == (
        2 if recipe in single or not isinstance(recipe, str) else 3
    )
    kinds = [type(h) for h in default_hooks(options, "val_loss")]
    assert kinds.index(hooks.BestWeights) < kinds.index(hooks.NaNGuard) < kinds.index(hooks.Stages)
    assert (hooks.LRFinder in kinds) == ("find" in pair)
    assert (hooks.Pruning in kinds) == ("prune" in pair)
    assert (hooks.EarlyStopping in kinds) == ("no patience" not in pair)
    if "ema" in pair:
        assert kinds.index(hooks.EMA) < kinds.index(hooks.BestWeights)
    if "find" in pair:  # every rate a gradient step uses (a probe phase has none)
        assert all(not p.rate.known for p in plan.phases if p.solver == "fit")
        assert any(p.solver == "fit" for p in plan.phases)


def test_every_conflict_row_is_hit_by_its_case_alone():
    cases = [
        (
            dict(recipe="auto", head_epochs=2),
            r"`head_epochs=2` sets the epochs of a head trained by gradient",
        ),
        (
            dict(recipe="auto", lr="find"),
            r"`lr='find'` sweeps the rate of a head trained by gradient",
        ),
        (
            dict(quantize="int8"),
            r"`quantize='int8'` quantizes the frozen base under low-rank adapters, but "
            r"recipe='auto'",
        ),
        (
            dict(task="classification", standardize_targets=True),
            r"`standardize_targets=True` applies to regression",
        ),
        (
            dict(task="regression", label_smoothing=0.1),
            r"`label_smoothing=0.1` smooths class labels",
        ),
        (
            dict(task="multilabel", class_prior=[0.2, 0.8]),
            r"`class_prior` shifts single-label class outputs.*task='multilabel'",
        ),
        (
            dict(task="regression", class_weight="balanced"),
            r"`class_weight='balanced'` applies to classification",
        ),
        (dict(recipe="head", lr_mult=10), "spread rates over layer groups"),
        (dict(recipe="head", unfreeze=3), r"recipe='head' trains only the head.*unfreeze=3"),
        (dict(recipe="gradual", unfreeze=3), "unfreezes by phases"),
        (
            dict(recipe="lp-lora", unfreeze=3),
            r"recipe 'lp-lora' trains low-rank adapters.*lora_train",
        ),
        (dict(lr="find", distribute="auto"), r"`lr='find'` cannot run under `distribute` \(auto\)"),
        (dict(prune=0.5, l2sp=0.1), r"cannot be combined with \['l2sp'\] yet.*prune=0.5, l2sp=0.1"),
        (
            dict(callbacks=[keras.callbacks.ReduceLROnPlateau()]),
            "keras.callbacks.ReduceLROnPlateau",
        ),
    ]
    assert len(cases) == len(CONFLICTS)
    for row, (keywords, message) in enumerate(cases):
        grouped = Options.group(**keywords)
        assert [i for i, c in enumerate(CONFLICTS) if c.when(grouped)] == [row]
        with pytest.raises(ValueError, match=message):
            Options.from_keywords(**keywords)


def test_unknown_keyword_lists_the_valid_ones():
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'epoch'.*'epochs'"):
        Options.from_keywords(epoch=3)


def test_options_round_trip_through_keywords():
    options = Options.from_keywords(recipe="full", lr=3e-3, use_ema=True, patience=None)
    assert (
        options.recipe.lr == 3e-3 and options.optimizer.use_ema and options.monitor.patience is None
    )
    assert Options.from_keywords(**options.keywords()) == options
    assert options.replace(lr=1e-4).recipe.lr == 1e-4


def test_a_registered_recipe_is_used_by_name(shipped_model, digits_small):
    from kerasft.engine.plan import RECIPES, Phase, Rate, register_recipe

    @register_recipe("head-twice")
    def _head_twice(options, model, head):
        return [Phase("head", 1, "head", Rate(1e-2)), Phase("head-again", 1, "head", Rate(1e-3))]

    try:
        plan = kerasft.plan(shipped_model, digits_small, recipe="head-twice")
        assert [p.name for p in plan.phases] == ["head", "head-again"]
        assert plan.trainable_params == [[1290], [1290]]
        result = kerasft.finetune(shipped_model, digits_small, recipe="head-twice", verbose=0)
        assert [p.name for p in result.phases] == ["head", "head-again"]
        assert "head-twice" in str(
            pytest.raises(ValueError, Options.from_keywords, recipe="nope").value
        )
    finally:
        RECIPES.pop("head-twice")
