"""The benchmark matrix: kerasft's defaults against the baselines a user would otherwise write.

Each case is a real pretrained model and real data. For every case and seed, in one
process and on the same split, it runs:

- ``kerasft``: ``kerasft.finetune(model, (x_train, y_train), seed=seed, verbose=0)``, the
  library's defaults whatever they are, scored with ``result.evaluate((x_test, y_test))``;
  its time is the whole call.
- ``fit3`` / ``fit30``: plain Keras ``fit`` of the pretrained model, everything trainable,
  all labels, no validation, batch 32, 3 and 30 epochs (3 and 10 for MiniLM: 30 epochs of
  a 22M-parameter BERT at sequence length 128 take hours on 2 CPU cores), with the
  family's usual optimizer: ``Adam(1e-3)`` for CNNs, MLPs and the GloVe model,
  ``AdamW(5e-5)`` for MiniLM. When the class count differs, the head is a new ``Dense``
  of the right width on the old head's input (softmax; sigmoid for multi-label).
- ``ref``: the family's reference recipe. CNNs and the GloVe model: the Keras
  transfer-learning guide's: the pretrained layers frozen (BatchNormalization in
  inference mode), the new layers trained with ``Adam(1e-3)`` for 20 epochs, then
  everything but BatchNormalization unfrozen and trained with ``Adam(1e-5)`` for 10.
  MiniLM: KerasHub's (full fine-tune, ``Adam(5e-5)``, 3 epochs, batch 32).
- ``lp``: a linear probe with scikit-learn on frozen features: ``LogisticRegression
  (max_iter=2000)`` (one per label for multi-label), ``Ridge`` for regression; features
  are the head's input, and for MiniLM the masked mean of the backbone's
  ``sequence_output``; ``lp_cls`` probes MiniLM's [CLS] ``pooled_output`` instead.

Rows are appended to a JSON-lines file as they finish, so a killed run resumes where it
stopped; ``--report`` renders ``docs/matrix.md`` and ``docs/matrix.png`` from it.

Run::

    python benchmarks/matrix.py --quick                  # every case, 1 seed, small test sets
    python benchmarks/matrix.py                          # every case x seeds 0 1 2 (hours)
    python benchmarks/matrix.py --cases digits10 rt400 --only kerasft   # re-run kerasft rows
    python benchmarks/matrix.py --report                 # docs/matrix.md and docs/matrix.png
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

import kerasft  # noqa: E402  (before TensorFlow: oneDNN off)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import matrix_data as md  # noqa: E402
import matrix_report  # noqa: E402
import matrix_tabular  # noqa: E402

from kerasft.datasets import FewShotSplit  # noqa: E402
from kerasft.jobs import textdata  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "saved_models", "mnist_cnn.keras")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "matrix.jsonl")
QUICK_RESULTS = os.path.join(ROOT, "benchmarks", "results", "matrix-quick.jsonl")
SEQUENCE_LENGTH = 128
BATCH = 32
METHODS = ("kerasft", "fit3", "fit30", "ref", "lp", "lp_cls")
QUICK_TEST = {"image": 500, "text": 200}


# --- cases ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """A pretrained model and a data set; ``load(seed, quick)`` gives the split.

    ``model(split)`` returns a fresh copy of the pretrained model as a user hands it to
    ``kerasft.finetune``; ``new_layers`` names the layers that were not pretrained besides
    the head (the reference recipe trains them with the head).
    """

    name: str
    group: str  # "dev" (used to tune defaults) or "held-out"
    family: str  # "cnn", "minilm", "glove" or "mlp"
    task: str  # "classification", "multilabel" or "regression"
    metric: str  # the EvaluationReport figure: accuracy, macro_f1, micro_f1, r2
    outputs: int  # classes, labels or regression outputs
    load: Callable[[int, bool], FewShotSplit]
    model: Callable[[FewShotSplit], Any]
    description: str
    new_layers: tuple[str, ...] = ()

    @property
    def report_task(self) -> str:
        if self.task == "classification":
            return "binary" if self.outputs == 2 else "multiclass"
        return self.task


# Data, loaded once per process.
digits = functools.lru_cache(None)(md.digits)
full_mnist = functools.lru_cache(None)(md.load_full_mnist)
fashion = functools.lru_cache(None)(md.load_fashion_mnist)
faces = functools.lru_cache(None)(md.load_faces)


@functools.lru_cache(None)
def corpus(name: str) -> tuple:
    """``(x, y, x_test, y_test, class names)``; R8 through the library's own loader."""
    if name == "reuters-r8":
        split, names = textdata.load_reuters_r8()
        return (*split, names)
    return md.load_orange_corpus(name)


rotten = functools.lru_cache(None)(textdata.load_rotten_tomatoes)
glove = functools.lru_cache(None)(md.load_glove)


@functools.lru_cache(None)
def rotated_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = digits()
    angles = np.random.default_rng(md.FIXED_SEED).uniform(-40.0, 40.0, size=len(y))
    return md.rotate(x, angles), angles.astype("float32"), y


def _cap(quick: bool, kind: str, n: int | None = None) -> int | None:
    return QUICK_TEST[kind] if quick else n


def digits_split(shots: int) -> Callable[[int, bool], FewShotSplit]:
    def load(seed: int, quick: bool) -> FewShotSplit:
        x, y = digits()
        return md.split_rest(x, y, md.per_class(y, shots, seed), _cap(quick, "image"))

    return load


def load_multilabel(seed: int, quick: bool) -> FewShotSplit:
    x, y = digits()
    return md.split_rest(x, md.digit_attributes(y), md.per_class(y, 30, seed), _cap(quick, "image"))


def load_faces(seed: int, quick: bool) -> FewShotSplit:
    x, y = faces()
    return md.split_rest(x, y, md.per_class(y, 20, seed))


def load_dict(seed: int, quick: bool) -> FewShotSplit:
    x, y = digits()
    s = md.split_rest(x, y, md.per_class(y, 20, seed), _cap(quick, "image"))
    as_dict = lambda im: {"image": im, "profile": md.ink_profile(im)}  # noqa: E731
    return FewShotSplit(as_dict(s.x_train), s.y_train, as_dict(s.x_test), s.y_test)


def load_rotation(seed: int, quick: bool) -> FewShotSplit:
    x, angles, y = rotated_digits()
    train = md.per_class(y, 20, seed)
    test = np.setdiff1d(np.arange(len(y)), train)
    if quick:
        test = np.random.default_rng(md.FIXED_SEED).choice(test, QUICK_TEST["image"], replace=False)
    return FewShotSplit(x[train], angles[train], x[test], angles[test])


def image_transfer(source: Callable, shots: int, classes: tuple[int, ...] | None = None):
    """``shots``/class from ``source()``'s training set; a fixed 2,000 of its test set."""

    def load(seed: int, quick: bool) -> FewShotSplit:
        (x, y), (xt, yt) = source()
        keep = np.arange(len(y)) if classes is None else np.flatnonzero(np.isin(y, classes))
        keep_t = np.arange(len(yt)) if classes is None else np.flatnonzero(np.isin(yt, classes))
        train = md.per_class(y, shots, seed, pool=keep)
        test = keep_t[md.stratified_sample(yt[keep_t], _cap(quick, "image", 2000))]
        offset = 0 if classes is None else min(classes)
        return FewShotSplit(x[train], y[train] - offset, xt[test], yt[test] - offset)

    return load


def footwear_split(shots: int) -> Callable[[int, bool], FewShotSplit]:
    """Fashion-MNIST footwear (sandal, sneaker, ankle boot: 1) against the other 7 classes (0).

    ``shots`` images of each of the 10 classes, so 30% of the labels are footwear, as in
    the fixed 2,000 test images drawn in the test set's proportions.
    """

    def load(seed: int, quick: bool) -> FewShotSplit:
        (x, y), (xt, yt) = fashion()
        train = md.per_class(y, shots, seed)
        test = md.stratified_sample(yt, _cap(quick, "image", 2000))
        footwear = lambda labels: np.isin(labels, (5, 7, 9)).astype("int64")  # noqa: E731
        return FewShotSplit(x[train], footwear(y[train]), xt[test], footwear(yt[test]))

    return load


def rt_split(n_train: int) -> Callable[[int, bool], FewShotSplit]:
    def load(seed: int, quick: bool) -> FewShotSplit:
        texts, labels = rotten()
        return md.balanced_text_split(texts, labels, n_train, _cap(quick, "text", 1000), seed)

    return load


def corpus_split(name: str, shots: int) -> Callable[[int, bool], FewShotSplit]:
    def load(seed: int, quick: bool) -> FewShotSplit:
        x, y, xt, yt, _ = corpus(name)
        train = md.per_class(y, shots, seed)
        test = md.stratified_sample(yt, _cap(quick, "text", 1000))
        return FewShotSplit(x[train], y[train], xt[test], yt[test])

    return load


# --- models, as a user builds them ---------------------------------------------------


def shipped(split=None) -> keras.Model:
    return keras.models.load_model(SHIPPED)


def mnist04_cnn(split=None) -> keras.Model:
    return keras.models.load_model(md.pretrained_cnn("mnist04_cnn", md.mnist_0_4, 5))


def fashion04_cnn(split=None) -> keras.Model:
    return keras.models.load_model(md.pretrained_cnn("fashion04_cnn", md.fashion_0_4, 5))


def fashion_cnn(split=None) -> keras.Model:
    return keras.models.load_model(md.pretrained_cnn("fashion_cnn", fashion, 10))


def minilm(num_classes: int) -> Callable:
    def build(split=None):
        import keras_hub

        preset = textdata.minilm_preset()
        return keras_hub.models.BertTextClassifier(
            backbone=keras_hub.models.BertBackbone.from_preset(preset),
            preprocessor=keras_hub.models.BertTextClassifierPreprocessor(
                keras_hub.models.BertTokenizer.from_preset(preset), sequence_length=SEQUENCE_LENGTH
            ),
            num_classes=num_classes,
        )

    return build


def glove_model(split: FewShotSplit) -> keras.Model:
    """TextVectorization over the training texts, an Embedding initialised from GloVe 6B 50d."""
    index, vectors = glove()
    vectorize = keras.layers.TextVectorization(output_sequence_length=64, name="vectorize")
    vectorize.adapt(split.x_train)
    vocab = vectorize.get_vocabulary()
    weights = np.zeros((len(vocab), vectors.shape[1]), dtype="float32")  # unknown words: 0
    for i, word in enumerate(vocab[2:], start=2):
        if word in index:
            weights[i] = vectors[index[word]]
    inputs = keras.Input(shape=(), dtype="string", name="text")
    x = vectorize(inputs)
    x = keras.layers.Embedding(
        len(vocab),
        vectors.shape[1],
        mask_zero=True,
        name="glove",
        embeddings_initializer=keras.initializers.Constant(weights),
    )(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    x = keras.layers.Dense(64, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="glove_text")


def two_input_model(split=None) -> keras.Model:
    """The shipped CNN's body on "image", a new Dense on "profile", concatenated, a Dense head."""
    cnn = shipped()
    body = keras.Model(cnn.inputs, cnn.layers[-1].input, name="cnn_body")
    image = keras.Input((28, 28, 1), name="image")
    profile = keras.Input((56,), name="profile")
    p = keras.layers.Dense(32, activation="relu", name="profile_dense")(profile)
    x = keras.layers.Concatenate(name="concat")([body(image), p])
    outputs = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
    return keras.Model({"image": image, "profile": profile}, outputs, name="two_inputs")


def rotation_model(split=None) -> keras.Model:
    """The shipped CNN with its 10-way head replaced by one linear unit."""
    cnn = shipped()
    outputs = keras.layers.Dense(1, name="angle")(cnn.layers[-1].input)
    return keras.Model(cnn.inputs, outputs, name="mnist_cnn_angle")


CASES = {
    c.name: c
    for c in [
        # dev cases: used to tune the defaults
        Case(
            "digits10",
            "dev",
            "cnn",
            "classification",
            "accuracy",
            10,
            digits_split(10),
            shipped,
            "shipped MNIST CNN -> sklearn digits, 10 labels/class (100); test: the other 1,697",
        ),
        Case(
            "mnist04_59",
            "dev",
            "cnn",
            "classification",
            "accuracy",
            5,
            image_transfer(full_mnist, 10, classes=(5, 6, 7, 8, 9)),
            mnist04_cnn,
            "CNN pretrained here on MNIST 0-4 (2 epochs) -> MNIST 5-9, 10 labels/class (50); "
            "test: 2,000 of 5-9 from MNIST's test set",
        ),
        Case(
            "fashion04_59_500",
            "dev",
            "cnn",
            "classification",
            "accuracy",
            5,
            image_transfer(fashion, 500, classes=(5, 6, 7, 8, 9)),
            fashion04_cnn,
            "CNN pretrained here on Fashion-MNIST classes 0-4 (clothes; 2 epochs) -> classes 5-9 "
            "(shoes, shirts, bags), 500 labels/class (2,500); "
            "test: 2,000 of 5-9 from its test set",
        ),
        Case(
            "rt400",
            "dev",
            "minilm",
            "classification",
            "accuracy",
            2,
            rt_split(400),
            minilm(2),
            "MiniLM BertTextClassifier -> Rotten Tomatoes, 400 labelled (balanced); test: 1,000",
        ),
        Case(
            "multilabel300",
            "dev",
            "cnn",
            "multilabel",
            "micro_f1",
            3,
            load_multilabel,
            shipped,
            "shipped MNIST CNN -> digits, 3 labels (even, >= 5, closed loop), 300 labelled; "
            "test: the other 1,497",
        ),
        Case(
            "faces40",
            "dev",
            "cnn",
            "classification",
            "accuracy",
            2,
            load_faces,
            shipped,
            "shipped MNIST CNN -> lfw_subset face / non-face photos (25x25 resized to 28x28), "
            "40 labelled; test: the other 160",
        ),
        Case(
            "diamonds_dg_from_hj",
            "dev",
            "mlp",
            "classification",
            "accuracy",
            8,
            matrix_tabular.diamonds_split(labelled=240, part="D-G"),
            matrix_tabular.pretrained_loader("diamonds_hj_mlp"),
            "tabular: MLP pretrained here on ggplot2's diamonds of colours H-J (clarity from "
            "carat, cut, proportions and price) -> colours D-G, 240 labels drawn in their "
            "clarity proportions; test: 2,000 other D-G diamonds",
        ),
        Case(
            "diamonds_dg_2400",
            "dev",
            "mlp",
            "classification",
            "accuracy",
            8,
            matrix_tabular.diamonds_split(labelled=2400, part="D-G"),
            matrix_tabular.pretrained_loader("diamonds_hj_mlp"),
            "tabular: the MLP pretrained on colours H-J -> colours D-G, 2,400 labels drawn in "
            "their clarity proportions; test: 2,000 other D-G "
            "diamonds",
        ),
        Case(
            "diamonds_cut",
            "dev",
            "mlp",
            "classification",
            "accuracy",
            8,
            matrix_tabular.diamonds_split(labelled=240, part="Fair/Good/Very Good cut"),
            matrix_tabular.pretrained_loader("diamonds_fine_cut_mlp"),
            "tabular: the same MLP pretrained on Premium and Ideal cuts -> Fair, Good and Very "
            "Good cuts, 240 labels drawn in their clarity proportions; test: 2,000 others",
        ),
        # held-out cases: never used for tuning
        Case(
            "digits3",
            "held-out",
            "cnn",
            "classification",
            "accuracy",
            10,
            digits_split(3),
            shipped,
            "shipped MNIST CNN -> sklearn digits, 3 labels/class (30); test: the other 1,767",
        ),
        Case(
            "mnist_fashion100",
            "held-out",
            "cnn",
            "classification",
            "accuracy",
            10,
            image_transfer(fashion, 100),
            shipped,
            "shipped MNIST CNN -> Fashion-MNIST, 100 labels/class (1,000); test: 2,000",
        ),
        Case(
            "mnist_fashion10",
            "held-out",
            "cnn",
            "classification",
            "accuracy",
            10,
            image_transfer(fashion, 10),
            shipped,
            "shipped MNIST CNN -> Fashion-MNIST, 10 labels/class (100); test: 2,000",
        ),
        Case(
            "footwear20",
            "held-out",
            "cnn",
            "classification",
            "accuracy",
            2,
            footwear_split(20),
            shipped,
            "shipped MNIST CNN (its 10-way head replaced by 2) -> Fashion-MNIST footwear or "
            "not, 20 images of each of the 10 classes (200, 60 of them footwear); test: 2,000",
        ),
        Case(
            "mnist_fashion300",
            "held-out",
            "cnn",
            "classification",
            "accuracy",
            10,
            image_transfer(fashion, 300),
            shipped,
            "shipped MNIST CNN -> Fashion-MNIST, 300 labels/class (3,000); test: 2,000",
        ),
        Case(
            "fashion_mnist20",
            "held-out",
            "cnn",
            "classification",
            "accuracy",
            10,
            image_transfer(full_mnist, 20),
            fashion_cnn,
            "CNN pretrained here on Fashion-MNIST (2 epochs) -> MNIST, 20 labels/class (200); "
            "test: 2,000",
        ),
        Case(
            "fashion_mnist5",
            "held-out",
            "cnn",
            "classification",
            "accuracy",
            10,
            image_transfer(full_mnist, 5),
            fashion_cnn,
            "the Fashion-MNIST CNN -> MNIST, 5 labels/class (50); test: 2,000",
        ),
        Case(
            "ng20",
            "held-out",
            "minilm",
            "classification",
            "accuracy",
            20,
            corpus_split("20newsgroups", 20),
            minilm(20),
            "MiniLM BertTextClassifier -> 20 Newsgroups, 20 labels/class (400); test: 1,000",
        ),
        Case(
            "r52",
            "held-out",
            "minilm",
            "classification",
            "macro_f1",
            52,
            corpus_split("reuters-r52", 10),
            minilm(52),
            "MiniLM BertTextClassifier -> Reuters R52, up to 10 labels/class (428); "
            "test: 1,000 (stratified, every class present)",
        ),
        Case(
            "r8",
            "held-out",
            "minilm",
            "classification",
            "accuracy",
            8,
            corpus_split("reuters-r8", 20),
            minilm(8),
            "MiniLM BertTextClassifier -> Reuters R8, 20 labels/class (160); test: 1,000",
        ),
        Case(
            "glove_rt200",
            "dev",
            "glove",
            "classification",
            "accuracy",
            2,
            rt_split(200),
            glove_model,
            "the GloVe model of glove_rt1000, Rotten Tomatoes, 200 labelled; test: 1,000",
            new_layers=("hidden",),
        ),
        Case(
            "glove_rt1000",
            "held-out",
            "glove",
            "classification",
            "accuracy",
            2,
            rt_split(1000),
            glove_model,
            "GloVe-6B-50d-initialised Embedding -> mean -> Dense(64) -> Dense(2), Rotten Tomatoes, "
            "1,000 labelled; test: 1,000",
            new_layers=("hidden",),
        ),
        Case(
            "glove_rt4000",
            "held-out",
            "glove",
            "classification",
            "accuracy",
            2,
            rt_split(4000),
            glove_model,
            "the same GloVe model, Rotten Tomatoes, 4,000 labelled; test: 1,000",
            new_layers=("hidden",),
        ),
        Case(
            "glove_r8_40",
            "held-out",
            "glove",
            "classification",
            "accuracy",
            8,
            corpus_split("reuters-r8", 40),
            glove_model,
            "the GloVe model of glove_rt1000 (its 2-way head replaced by 8) -> Reuters R8, 40 "
            "labels/class (320); test: 1,000",
            new_layers=("hidden",),
        ),
        Case(
            "dict200",
            "held-out",
            "cnn",
            "classification",
            "accuracy",
            10,
            load_dict,
            two_input_model,
            'two named inputs: shipped CNN body on "image", new Dense on a 56-dim ink '
            '"profile", concatenated, Dense head; digits 20/class (200); test: the other 1,597',
            new_layers=("profile_dense",),
        ),
        Case(
            "rotation200",
            "held-out",
            "cnn",
            "regression",
            "r2",
            1,
            load_rotation,
            rotation_model,
            "shipped MNIST CNN with a 1-unit linear head -> angle of digits rotated by "
            "U(-40, 40) degrees, 200 labelled; test: the other 1,597",
        ),
        Case(
            "diamonds_hj",
            "held-out",
            "mlp",
            "classification",
            "accuracy",
            8,
            matrix_tabular.diamonds_split(30),
            matrix_tabular.diamond_mlp,
            "tabular: MLP pretrained here on ggplot2's diamonds of colours D-G (clarity, 8 grades, "
            "from carat, cut, proportions and price) -> colours H-J, 30 labels/grade (240); "
            "test: 2,000 of the other H-J diamonds",
        ),
        Case(
            "diamonds_hj_drawn",
            "held-out",
            "mlp",
            "classification",
            "accuracy",
            8,
            matrix_tabular.diamonds_split(labelled=240),
            matrix_tabular.diamond_mlp,
            "the same MLP -> colours H-J, 240 labels drawn in H-J's clarity proportions "
            "(stratified; diamonds_hj balances them, 30 per grade, while its test set keeps "
            "H-J's proportions); test: 2,000 of the other H-J diamonds",
        ),
        Case(
            "price_hj60",
            "held-out",
            "mlp",
            "regression",
            "r2",
            1,
            matrix_tabular.price_split(60),
            matrix_tabular.pretrained_loader("diamonds_dg_price_mlp"),
            "tabular regression: MLP pretrained here on the log price of diamonds of colours "
            "D-G (from carat, cut, proportions and clarity) -> colours H-J, 60 labelled; "
            "test: 2,000 of the other H-J diamonds",
        ),
        Case(
            "price_hj600",
            "held-out",
            "mlp",
            "regression",
            "r2",
            1,
            matrix_tabular.price_split(600),
            matrix_tabular.pretrained_loader("diamonds_dg_price_mlp"),
            "the same price MLP -> colours H-J, 600 labelled; test: 2,000 of the other H-J "
            "diamonds",
        ),
    ]
}


# --- methods -------------------------------------------------------------------------


def is_keras_hub(case: Case) -> bool:
    return case.family == "minilm"


def user_model(case: Case, split: FewShotSplit) -> keras.Model:
    """The pretrained model with a new Dense head when its width is not the task's."""
    model = case.model(split)
    if is_keras_hub(case) or model.output.shape[-1] == case.outputs:
        return model
    activation = {"classification": "softmax", "multilabel": "sigmoid", "regression": None}[
        case.task
    ]
    outputs = keras.layers.Dense(case.outputs, activation=activation, name="new_head")(
        model.layers[-1].input
    )
    return keras.Model(model.input, outputs, name=model.name)


def keras_x(case: Case, x):
    """Plain Keras takes strings as an object array, not numpy's ``str_`` (KerasHub takes both)."""
    if not is_keras_hub(case) and isinstance(x, np.ndarray) and x.dtype.kind == "U":
        return x.astype(object)
    return x


def head_is_logits(case: Case, model) -> bool:
    if is_keras_hub(case):
        return True
    return model.layers[-1].activation in (None, keras.activations.linear)


def compile_for(case: Case, model, optimizer) -> None:
    if case.task == "classification":
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=head_is_logits(case, model))
    elif case.task == "multilabel":
        loss = keras.losses.BinaryCrossentropy()
    else:
        loss = keras.losses.MeanSquaredError()
    model.compile(optimizer=optimizer, loss=loss)


def family_optimizer(case: Case):
    return keras.optimizers.AdamW(5e-5) if is_keras_hub(case) else keras.optimizers.Adam(1e-3)


def run_fit(case: Case, split: FewShotSplit, epochs: int) -> dict:
    model = user_model(case, split)
    compile_for(case, model, family_optimizer(case))
    start = time.perf_counter()
    model.fit(
        keras_x(case, split.x_train), split.y_train, batch_size=BATCH, epochs=epochs, verbose=0
    )
    return {"train_seconds": time.perf_counter() - start, "model": model, "epochs": epochs}


def _walk(layer):
    yield layer
    for sub in getattr(layer, "layers", []):
        yield from _walk(sub)


def run_ref(case: Case, split: FewShotSplit) -> dict:
    model = user_model(case, split)
    if is_keras_hub(case):  # KerasHub's recipe: full fine-tune, Adam(5e-5), 3 epochs
        compile_for(case, model, keras.optimizers.Adam(5e-5))
        start = time.perf_counter()
        model.fit(
            keras_x(case, split.x_train), split.y_train, batch_size=BATCH, epochs=3, verbose=0
        )
        return {"train_seconds": time.perf_counter() - start, "model": model, "epochs": 3}
    new = {model.layers[-1].name, *case.new_layers}
    for layer in model.layers:
        layer.trainable = layer.name in new or not layer.weights
    compile_for(case, model, keras.optimizers.Adam(1e-3))
    start = time.perf_counter()
    model.fit(keras_x(case, split.x_train), split.y_train, batch_size=BATCH, epochs=20, verbose=0)
    model.trainable = True
    for layer in _walk(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # inference mode, as the guide's `training=False`
    compile_for(case, model, keras.optimizers.Adam(1e-5))
    model.fit(keras_x(case, split.x_train), split.y_train, batch_size=BATCH, epochs=10, verbose=0)
    return {"train_seconds": time.perf_counter() - start, "model": model, "epochs": 30}


# Frozen-backbone features, shared by the two MiniLM probes: (case, seed or "test", quick).
_FEATURES: dict[tuple, tuple[dict, float]] = {}


def minilm_features(task, texts) -> dict[str, np.ndarray]:
    """Masked mean of ``sequence_output`` and the [CLS] ``pooled_output`` of the frozen backbone."""
    means, pooled = [], []
    for i in range(0, len(texts), 256):
        inputs = task.preprocessor(texts[i : i + 256])
        out = task.backbone.predict(inputs, batch_size=BATCH, verbose=0)
        mask = np.asarray(inputs["padding_mask"], dtype="float32")[..., None]
        means.append((out["sequence_output"] * mask).sum(axis=1) / mask.sum(axis=1))
        pooled.append(out["pooled_output"])
    return {"lp": np.concatenate(means), "lp_cls": np.concatenate(pooled)}


def _cached_features(task: Callable, texts, key: tuple) -> tuple[dict, float]:
    if key not in _FEATURES:
        model = task()
        start = time.perf_counter()
        features = minilm_features(model, texts)
        _FEATURES[key] = (features, time.perf_counter() - start)
    return _FEATURES[key]


def run_probe(case: Case, split: FewShotSplit, method: str, seed: int, quick: bool) -> dict:
    from sklearn.linear_model import LogisticRegression, Ridge

    if is_keras_hub(case):
        task = functools.lru_cache(None)(lambda: case.model(split))  # loaded only if needed
        train, feature_seconds = _cached_features(task, split.x_train, (case.name, seed, quick))
        # A frozen backbone's test features are the same for every seed: computed once.
        test = _cached_features(task, split.x_test, (case.name, "test", quick))[0][method]
        train = train[method]
    else:
        model = case.model(split)
        start = time.perf_counter()
        features = keras.Model(model.input, model.layers[-1].input)
        train = features.predict(keras_x(case, split.x_train), batch_size=256, verbose=0)
        feature_seconds = time.perf_counter() - start
        test = features.predict(keras_x(case, split.x_test), batch_size=256, verbose=0)
    start = time.perf_counter()
    if case.task == "regression":
        clf = Ridge().fit(train, split.y_train)
        outputs = clf.predict(test)
    elif case.task == "multilabel":
        outputs = np.stack(
            [
                LogisticRegression(max_iter=2000)
                .fit(train, split.y_train[:, j])
                .predict_proba(test)[:, 1]
                for j in range(case.outputs)
            ],
            axis=1,
        )
    else:
        clf = LogisticRegression(max_iter=2000).fit(train, split.y_train)
        outputs = np.zeros((len(test), case.outputs), dtype="float64")
        outputs[:, clf.classes_] = clf.predict_proba(test)
    seconds = feature_seconds + time.perf_counter() - start
    return {
        "train_seconds": seconds,
        "outputs": outputs,
        "from_logits": False,
        "feature_seconds": feature_seconds,
    }


def run_kerasft(case: Case, split: FewShotSplit, seed: int) -> dict:
    model = case.model(split)
    start = time.perf_counter()
    result = kerasft.finetune(model, (split.x_train, split.y_train), seed=seed, verbose=0)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    report = result.evaluate((split.x_test, split.y_test))
    detail = {"recipe": str(getattr(getattr(result, "options", None), "recipe", None))}
    try:
        detail["recipe"] = str(result.options.recipe.recipe)
        detail["plan"] = str(result.plan)
    except Exception:  # the plan is a record, not a result: never fail the row for it
        pass
    return {
        "train_seconds": seconds,
        "report": report,
        "eval_seconds": time.perf_counter() - start,
        "detail": detail,
    }


def run_method(case: Case, method: str, split: FewShotSplit, seed: int, quick: bool) -> dict:
    keras.utils.set_random_seed(seed)
    if method == "kerasft":
        out = run_kerasft(case, split, seed)
    elif method in ("lp", "lp_cls"):
        out = run_probe(case, split, method, seed, quick)
    elif method == "ref":
        out = run_ref(case, split)
    else:
        short = method == "fit3"
        out = run_fit(case, split, 3 if short else (10 if is_keras_hub(case) else 30))
    if "report" not in out:
        start = time.perf_counter()
        if "model" in out:
            model = out.pop("model")
            out["outputs"] = model.predict(
                keras_x(case, split.x_test),
                batch_size=BATCH if is_keras_hub(case) else 256,
                verbose=0,
            )
            out["from_logits"] = head_is_logits(case, model)
        outputs = np.asarray(out.pop("outputs"))
        if case.task == "regression":
            outputs = outputs.reshape(len(outputs), -1)
        out["report"] = kerasft.report_from_predictions(
            split.y_test, outputs, task=case.report_task, from_logits=out.pop("from_logits")
        )
        out["eval_seconds"] = time.perf_counter() - start
    return out


def methods_for(case: Case, methods: list[str], quick: bool) -> list[str]:
    keep = [m for m in methods if m != "lp_cls" or is_keras_hub(case)]
    return [m for m in keep if not (quick and m == "fit30")]


# --- rows ----------------------------------------------------------------------------


@functools.lru_cache(None)
def machine() -> dict:
    import keras_hub
    import tensorflow as tf

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = (
            subprocess.run(
                ["git", "describe", "--always", "--dirty"],
                cwd=ROOT,
                text=True,
                capture_output=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "kerasft": kerasft.__version__,
        "commit": commit,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
    }


def make_row(
    case: Case, method: str, seed: int, quick: bool, split: FewShotSplit, out: dict
) -> dict:
    scalars = {k: float(v) for k, v in out["report"].scalars().items() if v is not None}
    accuracy = scalars.get("accuracy") if case.task == "classification" else None
    return {
        "case": case.name,
        "group": case.group,
        "family": case.family,
        "seed": seed,
        "method": method,
        "quick": quick,
        "metric": case.metric,
        "score": 100.0 * scalars[case.metric],
        "accuracy": None if accuracy is None else 100.0 * accuracy,
        "scalars": scalars,
        "train_seconds": round(out["train_seconds"], 2),
        "eval_seconds": round(out.get("eval_seconds", 0.0), 2),
        "epochs": out.get("epochs"),
        "feature_seconds": out.get("feature_seconds") and round(out["feature_seconds"], 2),
        "n_train": len(split.y_train),
        "n_test": len(split.y_test),
        "detail": out.get("detail"),
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "loadavg": round(os.getloadavg()[0], 2),
        "machine": machine(),
    }


def read_rows(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill mid-write
                    pass
    return rows


def append_row(path: str, row: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run(
    cases: list[str], seeds: list[int], methods: list[str], quick: bool, path: str, rerun: bool
) -> None:
    for name in cases:
        case = CASES[name]
        for seed in seeds:
            # Read again before each case-seed: another process may share the file.
            done = {
                (r["case"], r["seed"], r["method"])
                for r in read_rows(path)
                if "error" not in r and r.get("quick") == quick
            }
            todo = [
                m for m in methods_for(case, methods, quick) if rerun or (name, seed, m) not in done
            ]
            if not todo:
                continue
            split = case.load(seed, quick)
            for method in todo:
                try:
                    out = run_method(case, method, split, seed, quick)
                    row = make_row(case, method, seed, quick, split, out)
                    acc = "" if row["accuracy"] is None else f"  acc {row['accuracy']:5.1f}"
                    print(
                        f"{name:<17} seed {seed}  {method:<8} {case.metric} {row['score']:6.2f}"
                        f"{acc}  train {row['train_seconds']:7.1f} s  "
                        f"(n={row['n_train']}/{row['n_test']})",
                        flush=True,
                    )
                except Exception as e:  # noqa: BLE001  a failed row is recorded, the run goes on
                    row = {
                        "case": name,
                        "seed": seed,
                        "method": method,
                        "quick": quick,
                        "error": f"{type(e).__name__}: {e}"[:2000],
                        "machine": machine(),
                        "time": datetime.datetime.now().isoformat(timespec="seconds"),
                    }
                    print(
                        f"{name:<17} seed {seed}  {method:<8} FAILED {row['error'][:300]}",
                        flush=True,
                    )
                append_row(path, row)
                keras.backend.clear_session()
                gc.collect()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="cases: " + ", ".join(f"{c.name} ({c.group})" for c in CASES.values()),
    )
    parser.add_argument(
        "--cases", nargs="+", choices=list(CASES), default=list(CASES), metavar="CASE"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="methods to run; rows already in the results file are skipped",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=METHODS,
        help="run only these methods and re-run them even when stored "
        "(e.g. --only kerasft against stored baselines)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one seed (the first of --seeds), small test sets, no fit30; "
        f"results go to {os.path.relpath(QUICK_RESULTS, ROOT)}",
    )
    parser.add_argument(
        "--results", help=f"JSON-lines file. Defaults to {os.path.relpath(RESULTS, ROOT)}"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="render docs/matrix.md and docs/matrix.png from the results; run nothing",
    )
    parser.add_argument("--doc", default=os.path.join(ROOT, "docs", "matrix.md"))
    args = parser.parse_args(argv)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # retracing warnings: one model per row is the point
    path = args.results or (QUICK_RESULTS if args.quick else RESULTS)
    if args.report:
        rows = [r for r in read_rows(path) if r.get("quick", False) == args.quick]
        matrix_report.write(
            rows, list(CASES.values()), args.doc, results_path=os.path.relpath(path, ROOT)
        )
        print(f"wrote {args.doc} and {os.path.splitext(args.doc)[0]}.png from {len(rows)} rows")
        return
    seeds = args.seeds[:1] if args.quick else args.seeds
    methods = args.only or args.methods
    print(
        f"results: {path}; cases {' '.join(args.cases)}; seeds {seeds}; methods {methods}",
        flush=True,
    )
    run(args.cases, seeds, list(methods), args.quick, path, rerun=bool(args.only))


if __name__ == "__main__":
    main()
