# %% [markdown]
# # Fine-tune on your own image folder
#
# kerasft reads labelled images from a folder with one sub-folder per class
# (`my_images/cat/1.png`, `my_images/dog/2.jpg`, ...), or with `train/` and `test/`
# splits of such folders, which is also the layout of `tfds.ImageFolder`. Everything
# here is offline.
#
# For a self-contained example, the folder is made from scikit-learn's digits 0, 1 and
# 2; point `ROOT` at your own images instead. From the shell, the same is
# `kerasft finetune saved_models/mnist_cnn.keras --data my_images`.
#
# Also a script: `python examples/image_folder.py`.

# %%
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

import kerasft
from kerasft import datasets
from kerasft.cli import default_model_path

ROOT = "my_images"
CLASSES = ["zero", "one", "two"]
x, y = datasets.load_digits()
rng = np.random.default_rng(0)
for split, per_class in (("train", 20), ("test", 40)):
    for label, name in enumerate(CLASSES):
        os.makedirs(os.path.join(ROOT, split, name), exist_ok=True)
        for i in rng.choice(np.flatnonzero(y == label), per_class, replace=False):
            Image.fromarray(x[i, ..., 0].astype("uint8")).save(
                os.path.join(ROOT, split, name, f"{i}.png")
            )
print(sorted(os.listdir(os.path.join(ROOT, "train"))))

# %% [markdown]
# ## As arrays
#
# `load_image_folder` returns `(x, y, class_names)`, resized to `image_size` and
# converted to the model's channels; class ids follow the sorted folder names. Errors
# name the file or folder at fault (an empty class, an unreadable image, mixed sizes).

# %%
model = kerasft.load_model(default_model_path())
x_train, y_train, class_names = kerasft.load_image_folder(
    os.path.join(ROOT, "train"), image_size=(28, 28), color_mode="grayscale"
)
x_test, y_test, _ = kerasft.load_image_folder(
    os.path.join(ROOT, "test"),
    image_size=(28, 28),
    color_mode="grayscale",
    class_names=class_names,
)
print(class_names, x_train.shape, x_test.shape)
result = kerasft.finetune(
    model, (x_train, y_train), head_epochs=5, epochs=5, lr=3e-3, batch_size=16, verbose=0
)
print(
    f"test accuracy {result.evaluate((x_test, y_test))['accuracy']:.3f} "
    f"(new {len(class_names)}-way head: {result.head_rebuilt})"
)

# %% [markdown]
# ## Through tensorflow-datasets
#
# `finetune` also takes a TFDS builder (its `train` split) or a split as a dataset.
# `tfds.ImageFolder` reads the split folder directly; `kerasft.image_folder_to_tfds`
# stores it as a prepared TFDS dataset, which `tfds.load(name, data_dir=...)` then
# loads offline, like any catalogue dataset.

# %%
builder = kerasft.image_folder_to_tfds(ROOT, "tfds_data", name="my_images", overwrite=True)
print(builder.info.splits, builder.info.features["label"].names)
result = kerasft.finetune(
    model, builder, head_epochs=5, epochs=5, lr=3e-3, batch_size=16, verbose=0
)
test = tfds.load("my_images", data_dir="tfds_data", split="test", as_supervised=True)
print(f"test accuracy {result.evaluate(test)['accuracy']:.3f}")

# %% [markdown]
# ## Confusion matrix on the test images

# %%
# notebook: from IPython.display import Image as PNG

confusion_png = kerasft.plot_confusion_matrix(
    y_test, result.model.predict(x_test, verbose=0), class_names, "image_folder_confusion.png"
)
# notebook: PNG(filename=confusion_png)
