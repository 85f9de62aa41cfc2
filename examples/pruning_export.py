# %% [markdown]
# # Prune while fine-tuning, then export a small model
#
# `kerasft.finetune(..., prune=...)` prunes weights by magnitude during the last phase:
# the fraction of zeros ramps up to `target_sparsity`, and the stripped model (plain
# Keras layers, zeros in the kernels) comes back. `kerasft.pruning.sparsity_report`
# measures the result. Zeros compress: the exported files shrink under gzip, and
# dynamic-range quantization stores the weights as int8 on top.
#
# Also a script: `python examples/pruning_export.py`.

# %%
import gzip
import os

import numpy as np
import tensorflow as tf

import kerasft
from kerasft import datasets
from kerasft.cli import default_model_path
from kerasft.pruning import sparsity_report

split = datasets.digits_few_shot(shots=30, seed=0)
model = kerasft.load_model(default_model_path())

# %% [markdown]
# ## Fine-tune and prune to 80% zeros
#
# The large layers hold almost all the weights (`fc` alone has 401,408); the tiny first
# convolution and the 10-way head are left dense, since every one of their few weights
# counts.

# %%
result = kerasft.finetune(
    model,
    (split.x_train, split.y_train),
    head_epochs=3,
    epochs=10,
    verbose=0,
    prune=dict(target_sparsity=0.8, layers=["block2_conv1", "block2_conv2", "fc"]),
)
print(sparsity_report(result.model))
accuracy = result.evaluate((split.x_test, split.y_test))["accuracy"]
print(f"pruned and fine-tuned: test accuracy {accuracy:.3f}")

# %% [markdown]
# ## Export: SavedModel, TFLite float, TFLite with int8 weights

# %%
names = [str(i) for i in range(10)]
saved = result.export("pruned_export", class_names=names, overwrite=True)
files = {
    "tflite float": result.export(
        "pruned.tflite", format="tflite", class_names=names, overwrite=True
    ),
    "tflite dynamic-range int8": result.export(
        "pruned_int8.tflite", format="tflite", class_names=names, quantize="dynamic", overwrite=True
    ),
}
for label, file in files.items():
    with open(file, "rb") as f:
        raw = f.read()
    print(
        f"{label:>26}: {len(raw) / 1024:7.0f} KiB, "
        f"gzipped {len(gzip.compress(raw)) / 1024:6.0f} KiB"
    )

# %% [markdown]
# ## The quantized file, run by the TFLite interpreter

# %%
interpreter = tf.lite.Interpreter(model_path=files["tflite dynamic-range int8"])
serve = interpreter.get_signature_runner("serve")
outputs = serve(image=split.x_test.astype("float32"))
print(f"TFLite int8: test accuracy {np.mean(outputs['class_id'] == split.y_test):.3f}")
print("SavedModel at", saved, "with", sorted(os.listdir(saved)))
