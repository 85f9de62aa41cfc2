"""Speed of ``kerasft.finetune`` against the Keras transfer-learning recipe written by hand.

One process, one run. The job: MobileNetV2 (alpha 0.35, 96 px, random init standing in
for a pretrained backbone: no weights download here) on 2,000 real images, sklearn's
digits upscaled to 96 px RGB; 5 epochs training the head on the frozen body, then 3
epochs with (a) the whole body unfrozen and (b) its top 30% unfrozen.

- hand: the guide's recipe with ``model.fit`` (freeze base, fit head; unfreeze,
  recompile at a low rate, fit), with the same rates, batches and epochs;
- kerasft: ``kerasft.finetune`` with the same settings (it caches the frozen body's
  features where that is exact).

Also printed: kerasft's per-step overhead against a bare ``model.fit`` with identical
settings (cache off), and the training GFLOP/s achieved against a float32 matmul peak
measured in the same run.

Run: ``python benchmarks/speed.py`` (about 6-9 minutes on 2 CPU cores).
"""

from __future__ import annotations

import time

import kerasft  # noqa: F401  (before TensorFlow: oneDNN off)

# isort: split
import keras
import numpy as np
import tensorflow as tf

N, SIZE, BATCH, HEAD_EPOCHS, EPOCHS, LR = 2000, 96, 32, 5, 3, 1e-3


def load_images():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images[..., None].astype("float32") / 16.0
    x = tf.image.resize(x, (SIZE, SIZE)).numpy()
    x = np.repeat(x, 3, axis=-1) * 2.0 - 1.0
    y = bunch.target.astype("int64")
    reps = int(np.ceil(N / len(x)))
    flip = x[:, :, ::-1]  # real images again, mirrored, to reach N
    x = np.concatenate([x, flip][:reps])[:N]
    y = np.concatenate([y] * reps)[:N]
    rng = np.random.default_rng(0)
    order = rng.permutation(N)
    return x[order], y[order]


def build(seed=0):
    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(SIZE, SIZE, 3),
                                          include_top=False)
    inputs = keras.Input((SIZE, SIZE, 3))
    h = base(inputs, training=False)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="head")(h)), base


def split(x, y):
    n_val = len(x) // 5
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])


def hand_written(x, y, unfreeze_fraction):
    """The Keras transfer-learning guide's recipe."""
    (xt, yt), (xv, yv) = split(x, y)
    model, base = build()
    train = tf.data.Dataset.from_tensor_slices((xt, yt)).shuffle(len(xt), seed=0).batch(BATCH).prefetch(-1)
    val = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(BATCH).prefetch(-1)
    base.trainable = False
    model.compile(keras.optimizers.Adam(LR), "sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(train, validation_data=val, epochs=HEAD_EPOCHS, verbose=0)
    t1 = time.perf_counter()
    base.trainable = True
    if unfreeze_fraction < 1:
        weighted = [lyr for lyr in base.layers if lyr.weights and not isinstance(lyr, keras.layers.BatchNormalization)]
        first = base.layers.index(weighted[-int(round(unfreeze_fraction * len(weighted)))])
        for lyr in base.layers[:first]:
            lyr.trainable = False
    for lyr in base.layers:
        if isinstance(lyr, keras.layers.BatchNormalization):
            lyr.trainable = False
    model.compile(keras.optimizers.Adam(LR / 10), "sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(train, validation_data=val, epochs=EPOCHS, verbose=0)
    t2 = time.perf_counter()
    return {"seconds": t2 - t0, "head_s": t1 - t0, "ft_s": t2 - t1, "val_acc": hist.history["val_accuracy"][-1]}


def with_kerasft(x, y, unfreeze, **kwargs):
    model, _ = build()
    t0 = time.perf_counter()
    r = kerasft.finetune(model, (x, y), head_epochs=HEAD_EPOCHS, epochs=EPOCHS, lr=LR, finetune_lr=LR / 10,
                         warmup=0.0, unfreeze=unfreeze, batch_size=BATCH, patience=None, verbose=0, **kwargs)
    seconds = time.perf_counter() - t0
    head, ft = r.phases
    return {"seconds": seconds, "head_s": head.seconds, "ft_s": ft.seconds,
            "val_acc": ft.history["val_accuracy"][-1], "speed": r.extras["speed"]}


def matmul_peak() -> float:
    a = tf.random.normal((2048, 2048))
    f = tf.function(lambda a: tf.matmul(a, a))
    f(a).numpy()
    t = time.perf_counter()
    for _ in range(10):
        f(a).numpy()
    return 10 * 2 * 2048**3 / (time.perf_counter() - t) / 1e9


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


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._t)


def overhead(x, y, epochs=3):
    """Steady epochs (after the first, which traces) of finetune vs a bare model.fit.

    Same model, data split, batch size, optimizer and validation; kerasft with
    ``recipe="full"`` and caching off, so both run the very same training steps.
    """
    (xt, yt), (xv, yv) = split(x, y)
    model, _ = build()
    train = tf.data.Dataset.from_tensor_slices((xt, yt)).shuffle(len(xt), seed=0).batch(BATCH).prefetch(-1)
    val = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(BATCH).prefetch(-1)
    for lyr in model.layers[1].layers:
        if isinstance(lyr, keras.layers.BatchNormalization):
            lyr.trainable = False
    model.compile(keras.optimizers.Adam(LR), "sparse_categorical_crossentropy", metrics=["accuracy"])
    bare = EpochTimer()
    model.fit(train, validation_data=val, epochs=epochs, verbose=0, callbacks=[bare])
    model2, _ = build()
    timer = EpochTimer()
    kerasft.finetune(model2, (x, y), recipe="full", epochs=epochs, lr=LR, warmup=0.0, batch_size=BATCH,
                     patience=None, cache_features=False, verbose=0, callbacks=[timer])
    return float(np.mean(bare.times[1:])), float(np.mean(timer.times[1:])), model, len(xt)


def main():
    x, y = load_images()
    print(f"data: {len(x)} real digit images (sklearn digits, upscaled to {SIZE}px RGB, + mirrored copies)")
    peak = matmul_peak()
    print(f"measured fp32 matmul peak: {peak:.0f} GFLOP/s")
    rows = []
    for label, frac, unfreeze in (("all unfrozen", 1.0, "all"), ("top 30% unfrozen", 0.3, 0.3)):
        hand = hand_written(x, y, frac)
        kft = with_kerasft(x, y, unfreeze)
        rows.append((label, hand, kft))
        n_train = int(0.8 * len(x))
        print(f"\n== phase 2 with {label} ==")
        print(f"hand-written : {hand['seconds']:7.1f} s  val acc {hand['val_acc']:.3f}  "
              f"head {HEAD_EPOCHS * n_train / hand['head_s']:6.0f} img/s  finetune {EPOCHS * n_train / hand['ft_s']:6.0f} img/s")
        print(f"kerasft      : {kft['seconds']:7.1f} s  val acc {kft['val_acc']:.3f}  "
              f"head {HEAD_EPOCHS * n_train / kft['head_s']:6.0f} img/s  finetune {EPOCHS * n_train / kft['ft_s']:6.0f} img/s")
        print(f"ratio kerasft/hand-written: {kft['seconds'] / hand['seconds']:.2f}")
        print(f"kerasft caching: {[(p['cached'], round(p['feature_seconds'], 1)) for p in kft['speed']['phases']]}")
    bare, kft_epoch, model, n_train = overhead(x, y)
    flops = train_flops_per_image(model)
    steps = np.ceil(n_train / BATCH)
    print("\n== per-step overhead (full fine-tuning, caching off, steady epochs) ==")
    print(f"bare model.fit: {bare / steps * 1e3:.1f} ms/step; kerasft.finetune: {kft_epoch / steps * 1e3:.1f} ms/step; "
          f"overhead {100 * (kft_epoch / bare - 1):+.1f}%")
    gflops = n_train * flops / bare / 1e9
    print(f"training compute: {flops / 1e6:.0f} MFLOP/image (forward x3); achieved {gflops:.1f} GFLOP/s "
          f"= {100 * gflops / peak:.1f}% of the measured matmul peak (epoch time includes validation)")
    return rows, bare, kft_epoch, flops, peak


if __name__ == "__main__":
    main()
