# %% [markdown]
# # kerasft quickstart: fine-tune a pretrained CNN on 100 labelled digits
#
# `kerasft.finetune(model, data)` fine-tunes a pretrained Keras classifier in one call:
# it trains the head on the frozen body, then unfreezes the body and trains everything
# at a lower learning rate with warmup and cosine decay (LP-FT), and returns the best
# weights seen on validation.
#
# The model is the small CNN shipped with kerasft (`saved_models/mnist_cnn.keras`),
# pretrained on MNIST. The task is scikit-learn's 8x8 handwritten digits, put in MNIST's
# 28x28 frame, with only 10 labelled images per class.
#
# Also a script: `python examples/quickstart.py`.

# %%
import numpy as np
import tensorflow as tf

import kerasft
from kerasft import datasets
from kerasft.cli import default_model_path

split = datasets.digits_few_shot(shots=10, seed=0)
print(f"{len(split.x_train)} labelled digits to learn from, {len(split.x_test)} to test on")
model = kerasft.load_model(default_model_path())
before = model.predict(split.x_test, verbose=0).argmax(-1)
print(f"pretrained on MNIST, not fine-tuned: test accuracy {np.mean(before == split.y_test):.3f}")

# %% [markdown]
# ## Fine-tune
#
# The head has 10 units and the task has 10 classes, so the pretrained head is kept.
# A fifth of the 100 images is held out for validation (stratified, seeded).

# %%
result = kerasft.finetune(
    model, (split.x_train, split.y_train), head_epochs=5, epochs=10, verbose=0
)
print(result.summary())
test = result.evaluate((split.x_test, split.y_test))
print(f"fine-tuned: test accuracy {test['accuracy']:.3f}")

# %% [markdown]
# ## Training curves and confusion matrix
#
# Epochs are numbered across the two phases; the dotted line marks where the body was
# unfrozen.

# %%
# notebook: from IPython.display import Image, display

history_png = kerasft.plot_history(result, "quickstart_history.png")
probabilities = result.model.predict(split.x_test, verbose=0)
confusion_png = kerasft.plot_confusion_matrix(
    split.y_test, probabilities, [str(i) for i in range(10)], "quickstart_confusion.png"
)
print("wrote", history_png, "and", confusion_png)
# notebook: display(Image(filename=history_png), Image(filename=confusion_png))

# %% [markdown]
# ## Export for serving
#
# A SavedModel that takes raw 0..255 pixels and returns class probabilities, the top
# class and its name. `saved_model_cli show --all --dir quickstart_export` lists its
# signatures.

# %%
path = result.export("quickstart_export", class_names=[str(i) for i in range(10)], overwrite=True)
reloaded = tf.saved_model.load(path)  # keep a reference while calling its functions
served = reloaded.serve(split.x_test[:8])
print("served:", [name.decode() for name in served["class_name"].numpy()])
print("labels:", [str(label) for label in split.y_test[:8]])
