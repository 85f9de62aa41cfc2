"""Speed of ``kerasft.finetune`` against the Keras transfer-learning recipe written by hand.

One process, one run. The backbone is a MobileNetV2 (alpha 0.35, 96 px) pretrained in
this run on MNIST digits 0-4 (2 epochs, excluded from every timing; no weights download
here); the job fine-tunes it on 2,000 other real images, MNIST digits 5-9 (1,600
training, 400 validation), 5 epochs training the head on the frozen body, then 3 epochs
with (a) the whole body unfrozen and (b) its top 30% unfrozen, two ways:

- hand: the Keras guide's recipe with ``model.fit`` (freeze base, fit head; unfreeze,
  recompile at a tenth of the rate, fit), BatchNormalization kept frozen;
- kerasft: ``kerasft.finetune`` with the same split, rates, batches and epochs (it
  caches the frozen body's features where that is exact, and decays the fine-tuning
  rate along a cosine).

Each comparison runs twice (``--rounds``), the two recipes in alternating order, and
the median ratio is reported: the machine is shared and its load drifts.

Also printed: kerasft's per-step overhead against a bare ``model.fit`` with identical
settings (caching off; the two alternate every epoch, median of per-step times), and the
training GFLOP/s achieved against a float32 matmul peak measured in the same run.

Run: ``python benchmarks/speed.py`` (about 5 minutes on 2 shared CPU cores).
"""

from __future__ import annotations

import argparse
import time

import kerasft  # noqa: F401  (before TensorFlow: oneDNN off)

# isort: split
import keras
import numpy as np
import tensorflow as tf

from kerasft import datasets

N, SIZE, BATCH, HEAD_EPOCHS, EPOCHS, LR = 2000, 96, 32, 5, 3, 1e-3
PRETRAIN_EPOCHS = 2
OVERHEAD_EPOCHS, OVERHEAD_N = 13, 800
ROUNDS = 2


def to_rgb96(x: np.ndarray) -> np.ndarray:
    """MNIST-framed 28x28 digits in [0, 255] -> 96x96 RGB in [-1, 1] (MobileNetV2's range)."""
    out = []
    for i in range(0, len(x), 500):
        out.append(tf.image.resize(x[i : i + 500], (SIZE, SIZE)).numpy())
    x = np.concatenate(out) / 127.5 - 1.0
    return np.repeat(x, 3, axis=-1).astype("float32")


def load_tasks():
    """Pretraining task (digits 0-4) and target task (digits 5-9, relabelled 0-4)."""
    (xa, ya), (xb, yb) = datasets.load_mnist("5k")
    x, y = np.concatenate([xa, xb]), np.concatenate([ya, yb])
    rng = np.random.default_rng(0)
    source, target = np.flatnonzero(y < 5), rng.permutation(np.flatnonzero(y >= 5))[:N]
    return (to_rgb96(x[source]), y[source]), (to_rgb96(x[target]), y[target] - 5)


def backbone():
    return keras.applications.MobileNetV2(
        weights=None, alpha=0.35, input_shape=(SIZE, SIZE, 3), include_top=False
    )


def pretrain(x, y) -> list[np.ndarray]:
    """Train the whole network briefly on the source task; return the backbone's weights."""
    keras.utils.set_random_seed(1)
    base = backbone()
    for lyr in base.layers:
        if isinstance(lyr, keras.layers.BatchNormalization):
            # Keras's MobileNetV2 uses momentum 0.999: the moving statistics, which the
            # frozen backbone computes with, would barely move in 150 steps.
            lyr.momentum = 0.9
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.GlobalAveragePooling2D()(base(inputs))
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(h))
    model.compile(
        keras.optimizers.Adam(LR), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    n_val = 400
    model.fit(x[n_val:], y[n_val:], batch_size=BATCH, epochs=PRETRAIN_EPOCHS, verbose=0)
    acc = model.evaluate(x[:n_val], y[:n_val], batch_size=128, verbose=0)[1]
    print(
        f"pretrained on digits 0-4 ({len(x) - n_val} images, {PRETRAIN_EPOCHS} epochs): "
        f"held-out accuracy {acc:.3f} (inference mode)"
    )
    return base.get_weights()


def build(weights, seed=0):
    keras.utils.set_random_seed(seed)
    base = backbone()
    base.set_weights(weights)
    inputs = keras.Input((SIZE, SIZE, 3))
    h = base(inputs, training=False)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(5, activation="softmax", name="head")(h)), base


def split(x, y):
    n_val = len(x) // 5
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])


def freeze_below(base, unfreeze_fraction):
    """The guide's unfreezing, with kerasft's count: top fraction of the weighted layers."""
    base.trainable = True
    if unfreeze_fraction < 1:
        weighted = [
            lyr
            for lyr in base.layers
            if lyr.weights and not isinstance(lyr, keras.layers.BatchNormalization)
        ]
        first = base.layers.index(weighted[-int(round(unfreeze_fraction * len(weighted)))])
        for lyr in base.layers[:first]:
            lyr.trainable = False
    for lyr in base.layers:
        if isinstance(lyr, keras.layers.BatchNormalization):
            lyr.trainable = False


def hand_written(weights, x, y, unfreeze_fraction):
    """The Keras transfer-learning guide's recipe."""
    (xt, yt), (xv, yv) = split(x, y)
    model, base = build(weights)
    train = (
        tf.data.Dataset.from_tensor_slices((xt, yt))
        .shuffle(len(xt), seed=0)
        .batch(BATCH)
        .prefetch(-1)
    )
    val = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(BATCH).prefetch(-1)
    base.trainable = False
    model.compile(
        keras.optimizers.Adam(LR), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    t0 = time.perf_counter()
    head = model.fit(train, validation_data=val, epochs=HEAD_EPOCHS, verbose=0)
    t1 = time.perf_counter()
    freeze_below(base, unfreeze_fraction)
    model.compile(
        keras.optimizers.Adam(LR / 10), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    hist = model.fit(train, validation_data=val, epochs=EPOCHS, verbose=0)
    t2 = time.perf_counter()
    return {
        "seconds": t2 - t0,
        "head_s": t1 - t0,
        "ft_s": t2 - t1,
        "head_acc": head.history["val_accuracy"][-1],
        "val_acc": hist.history["val_accuracy"][-1],
    }


def with_kerasft(weights, x, y, unfreeze):
    train, val = split(x, y)
    model, _ = build(weights)
    t0 = time.perf_counter()
    r = kerasft.finetune(
        model,
        train,
        validation_data=val,
        head_epochs=HEAD_EPOCHS,
        epochs=EPOCHS,
        lr=LR,
        finetune_lr=LR / 10,
        warmup=0.0,
        unfreeze=unfreeze,
        batch_size=BATCH,
        patience=None,
        verbose=0,
    )
    seconds = time.perf_counter() - t0
    head, ft = r.phases
    feats = [p.feature_seconds for p in r.speed.phases]
    return {
        "seconds": seconds,
        "head_s": head.seconds + feats[0],
        "ft_s": ft.seconds + feats[1],
        "head_acc": head.history["val_accuracy"][-1],
        "val_acc": ft.history["val_accuracy"][-1],
        "speed": r.speed.to_dict(),
    }


def matmul_peak() -> float:
    a = tf.random.normal((2048, 2048))
    f = tf.function(lambda a: tf.matmul(a, a))
    f(a).numpy()
    best = float("inf")
    for _ in range(3):  # best of three: the machine is shared
        t = time.perf_counter()
        for _ in range(5):
            f(a).numpy()
        best = min(best, time.perf_counter() - t)
    return 5 * 2 * 2048**3 / best / 1e9


def train_flops_per_image(model) -> float:
    """Forward FLOPs per image (from TF's profiler), times 3 for forward + backward."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec((1, SIZE, SIZE, 3), tf.float32))
    graph = convert_variables_to_constants_v2(concrete).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph, options=opts)
    return 3.0 * info.total_float_ops


class StepTimer(keras.callbacks.Callback):
    """Wall time between consecutive training-batch ends, per epoch: a step with all around it."""

    def on_train_begin(self, logs=None):
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append([])
        self._last = None  # the gap across validation and epoch ends is not a step

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self._last is not None:
            self.epochs[-1].append(now - self._last)
        self._last = now


class BareEpochs(keras.callbacks.Callback):
    """After each epoch of the run it is passed to, one epoch of the bare ``model.fit``."""

    def __init__(self, run_epoch):
        super().__init__()
        self.run_epoch = run_epoch

    def on_train_begin(self, logs=None):
        self.medians = []

    def on_epoch_end(self, epoch, logs=None):
        self.medians.append(self.run_epoch())


def overhead(weights, x, y, epochs=OVERHEAD_EPOCHS):
    """Per-step time of finetune over a bare model.fit, alternating every epoch.

    Same model, split, batch size, optimizer and validation; kerasft with
    ``recipe="full"`` and caching off, so both run the very same training steps. The
    machine's load drifts over seconds, so the two alternate every epoch (about two
    seconds): one ``finetune`` call runs ``epochs`` epochs, and after each of them a
    callback runs one epoch of the bare model's ``fit`` (compiled and traced before).
    Each kerasft epoch's median step time is divided by the mean of the bare epochs just
    before and after it; the first kerasft epoch (tracing) is left out.
    """
    (xt, yt), (xv, yv) = split(x[:OVERHEAD_N], y[:OVERHEAD_N])
    model, base = build(weights)
    freeze_below(base, 1.0)
    train = (
        tf.data.Dataset.from_tensor_slices((xt, yt))
        .shuffle(len(xt), seed=0)
        .batch(BATCH)
        .prefetch(-1)
    )
    val = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(BATCH).prefetch(-1)
    model.compile(
        keras.optimizers.Adam(LR), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )

    def bare_epoch():
        timer = StepTimer()
        model.fit(train, validation_data=val, epochs=1, verbose=0, callbacks=[timer])
        return float(np.median(timer.epochs[0]))

    bare_epoch()  # trace
    timer, bare = StepTimer(), BareEpochs(bare_epoch)
    kerasft.finetune(
        build(weights)[0],
        (xt, yt),
        validation_data=(xv, yv),
        recipe="full",
        epochs=epochs,
        lr=LR,
        warmup=0.0,
        batch_size=BATCH,
        patience=None,
        cache_features=False,
        verbose=0,
        callbacks=[timer, bare],
    )
    kft = [float(np.median(steps)) for steps in timer.epochs]
    ratios = [kft[e] / ((bare.medians[e - 1] + bare.medians[e]) / 2) for e in range(1, epochs)]
    return bare.medians, kft, ratios, model


def report(hand, kft, n_train):
    for name, r in (("hand-written", hand), ("kerasft", kft)):
        print(
            f"{name:<13}: {r['seconds']:6.1f} s  val acc head {r['head_acc']:.3f} -> final "
            f"{r['val_acc']:.3f}  "
            f"head {HEAD_EPOCHS * n_train / r['head_s']:6.0f} img/s  "
            f"finetune {EPOCHS * n_train / r['ft_s']:5.0f} img/s"
        )
    print(f"ratio kerasft/hand-written: {kft['seconds'] / hand['seconds']:.2f}")
    print(
        "kerasft features per phase: "
        + "; ".join(
            f"{'cached' if p['cached'] else 'not cached'}"
            + (f" ({p['feature_source']}, {p['feature_seconds']:.1f}s)" if p["cached"] else "")
            for p in kft["speed"]["phases"]
        )
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overhead-epochs", type=int, default=OVERHEAD_EPOCHS)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="repetitions of each comparison")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    (xs, ys), (x, y) = load_tasks()
    print(
        f"data: pretraining on {len(xs)} MNIST digits 0-4, fine-tuning on {len(x)} MNIST "
        f"digits 5-9 (upscaled to {SIZE}px RGB; {int(0.8 * len(x))} train / "
        f"{len(x) // 5} validation)"
    )
    peak = matmul_peak()
    print(f"measured fp32 matmul peak: {peak:.0f} GFLOP/s")
    weights = pretrain(xs, ys)
    n_train = len(x) - len(x) // 5
    rows = []
    # The order alternates (ABBA) so that neither recipe always runs first: the machine
    # is shared and its load drifts.
    configs = (("all unfrozen", 1.0, "all"), ("top 30% unfrozen", 0.3, 0.3))
    for r in range(args.rounds):
        for c, (label, frac, unfreeze) in enumerate(configs):
            order = ("hand", "kerasft") if (r + c) % 2 == 0 else ("kerasft", "hand")
            runs = {}
            for who in order:
                runs[who] = (
                    hand_written(weights, x, y, frac)
                    if who == "hand"
                    else with_kerasft(weights, x, y, unfreeze)
                )
            hand, kft = runs["hand"], runs["kerasft"]
            rows.append((label, hand, kft))
            print(f"\n== round {r + 1}: phase 2 with {label} (run order: {', '.join(order)}) ==")
            report(hand, kft, n_train)
    print("\n== summary: kerasft/hand-written wall-time ratio per round (median) ==")
    for label, _, _ in configs:
        ratios = [k["seconds"] / h["seconds"] for lab, h, k in rows if lab == label]
        print(
            f"{label:<17}: {' '.join(f'{q:.2f}' for q in ratios)}  median "
            f"{float(np.median(ratios)):.2f}"
        )
    bare, kft_steps, ratios, model = overhead(weights, x, y, args.overhead_epochs)
    flops = train_flops_per_image(model)
    peak = max(peak, matmul_peak())
    print("\n== per-step overhead (full fine-tuning, caching off, alternating every epoch) ==")
    print("kerasft.finetune ms/step, per epoch: " + " ".join(f"{1e3 * s:.0f}" for s in kft_steps))
    print("bare model.fit ms/step, per epoch  : " + " ".join(f"{1e3 * s:.0f}" for s in bare))
    print(
        "ratios (epochs 2+): "
        + " ".join(f"{r:.3f}" for r in ratios)
        + f"; median overhead {100 * (float(np.median(ratios)) - 1):+.1f}%"
    )
    step = float(np.median(bare))
    gflops = BATCH * flops / step / 1e9
    print(
        f"training compute: {flops / 1e6:.0f} MFLOP/image (forward x3); "
        f"achieved {gflops:.1f} GFLOP/s = {100 * gflops / peak:.1f}% of the measured matmul "
        f"peak (best of two, {peak:.0f} GFLOP/s)"
    )
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s")
    return rows, ratios, flops, peak


if __name__ == "__main__":
    main()
