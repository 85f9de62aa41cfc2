"""The feature store shared across finetune calls, and kerasft.search on it.

Real digits, the shipped model, real TensorFlow and KerasTuner: no mocks.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

import kerasft
from kerasft import datasets
from kerasft._keras_compat import learning_rate_object
from kerasft.search import SearchResult, baseline_values, parse_space, search, searchable_keywords
from kerasft.speed import FeatureStore, caching, compiled

QUICK = dict(verbose=0, patience=None)
TINY = dict(head_epochs=1, epochs=2, patience=None)
SPACE = {"lr": [1e-3, 3e-3, 1e-2], "unfreeze": [1, "all"]}


@pytest.fixture(scope="module")
def few():
    """sklearn digits, 10 labels per class: 100 training images (80 train / 20 validation)."""
    split = datasets.digits_few_shot(shots=10)
    return split.x_train, split.y_train


@pytest.fixture(scope="module")
def pretrained():
    from conftest import SHIPPED_MODEL

    return keras.models.load_model(SHIPPED_MODEL)


def _same_weights(a, b, atol=1e-6):
    return all(np.allclose(wa, wb, atol=atol) for wa, wb in zip(a.get_weights(), b.get_weights()))


# ------------------------------------------------------------------------- feature store


def test_store_reuses_features_and_trains_the_same_weights(pretrained, few):
    kwargs = dict(head_epochs=2, epochs=2, unfreeze=2, **QUICK)
    plain = kerasft.finetune(pretrained, few, **kwargs)
    store = FeatureStore()
    first = kerasft.finetune(pretrained, few, feature_store=store, **kwargs)
    second = kerasft.finetune(pretrained, few, feature_store=store, **kwargs)

    assert [p.feature_source for p in first.speed.phases] == [caching.DERIVED, caching.KEPT]
    assert [p.feature_source for p in second.speed.phases] == [caching.STORED_BOTH, caching.KEPT]
    assert (len(store), store.hits, store.misses) == (2, 2, 2)
    # same features, same batches: the same training as without the store
    assert _same_weights(plain.model, second.model)
    assert _same_weights(first.model, second.model)
    np.testing.assert_allclose(
        plain.phases[1].history["val_loss"], second.phases[1].history["val_loss"], rtol=1e-5
    )


def test_store_does_not_reuse_for_changed_weights_or_data(pretrained, few):
    store = FeatureStore()
    kwargs = dict(recipe="head", epochs=1, **QUICK)

    def source(model, data):
        return (
            kerasft.finetune(model, data, feature_store=store, **kwargs)
            .speed.phases[0]
            .feature_source
        )

    assert source(pretrained, few) == caching.COMPUTED
    assert source(pretrained, few) == caching.STORED

    changed = keras.models.clone_model(pretrained)
    changed.set_weights(pretrained.get_weights())
    kernel = changed.get_layer("block1_conv1").kernel
    kernel.assign(kernel.numpy() + np.eye(1, kernel.numpy().size, 7).reshape(kernel.shape) * 1e-3)
    assert source(changed, few) == caching.COMPUTED

    x, y = few
    other = x.copy()
    other[0, 10, 10, 0] += 1.0
    assert source(pretrained, (other, y)) == caching.COMPUTED
    assert len(store) == 3
    # a shuffle is per phase: the same data in another order is other inputs, not other features
    assert source(pretrained, few) == caching.STORED


def test_store_key_ignores_automatic_layer_names_but_not_the_graph():
    # Keras numbers raw operations and unnamed layers globally (get_item, get_item_1...):
    # two copies of one model must still share their features (a KerasHub text task
    # pools with x[:, 0] and missed the store on every copy before).
    def build(take=0):
        inputs = keras.Input((4, 3), name="tokens")
        x = keras.layers.Dense(5, name="proj")(inputs)
        return keras.Model(inputs, keras.layers.Dense(2, name="head")(x[:, take]))

    first, second = build(), build()
    second.set_weights(first.get_weights())
    names = [[op.name for op in m.operations] for m in (first, second)]
    assert names[0] != names[1]  # the GetItem operations are numbered differently
    prefix = [keras.Model(m.input, m.get_layer("head").input) for m in (first, second)]
    assert caching.prefix_key(prefix[0], "in") == caching.prefix_key(prefix[1], "in")
    assert caching.prefix_key(prefix[0], "in") != caching.prefix_key(prefix[0], "other inputs")
    # another graph (x[:, 1] instead of x[:, 0]) is another key, with the same weights
    third = build(take=1)
    third.set_weights(first.get_weights())
    other = keras.Model(third.input, third.get_layer("head").input)
    assert caching.prefix_key(other, "in") != caching.prefix_key(prefix[0], "in")


def test_store_budget_keeps_the_most_recent_entries():
    def features(n):
        return caching._Features((np.zeros((n, 10), "float32"),), None, n * 40, [])

    store = FeatureStore(budget=1000)
    assert store.put("a", features(10)) and store.put("b", features(10))
    assert store.get("a") is not None  # "a" is now the most recent
    assert store.put("c", features(10))
    assert "b" not in store and "a" in store and "c" in store and store.evictions == 1
    assert not store.put("huge", features(100)), "an entry beyond the budget is not stored"
    assert store.get("c").train[0].flags.writeable is False
    assert "2 entries" in repr(store)
    store.clear()
    assert len(store) == 0


def test_store_bad_arguments(pretrained, few):
    with pytest.raises(ValueError, match=r"`budget`.*Received: budget=-1"):
        FeatureStore(budget=-1)
    with pytest.raises(
        TypeError, match=r"`feature_store` must be a kerasft.speed.FeatureStore.*'yes'"
    ):
        kerasft.finetune(pretrained, few, feature_store="yes", recipe="head", epochs=1, **QUICK)


# ------------------------------------------------------------------------ compiled models


def _same_run(a, b, atol=1e-5):
    assert [p.name for p in a.phases] == [p.name for p in b.phases]
    for i, (pa, pb) in enumerate(zip(a.phases, b.phases)):
        assert sorted(pa.history) == sorted(pb.history)
        for key in pa.history:
            first = 1 if i and key == "accuracy" else 0
            # A phase that compiles its own model reuses the run's metric objects, which
            # Keras does not reset before their first update: the first epoch's training
            # accuracy of a later phase counts the previous phase's last validation too
            # (0.84 = (65 + 19) / 100 against 65 / 80). The kept copy has its own metrics.
            np.testing.assert_allclose(
                pa.history[key][first:], pb.history[key][first:], rtol=1e-4, atol=atol
            )
    assert _same_weights(a.model, b.model, atol=atol)


def test_kept_compiled_copy_trains_as_the_phase_own_model(pretrained, few):
    # The head phase trains on cached features (a copy of the suffix), the fine-tune
    # phase the whole network (its dropout draws random numbers: their state is copied
    # in too); both with validation, warmup + cosine in the second.
    kwargs = dict(head_epochs=2, epochs=3, **QUICK)
    store = FeatureStore(compiled_models=4)
    first = kerasft.finetune(
        pretrained, few, speed=kerasft.SpeedConfig(feature_store=store), **kwargs
    )
    again = kerasft.finetune(
        pretrained, few, speed=kerasft.SpeedConfig(feature_store=store), **kwargs
    )
    other = kerasft.finetune(
        pretrained,
        few,
        speed=kerasft.SpeedConfig(feature_store=store),
        lr=3e-3,
        finetune_lr=3e-4,
        **kwargs,
    )

    assert [p.compiled for p in first.speed.phases] == [compiled.TRACED] * 2
    assert [p.compiled for p in again.speed.phases] == [compiled.REUSED] * 2
    assert [p.compiled for p in other.speed.phases] == [compiled.REUSED] * 2
    assert (len(store.compiled), store.compiled.traced, store.compiled.reused) == (2, 2, 4)
    # the same training as a call that compiles its own models, at either rate
    _same_run(kerasft.finetune(pretrained, few, **kwargs), again)
    _same_run(kerasft.finetune(pretrained, few, lr=3e-3, finetune_lr=3e-4, **kwargs), other)
    # each call's model is its own: a later call does not change an earlier one's weights
    assert not _same_weights(first.model, other.model)
    _same_run(first, again)
    # the optimizer state came back into the call's own optimizer
    assert (
        int(other.model.optimizer.iterations.numpy())
        == other.phases[-1].epochs * other.phases[-1].steps_per_epoch
    )
    assert "compiled" in first.speed.to_dict()["phases"][0]
    assert "2 of 4 kept; 4 fits reused one, 2 traced" in repr(store)


@pytest.mark.slow
def test_kept_copy_continues_the_rate_chosen_by_successive_halving(pretrained, few):
    # recipe="auto" with validation data tries two rates for half the epochs in one
    # phase, then the winner continues with its optimizer state: three compiles and fits.
    x, y = few
    kwargs = dict(validation_data=(x[80:], y[80:]), epochs=4, verbose=0)
    store = FeatureStore(compiled_models=2)
    shared = kerasft.finetune(
        pretrained, (x[:80], y[:80]), speed=kerasft.SpeedConfig(feature_store=store), **kwargs
    )
    plain = kerasft.finetune(pretrained, (x[:80], y[:80]), **kwargs)
    assert len(shared.halving) == 2 and shared.halving == plain.halving
    assert (store.compiled.traced, store.compiled.reused) == (1, 2)
    _same_run(plain, shared)


@pytest.mark.slow
def test_search_traces_each_network_once_and_its_trials_mean_the_same(pretrained, few):
    space = {"lr": [3e-3, 1e-2], "finetune_lr": [1e-4, 1e-3]}
    fixed = dict(TINY, unfreeze=1)  # both phases train on cached features
    result = search(pretrained, few, space, max_trials=3, verbose=0, **fixed)
    kept = result.store.compiled
    assert (len(kept), kept.traced, kept.reused) == (2, 2, 4), kept
    assert [p.compiled for p in result.best.speed.phases] == (
        [compiled.TRACED] * 2 if result.best_trial == "0" else [compiled.REUSED] * 2
    )
    plain = kerasft.finetune(
        pretrained, few, monitor="val_loss", verbose=0, **fixed, **result.best_params
    )
    assert result.best.best_score == pytest.approx(plain.best_score, rel=1e-5)
    assert _same_weights(result.best.model, plain.model)


def test_phases_that_could_train_differently_keep_their_own_model(pretrained, few):
    store = FeatureStore(compiled_models=2)
    kwargs = dict(recipe="head", epochs=1, speed=kerasft.SpeedConfig(feature_store=store), **QUICK)
    l2sp = kerasft.finetune(
        pretrained,
        few,
        recipe="full",
        epochs=1,
        regularization=kerasft.RegularizationConfig(l2sp=1e-3),
        speed=kerasft.SpeedConfig(feature_store=store),
        **QUICK,
    )
    assert l2sp.speed.phases[0].compiled.startswith(f"{compiled.OWN}: weight ")
    assert "has a regularizer" in l2sp.speed.phases[0].compiled
    scheduled = kerasft.finetune(
        pretrained,
        few,
        callbacks=[keras.callbacks.LearningRateScheduler(lambda e, lr: lr)],
        **kwargs,
    )
    assert scheduled.speed.phases[0].compiled == (
        f"{compiled.OWN}: callback LearningRateScheduler changes the model or its optimizer "
        "during fit"
    )
    weight_decay = kerasft.finetune(
        pretrained,
        few,
        optimizer=kerasft.OptimizerConfig(name="adamw", weight_decay=1e-4),
        **kwargs,
    )
    assert weight_decay.speed.phases[0].compiled == (
        f"{compiled.OWN}: its optimizer, loss or metrics cannot be shared"
    )
    gradual = kerasft.finetune(
        pretrained,
        few,
        recipe="gradual",
        head_epochs=1,
        epochs=2,
        speed=kerasft.SpeedConfig(feature_store=store),
        **QUICK,
    )
    assert (
        gradual.speed.phases[-1].compiled == f"{compiled.OWN}: layers are unfrozen during the phase"
    )
    assert store.compiled.traced + store.compiled.reused == sum(
        p.compiled in (compiled.TRACED, compiled.REUSED) for p in gradual.speed.phases
    )


def test_callbacks_of_a_shared_phase_see_the_phase_model(pretrained, few, tmp_path):
    class Keep(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            self.weights = self.model.get_weights()
            self.model.save(tmp_path / "saved.keras")

    store = FeatureStore(compiled_models=1)
    kwargs = dict(recipe="head", epochs=1, speed=kerasft.SpeedConfig(feature_store=store), **QUICK)
    kerasft.finetune(pretrained, few, **kwargs)
    keep = Keep()
    result = kerasft.finetune(pretrained, few, callbacks=[keep], **kwargs)
    assert result.speed.phases[0].compiled == compiled.REUSED
    assert len(keep.weights) == len(result.model.get_weights())  # the full model's, not the head's
    assert not _same_weights(result.model, pretrained)
    saved = keras.models.load_model(tmp_path / "saved.keras")
    for a, b, c in zip(keep.weights, result.model.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_reduce_on_plateau_lowers_the_shared_rate_as_its_own(pretrained, few):
    # min_delta=10: no epoch improves enough, so the rate is halved after every other one.
    kwargs = dict(
        recipe="full", epochs=4, reduce_on_plateau=dict(patience=1, factor=0.5, min_delta=10.0)
    )
    store = FeatureStore(compiled_models=1)
    shared = [
        kerasft.finetune(
            pretrained, few, speed=kerasft.SpeedConfig(feature_store=store), **kwargs, **QUICK
        )
        for _ in range(2)
    ]
    plain = kerasft.finetune(pretrained, few, **kwargs, **QUICK)
    assert [r.speed.phases[0].compiled for r in shared] == [compiled.TRACED, compiled.REUSED]
    schedules = [learning_rate_object(r.model.optimizer) for r in (plain, shared[1])]
    assert [s.multiplier for s in schedules] == [0.25, 0.25]
    _same_run(plain, shared[1])


def test_compiled_models_argument():
    assert FeatureStore().compiled is None
    with pytest.raises(
        ValueError, match=r"`compiled_models` must be an integer >= 0. Received: compiled_models=-1"
    ):
        FeatureStore(compiled_models=-1)
    with pytest.raises(ValueError, match=r"compiled_models=True"):
        FeatureStore(compiled_models=True)


def test_rate_table_gives_the_schedule_rates_exactly():
    schedule = kerasft.schedules.WarmupCosineDecay(1e-3, total_steps=37, warmup_steps=4)
    table = compiled.RateTable()
    table.fill(compiled.rates_of(schedule, 40))
    optimizer = keras.optimizers.Adam(schedule)
    for step in (0, 3, 4, 20, 36, 39, 60):  # past the table: its last rate
        optimizer.iterations.assign(min(step, 39))
        expected = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        assert float(keras.ops.convert_to_numpy(table(step))) == expected
    assert np.all(compiled.rates_of(keras.Variable(0.25), 3) == np.float32(0.25))


# --------------------------------------------------------------------------------- search


@pytest.fixture(scope="module")
def random_search(pretrained, few, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("search"))
    result = search(pretrained, few, SPACE, max_trials=4, directory=directory, verbose=0, **TINY)
    return result, directory


@pytest.mark.slow
def test_random_search_shares_features_and_picks_the_best(random_search):
    result, directory = random_search
    assert isinstance(result, SearchResult) and len(result.trials) == 4
    assert all(row.status == "COMPLETED" and not row.earlier for row in result.trials)
    assert {tuple(sorted(row.params)) for row in result.trials} == {("lr", "unfreeze")}
    assert result.trials[0].params == {"lr": 1e-2, "unfreeze": "all"}, (
        "the first trial runs finetune's defaults"
    )
    scores = [row.objective for row in result.trials]
    assert result.direction == "min"
    assert result.best.best_score == pytest.approx(min(scores))
    best_row = next(row for row in result.trials if row.trial_id == result.best_trial)
    assert best_row.objective == min(scores) and result.best_params == best_row.params
    # 4 trials, 2 values of `unfreeze`: some trials found their features in the store
    assert result.store.hits > 0
    assert result.directory == os.path.join(directory, "kerasft_search")


@pytest.mark.slow
@pytest.mark.parametrize("oracle", ["bayesian", "hyperband"])
def test_other_oracles(pretrained, few, oracle):
    kwargs = dict(TINY, epochs=3) if oracle == "hyperband" else TINY
    result = search(
        pretrained,
        few,
        {"lr": ("float", 1e-3, 3e-2, "log"), "unfreeze": [1, "all"]},
        max_trials=4,
        oracle=oracle,
        objective="val_accuracy",
        verbose=0,
        **kwargs,
    )
    assert len(result.trials) == 4 and result.direction == "max"
    assert all(row.status == "COMPLETED" for row in result.trials)
    scores = [row.objective for row in result.trials]
    assert result.best.best_score == pytest.approx(max(scores))
    assert all(isinstance(row.params["lr"], float) for row in result.trials)
    first = {"lr": 1e-2, "unfreeze": "all"}  # finetune's defaults first, where the oracle allows it
    assert (result.trials[0].params == first) == (oracle == "bayesian")
    assert result.directory is None  # a temporary directory, removed
    if oracle == "hyperband":  # budgets of 1 epoch, then the best run again with 3
        assert sorted(row.params["epochs"] for row in result.trials) == [1, 1, 1, 3]


@pytest.mark.slow
def test_search_resumes_after_its_finished_trials(random_search, pretrained, few):
    first, directory = random_search
    again = search(pretrained, few, SPACE, max_trials=4, directory=directory, verbose=0, **TINY)
    assert all(row.earlier for row in again.trials), "no trial runs twice"
    assert [(r.trial_id, r.params, r.objective, r.seconds) for r in again.trials] == [
        (r.trial_id, r.params, r.objective, r.seconds) for r in first.trials
    ]
    # the best trial ran in the earlier search: its configuration ran once more, the same way
    assert again.best_trial == first.best_trial
    assert again.best.best_score == pytest.approx(first.best.best_score, rel=1e-4)

    more = search(pretrained, few, SPACE, max_trials=5, directory=directory, verbose=0, **TINY)
    assert [row.earlier for row in more.trials] == [True] * 4 + [False]

    with pytest.raises(ValueError, match=r"holds another search.*'space'.*overwrite=True"):
        search(
            pretrained,
            few,
            {"lr": [1e-3, 3e-3]},
            max_trials=4,
            directory=directory,
            verbose=0,
            **TINY,
        )


@pytest.mark.slow
def test_result_table_dataframe_and_plot(random_search, tmp_path):
    result, _ = random_search
    table = result.table()
    lines = table.splitlines()
    assert len(lines) == 5 and "val_loss" in lines[0] and "unfreeze" in lines[0]
    assert sum(line.startswith("*") for line in lines) == 1
    frame = result.to_dataframe()
    assert list(frame.index) == [row.trial_id for row in result.trials]
    assert frame["val_loss"].min() == pytest.approx(result.best.best_score)
    path = result.plot(tmp_path / "search.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"`path` must end with '.png'"):
        result.plot(tmp_path / "search.jpg")


def test_combinations_finetune_refuses_fail_their_trials(pretrained, few):
    # each value alone is fine; together, finetune refuses them: every trial fails at once
    with pytest.raises(
        RuntimeError, match=r"No trial of the search completed.*`unfreeze` applies to"
    ):
        search(
            pretrained,
            few,
            {"recipe": ["gradual"], "unfreeze": [2]},
            max_trials=2,
            verbose=0,
            **TINY,
        )


@pytest.mark.filterwarnings("ignore:Early stopping conditioned on metric")
def test_objective_that_is_not_logged(pretrained, few):
    with pytest.raises(
        ValueError, match=r"`objective='val_acc'` is not a quantity the trials log.*val_accuracy"
    ):
        search(
            pretrained,
            few,
            {"lr": [1e-2]},
            max_trials=1,
            objective="val_acc",
            verbose=0,
            recipe="head",
            epochs=1,
        )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            dict(space={"lr": [1e-3], "not_a_keyword": [1]}),
            ValueError,
            r"'not_a_keyword', which is not a finetune keyword. Keywords that can be searched: "
            r"\[.*'unfreeze'",
        ),
        (
            dict(space={"validation_split": [0.1, 0.2]}),
            ValueError,
            r"cannot search 'validation_split': the objective",
        ),
        (
            dict(space={"lr": [1e-3]}, lr=1e-2),
            ValueError,
            r"'lr' is both in `space` and fixed \(lr=0.01\)",
        ),
        (
            dict(space={"lr": [1e-3, 20]}),
            ValueError,
            r"`space\['lr'\]`: finetune refuses lr=20: .*\(0, 10\)",
        ),
        (
            dict(space={"lr": ("float", 1e-2, 1e-3)}),
            ValueError,
            r"`space\['lr'\]` must be a list .*low < high",
        ),
        (dict(space={"lr": ("float", 0.0, 1e-2, "log")}), ValueError, r"log range needs low > 0"),
        (
            dict(space={"lr": ("uniform", 0.0, 1e-2)}),
            ValueError,
            r"\('float', low, high\).*Received: space\['lr'\]",
        ),
        (dict(space={"unfreeze": []}), ValueError, r"`space\['unfreeze'\]` is an empty list"),
        (dict(space={"unfreeze": [1, 1]}), ValueError, r"repeats a value"),
        (dict(space={}), ValueError, r"`space` must be a non-empty dict"),
        (
            dict(space={"epochs": [1, 2]}, oracle="hyperband"),
            ValueError,
            r"oracle='hyperband' sets each trial's epochs",
        ),
        (
            dict(space={"lr": [1e-3]}, oracle="grid"),
            ValueError,
            r"`oracle` must be one of \['random', 'bayesian'",
        ),
        (
            dict(space={"lr": [1e-3]}, max_trials=0),
            ValueError,
            r"`max_trials` must be an integer >= 1",
        ),
        (
            dict(space={"lr": [1e-3]}, learning_rate=1e-3),
            TypeError,
            r"unexpected keyword argument 'learning_rate'. It takes the finetune keywords: "
            r"\[.*'finetune_lr'",
        ),
        (
            dict(space={"lr": [1e-3]}, monitor="val_accuracy"),
            ValueError,
            r"`monitor='val_accuracy'` cannot be given",
        ),
        (
            dict(space={"lr": [1e-3]}, copy=False),
            ValueError,
            r"`copy=False` cannot be given to search",
        ),
        (dict(space={"lr": [1e-3]}, unfreeze=0), ValueError, r"search\(\): Argument `unfreeze`"),
    ],
)
def test_bad_arguments(pretrained, few, kwargs, error, match):
    with pytest.raises(error, match=match):
        search(pretrained, few, verbose=0, **kwargs)


@pytest.mark.parametrize("project_name", ["..", ".", "a/b"])
def test_project_name_must_stay_inside_directory(pretrained, few, tmp_path, project_name):
    # ".." with overwrite=True made KerasTuner delete the parent of `directory`.
    (tmp_path / "keep.txt").write_text("mine")
    inside = tmp_path / "runs"
    inside.mkdir()
    with pytest.raises(ValueError, match=r"`project_name` must be the name of a directory inside"):
        search(
            pretrained,
            few,
            {"lr": [1e-3]},
            directory=inside,
            project_name=project_name,
            overwrite=True,
            verbose=0,
        )
    assert sorted(os.listdir(tmp_path)) == ["keep.txt", "runs"]


def test_overwrite_deletes_only_a_search_project(pretrained, few, tmp_path):
    project = tmp_path / "kerasft_search"
    project.mkdir()
    (project / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match="is not a kerasft search .* overwrite=True deletes only"):
        search(pretrained, few, {"lr": [1e-3]}, directory=tmp_path, overwrite=True, verbose=0)
    assert os.listdir(project) == ["thesis.tex"]


def test_loss_changing_space_warns(pretrained, few):
    with pytest.warns(
        UserWarning, match=r"changes \['label_smoothing'\].*objective='val_accuracy'"
    ):
        result = search(
            pretrained,
            few,
            {"label_smoothing": [0.1]},
            max_trials=1,
            verbose=0,
            recipe="head",
            epochs=1,
        )
    assert result.best_params == {"label_smoothing": 0.1}


def test_baseline_is_finetune_defaults_when_the_space_holds_them():
    space = {
        "lr": [3e-3, 1e-2],
        "finetune_lr": [1e-4, 1e-3],
        "unfreeze": [1, "all"],
        "train_bn": [True, False],
    }
    assert baseline_values(parse_space(space, {}), {}) == {
        "lr": 1e-2,
        "finetune_lr": 1e-3,
        "unfreeze": "'all'",
        "train_bn": False,
    }
    fixed = {"lr": 3e-3}  # finetune_lr=None is lr / 10 of the fixed rate
    assert baseline_values(parse_space({"finetune_lr": [3e-4, 1e-3]}, fixed), fixed) == {
        "finetune_lr": 3e-4
    }
    assert baseline_values(parse_space({"lr": ("float", 1e-3, 3e-3)}, {}), {}) is None


def test_searchable_keywords_are_finetune_keywords():
    keywords = searchable_keywords()
    assert {
        "lr",
        "finetune_lr",
        "unfreeze",
        "recipe",
        "lora_rank",
        "augment",
        "label_smoothing",
        "epochs",
    } <= set(keywords)
    assert not {"validation_split", "verbose", "feature_store", "copy"} & set(keywords)
