"""Labelled images from local folders, offline: as numpy arrays, or through tensorflow-datasets.

A *class folder* holds one sub-folder per class (`root/cat/*.png`, `root/dog/*.png`); a
*split folder* holds one class folder per split (`root/train/cat/*.png`, the layout of
`tfds.ImageFolder`). `load_image_folder` reads a class folder into arrays that feed a
Keras model directly, with errors that name the offending file or folder.
`load_tfds_folder` reads a split folder with `tfds.ImageFolder`, or a dataset prepared by
TFDS with `tfds.builder_from_directory`, and `image_folder_to_tfds` prepares such a
dataset from a split folder, so that `tfds.load(name, data_dir=...)` works offline.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from kerasft._fileio import atomic_directory, make_partial_directory

__all__ = ["load_image_folder", "load_tfds_folder", "image_folder_to_tfds", "IMAGE_EXTENSIONS"]

# The formats Keras's image_dataset_from_directory reads.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
COLOR_MODES = ("auto", "grayscale", "rgb")
# tfds.ImageFolder only lists these; other images would be skipped silently.
_TFDS_EXTENSIONS = (".jpg", ".jpeg", ".png")
_GRAY_MODES = ("1", "L", "LA", "I;16", "I;16B", "I;16L", "La")


def load_image_folder(
    path: str | os.PathLike,
    *,
    image_size: tuple[int, int] | None = None,
    color_mode: str = "auto",
    class_names: Sequence[str] | None = None,
    follow_symlinks: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a folder with one sub-folder of images per class into arrays.

    Class ids follow the sorted sub-folder names (or `class_names`). Images are files
    ending in `.bmp`, `.gif`, `.jpeg`, `.jpg` or `.png` directly inside a class folder,
    read in sorted order; hidden files and other files are ignored. Images are decoded
    with Pillow like `keras.utils.load_img`: converted to the colour mode (alpha is
    dropped; 16-bit grayscale is scaled to `0..255`), then resized with bilinear
    interpolation when `image_size` is given.

    Example:

    ```python
    x, y, class_names = load_image_folder("data/digits/train", image_size=(28, 28),
                                          color_mode="grayscale")
    x.shape, x.dtype, y.dtype  # (n, 28, 28, 1), float32, int64
    ```

    Args:
        path: folder with one sub-folder per class.
        image_size: `(height, width)` to resize every image to, or `None` to keep the
            size, which must then be the same for all images. Defaults to `None`.
        color_mode: `"grayscale"` (1 channel), `"rgb"` (3 channels), or `"auto"`: 1
            channel when every image is grayscale, 3 otherwise. Defaults to `"auto"`.
        class_names: class names in class-id order, to fix the ids (e.g. the same for a
            train and a test folder); every sub-folder must be one of them, and a name
            without a sub-folder simply has no images. Each must be a plain folder name
            (no `/`, `.` or `..`). Defaults to `None` (sorted sub-folder names).
        follow_symlinks: read class folders and images that are symbolic links to
            places outside `path`; by default they are refused, so that only what is
            under `path` is read. Defaults to `False`.

    Returns:
        `(x, y, class_names)`: `x` is `float32` `(n, height, width, channels)` with
        values in `[0, 255]`, `y` is `int64` `(n,)`, `class_names` a `list[str]`.

    Raises:
        ValueError: if `path` is missing or not a directory, has no class sub-folders,
            a class folder holds no image (named), images differ in size while
            `image_size` is `None` (two files and their sizes are named), an image
            cannot be read (named), or an argument is invalid.
    """
    size = _check_image_size(image_size)
    _check_color_mode(color_mode)
    path = os.fspath(path)
    names, files_per_class = _scan_class_folder(path, class_names, follow_symlinks=follow_symlinks)
    files = [f for files in files_per_class for f in files]
    labels = np.concatenate(
        [np.full(len(files), i, dtype="int64") for i, files in enumerate(files_per_class)]
    )
    mode = _resolve_color_mode(files, color_mode)
    if size is None:
        size = _common_size(files, path)
    channels = 1 if mode == "L" else 3
    x = np.empty((len(files), size[0], size[1], channels), dtype="float32")
    for i, file in enumerate(files):
        x[i] = _read_image(file, mode, size)
    return x, labels, names


def load_tfds_folder(
    path: str | os.PathLike,
    split: str = "train",
    *,
    as_supervised: bool = True,
    color_mode: str = "auto",
    shuffle_files: bool = False,
):
    """Load one split of a split folder or of a prepared TFDS dataset, offline.

    `path` is either a split folder (`path/split/class/*.png`), read with
    `tfds.ImageFolder`, or a dataset directory written by TFDS (it holds
    `dataset_info.json`, e.g. what `image_folder_to_tfds` returns as `builder.data_dir`),
    read with `tfds.builder_from_directory`. Images stay `uint8` as TFDS decodes them;
    a Keras model casts them to its input dtype.

    With `as_supervised=True` the elements are `(image, label)` tuples. A prepared
    dataset without TFDS `supervised_keys` (such as one written by
    `tfds.dataset_builders.store_as_tfds_dataset`) is mapped to `(image, label)` from its
    `"image"` and `"label"` features. With `as_supervised=False` the elements are
    feature dicts (`tfds.ImageFolder` adds `"image/filename"`).

    Example:

    ```python
    ds, class_names = load_tfds_folder("data/digits", "train")
    model.fit(ds.batch(32), epochs=3)
    ```

    Args:
        path: a split folder or a prepared TFDS dataset directory.
        split: the split to load, e.g. `"train"` or `"test"` (TFDS slicing such as
            `"train[:80%]"` works for prepared datasets). Defaults to `"train"`.
        as_supervised: yield `(image, label)` tuples rather than dicts. Defaults to
            `True`.
        color_mode: for a split folder: `"grayscale"`, `"rgb"` or `"auto"` (1 channel
            when every image is grayscale). A prepared dataset keeps its stored channels.
            Defaults to `"auto"`.
        shuffle_files: shuffle the order of files (split folder) or shards (prepared
            dataset). Defaults to `False`.

    Returns:
        `(dataset, class_names)`: a `tf.data.Dataset` and the label names in id order.

    Raises:
        ValueError: if `path` is missing, is neither layout, `split` does not exist
            (the existing splits are listed), a class folder is empty, or a prepared
            dataset has no `"image"`/`"label"` features for `as_supervised=True`.
    """
    import tensorflow_datasets as tfds

    _check_color_mode(color_mode)
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        what = "does not exist" if not os.path.exists(path) else "is not a directory"
        raise ValueError(f"Argument `path`: {path!r} {what}.")

    if os.path.isfile(os.path.join(path, "dataset_info.json")):
        builder = tfds.builder_from_directory(path)
        base_split = re.split(r"[\[+]", split, maxsplit=1)[0]
        if base_split not in builder.info.splits:
            raise ValueError(
                f"No split {split!r} in the dataset at {path!r}. "
                f"Existing splits are: {sorted(builder.info.splits)}"
            )
        label = builder.info.features["label"] if "label" in builder.info.features else None
        names = list(label.names) if label is not None and hasattr(label, "names") else []
        if as_supervised and not builder.info.supervised_keys:
            features = sorted(builder.info.features)
            if "image" not in features or "label" not in features:
                raise ValueError(
                    f"The dataset at {path!r} has no supervised keys and no 'image' and "
                    f"'label' features to pair (features: {features}). Pass "
                    "as_supervised=False to get feature dicts."
                )
            ds = builder.as_dataset(split=split, shuffle_files=shuffle_files)
            return ds.map(lambda ex: (ex["image"], ex["label"])), names
        ds = builder.as_dataset(
            split=split, shuffle_files=shuffle_files, as_supervised=as_supervised
        )
        return ds, names

    splits = _split_folders(path)
    if split not in splits:
        raise ValueError(
            f"No split {split!r} in the image folder {path!r}. Existing splits are: "
            f"{sorted(splits)}. HINT: the layout is path/split/class/image.png."
        )
    files: list[str] = []
    for name in splits:
        _, per_class = _scan_class_folder(os.path.join(path, name), None, _TFDS_EXTENSIONS)
        files.extend(f for class_files in per_class for f in class_files)
    channels = 1 if _resolve_color_mode(files, color_mode) == "L" else 3
    builder = tfds.ImageFolder(path, shape=(None, None, channels))
    ds = builder.as_dataset(split=split, shuffle_files=shuffle_files, as_supervised=as_supervised)
    return ds, list(builder.info.features["label"].names)


def image_folder_to_tfds(
    root: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    name: str = "image_folder",
    version: str = "1.0.0",
    image_size: tuple[int, int] | None = None,
    color_mode: str = "auto",
    overwrite: bool = False,
):
    """Store a split folder as a prepared TFDS dataset and return its builder.

    Reads `root/split/class/*.png` (every split must pass the checks of
    `load_image_folder`), and writes TFRecords, `dataset_info.json` and `features.json`
    to `data_dir/name/version` with features `image` (PNG-encoded `uint8`), `label`
    (`ClassLabel` over the class names of all splits, sorted) and `image/filename`
    (path relative to `root`), and `supervised_keys=("image", "label")`. This is what
    `tfds.dataset_builders.store_as_tfds_dataset` does, plus the supervised keys (which
    it cannot set) and an atomic write: the dataset is prepared beside its destination
    and renamed into place. Afterwards, offline:
    `tfds.load(name, data_dir=data_dir, split="train", as_supervised=True)`.

    Example:

    ```python
    builder = image_folder_to_tfds("data/digits", "/tmp/tfds", name="digits_folder")
    builder.info.splits["train"].num_examples
    ds = builder.as_dataset(split="test", as_supervised=True)
    ```

    Args:
        root: split folder to read.
        data_dir: TFDS data directory to write into.
        name: dataset name, in snake_case. Defaults to `"image_folder"`.
        version: dataset version `"x.y.z"`. Defaults to `"1.0.0"`.
        image_size: `(height, width)` to resize images to, or `None` to store them as
            they are (sizes may then differ). Defaults to `None`.
        color_mode: `"grayscale"`, `"rgb"` or `"auto"` (1 channel when every image is
            grayscale). Defaults to `"auto"`.
        overwrite: replace an existing `data_dir/name/version`. Defaults to `False`.

    Returns:
        A `tfds.core.DatasetBuilder` read back with `tfds.builder_from_directory`.

    Raises:
        ValueError: for an invalid argument, a `root` that is not a split folder, or
            any error `load_image_folder` raises for one of its splits.
        FileExistsError: if the dataset version exists and `overwrite` is `False`.
        ImportError: if `importlib_resources` (which TFDS needs but its wheel does not
            declare) is missing.
    """
    size = _check_image_size(image_size)
    _check_color_mode(color_mode)
    _check_dataset_id(name, version)
    _require_importlib_resources()
    import tensorflow_datasets as tfds

    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        what = "does not exist" if not os.path.exists(root) else "is not a directory"
        raise ValueError(f"Argument `root`: {root!r} {what}.")
    examples, class_names = _split_examples(root)
    all_files = [f for items in examples.values() for f, _ in items]
    mode = _resolve_color_mode(all_files, color_mode)
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(*(size or (None, None)), 1 if mode == "L" else 3)),
            "label": tfds.features.ClassLabel(names=class_names),
            "image/filename": tfds.features.Text(),
        }
    )
    final = os.path.join(os.path.abspath(os.fspath(data_dir)), name, version)
    with atomic_directory(
        final,
        overwrite=overwrite,
        what="prepared TFDS dataset (with dataset_info.json)",
        replaceable=lambda p: os.path.isfile(os.path.join(p, "dataset_info.json")),
    ) as tmp:
        _prepare_into(
            tmp,
            final,
            name=name,
            version=version,
            features=features,
            split_datasets={
                split: _tfds_examples(items, root, mode, size) for split, items in examples.items()
            },
            description=f"Images from the folder {root} (kerasft.image_folder_to_tfds).",
        )
    return tfds.builder_from_directory(final)


def _check_dataset_id(name: str, version: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(
            "Argument `name` must be a snake_case dataset name (lowercase letters, digits, "
            f"underscores, starting with a letter). Received: name={name!r}"
        )
    if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ValueError(
            f"Argument `version` must look like '1.0.0'. Received: version={version!r}"
        )


def _require_importlib_resources() -> None:
    try:
        import importlib_resources  # noqa: F401  (TFDS imports it lazily, deep inside)
    except ModuleNotFoundError as e:
        raise ImportError(
            "image_folder_to_tfds needs `importlib_resources`, which tensorflow-datasets "
            "uses without declaring it. HINT: pip install importlib_resources"
        ) from e


def _split_examples(root: str) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """`({split: [(image file, class id), ...]}, class names)` of a split folder.

    The class names are those of all splits, sorted, so that ids agree across splits.
    """
    splits = _split_folders(root)
    scanned = {split: _scan_class_folder(os.path.join(root, split)) for split in splits}
    class_names = sorted({c for names, _ in scanned.values() for c in names})
    examples: dict[str, list[tuple[str, int]]] = {}
    for split, (names, per_class) in scanned.items():
        examples[split] = [
            (f, class_names.index(c)) for c, files in zip(names, per_class) for f in files
        ]
    return examples, class_names


def _tfds_examples(
    items: list[tuple[str, int]], root: str, mode: str, size: tuple[int, int] | None
) -> Iterator[tuple[int, dict]]:
    """`(key, features)` of each image, decoded as `load_image_folder` decodes it."""
    for key, (file, label) in enumerate(items):
        image = _read_image(file, mode, size).astype("uint8")
        yield (
            key,
            {
                "image": image,
                "label": label,
                "image/filename": os.path.relpath(file, root),
            },
        )


def _prepare_into(tmp: str, final: str, **builder_kwargs) -> None:
    """Prepare the dataset beside `final` and move its version directory to `tmp`."""
    staging = make_partial_directory(final)  # same filesystem: its result is renamed into place
    try:
        builder = _supervised_builder(data_dir=staging, **builder_kwargs)
        builder.download_and_prepare()
        # Swap the prepared version directory into the (empty) atomic target.
        os.rmdir(tmp)
        os.replace(os.fspath(builder.data_dir), tmp)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _supervised_builder(**kwargs):
    """An `AdhocBuilder` that also declares `supervised_keys=("image", "label")`."""
    # Defined here so that TFDS, slow to import, loads only when a dataset is written.
    import tensorflow_datasets as tfds

    class SupervisedAdhocBuilder(tfds.dataset_builders.AdhocBuilder, skip_registration=True):
        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=self._description,
                features=self._feature_spec,
                supervised_keys=("image", "label"),
            )

    return SupervisedAdhocBuilder(**kwargs)


# ---------------------------------------------------------------------------------------
# Helpers


def _check_image_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
            for v in image_size
        )
    ):
        raise ValueError(
            "Argument `image_size` must be None or (height, width) with two positive "
            f"integers. Received: image_size={image_size!r}"
        )
    return int(image_size[0]), int(image_size[1])


def _check_color_mode(color_mode: str) -> None:
    if color_mode not in COLOR_MODES:
        raise ValueError(
            f"Argument `color_mode` must be one of {list(COLOR_MODES)}. "
            f"Received: color_mode={color_mode!r}"
        )


def _visible_dirs(path: str) -> list[str]:
    return sorted(
        d
        for d in os.listdir(path)
        if not d.startswith(".") and os.path.isdir(os.path.join(path, d))
    )


def _image_files(folder: str, extensions: Sequence[str]) -> list[str]:
    return sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if not f.startswith(".")
        and f.lower().endswith(tuple(extensions))
        and os.path.isfile(os.path.join(folder, f))
    )


def _check_names(names: list[str]) -> None:
    """Class names are folder names inside the root: never a path that leaves it."""
    bad = [
        n
        for n in names
        if not n
        or n in (".", "..")
        or "\0" in n
        or any(sep in n for sep in (os.sep, os.altsep) if sep)
    ]
    if bad:
        raise ValueError(
            f"Argument `class_names` must hold plain folder names inside `path`, but {bad!r} are "
            "empty, '.', '..' or paths. HINT: name the class sub-folders, e.g. ['cat', 'dog']."
        )


def _outside(file: str, root: str) -> bool:
    real, base = os.path.realpath(file), os.path.realpath(root)
    return real != base and not real.startswith(base.rstrip(os.sep) + os.sep)


def _check_links(root: str, folder: str, files: list[str], follow_symlinks: bool) -> None:
    """Refuse class folders or images that are links to places outside ``root``."""
    if follow_symlinks:
        return
    escaping = [
        p
        for p in [folder, *files]
        if os.path.islink(p) or os.path.islink(os.path.dirname(p))
        if _outside(p, root)
    ]
    if escaping:
        first = escaping[0]
        raise ValueError(
            f"{first!r} is a symbolic link to {os.path.realpath(first)!r}, outside {root!r} "
            f"({len(escaping)} such paths in {folder!r}). kerasft reads only what is under `path`. "
            "HINT: copy the images in, or pass follow_symlinks=True if you trust the links."
        )


def _scan_class_folder(
    path: str,
    class_names: Sequence[str] | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    *,
    follow_symlinks: bool = False,
) -> tuple[list[str], list[list[str]]]:
    """Return (class names, image files per class), checking the layout."""
    if not os.path.exists(path):
        raise ValueError(f"Argument `path`: {path!r} does not exist.")
    if not os.path.isdir(path):
        raise ValueError(f"Argument `path`: {path!r} is not a directory.")
    folders = _visible_dirs(path)
    if not folders:
        loose = _image_files(path, extensions)
        hint = (
            f" It holds {len(loose)} images directly; move them into one sub-folder per "
            "class (path/class_name/image.png)."
            if loose
            else " The layout is path/class_name/image.png."
        )
        raise ValueError(f"No class sub-folders in {path!r}.{hint}")
    if class_names is None:
        names = folders
    else:
        if isinstance(class_names, (str, bytes)):
            raise ValueError(
                f"Argument `class_names` must be a list of names. Received: {class_names!r}"
            )
        names = [str(c) for c in class_names]
        _check_names(names)
        if len(set(names)) != len(names):
            raise ValueError(f"Argument `class_names` has duplicates: {names!r}")
        unknown = [f for f in folders if f not in names]
        if unknown:
            raise ValueError(
                f"Sub-folders {unknown} of {path!r} are not in `class_names`={names!r}. "
                "Every class sub-folder must be one of the class names."
            )
    per_class = []
    for name in names:
        folder = os.path.join(path, name)
        if not os.path.isdir(folder):
            per_class.append([])  # a class without a folder: allowed, no examples
            continue
        files = _image_files(folder, extensions)
        if not files:
            inner = _visible_dirs(folder)
            hint = (
                f" It holds sub-folders {inner[:5]}: if {path!r} is a split folder "
                f"(path/split/class/), pass {os.path.join(path, inner[0])!r} instead."
                if inner
                else ""
            )
            raise ValueError(
                f"Class folder {folder!r} holds no image (files ending in "
                f"{', '.join(extensions)}).{hint}"
            )
        _check_links(path, folder, files, follow_symlinks)
        per_class.append(files)
    return names, per_class


def _split_folders(root: str) -> list[str]:
    splits = _visible_dirs(root)
    if not splits:
        raise ValueError(
            f"No split sub-folders in {root!r}. The layout is root/split/class/image.png, "
            "e.g. root/train/cat/1.png."
        )
    looks_like_classes = [
        s for s in splits if _image_files(os.path.join(root, s), IMAGE_EXTENSIONS)
    ]
    if looks_like_classes:
        raise ValueError(
            f"{root!r} looks like a class folder, not a split folder: sub-folders "
            f"{looks_like_classes[:5]} hold images directly. The layout is "
            "root/split/class/image.png. HINT: read a class folder with load_image_folder."
        )
    return splits


def _open(file: str) -> Image.Image:
    try:
        return Image.open(file)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"Cannot read image file {file!r}: {e}") from e


def _is_gray(image: Image.Image) -> bool:
    if image.mode in _GRAY_MODES:
        return True
    if image.mode == "P":
        palette = np.asarray(image.getpalette() or [], dtype=np.int32)
        rgb = palette[: len(palette) // 3 * 3].reshape(-1, 3)
        return bool(len(rgb)) and bool(np.all(rgb == rgb[:, :1]))
    return False


def _resolve_color_mode(files: Sequence[str], color_mode: str) -> str:
    """The Pillow mode to convert to: 'L' or 'RGB'. Reads headers only."""
    if color_mode == "grayscale":
        return "L"
    if color_mode == "rgb":
        return "RGB"
    for file in files:
        with _open(file) as image:
            if not _is_gray(image):
                return "RGB"
    return "L"


def _common_size(files: Sequence[str], path: str) -> tuple[int, int]:
    sizes: dict[tuple[int, int], str] = {}
    counts: collections.Counter = collections.Counter()
    for file in files:
        with _open(file) as image:
            hw = (image.height, image.width)
        sizes.setdefault(hw, file)
        counts[hw] += 1
    if len(sizes) > 1:
        (a, fa), (b, fb) = list(sizes.items())[:2]
        common = counts.most_common(1)[0][0]
        raise ValueError(
            f"Images in {path!r} differ in size: {fa!r} is {a[0]}x{a[1]} but {fb!r} is "
            f"{b[0]}x{b[1]} (height x width; {len(sizes)} sizes in all). Pass "
            f"image_size=(height, width) to resize them all, e.g. image_size={common}."
        )
    return next(iter(sizes))


def _read_image(file: str, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one image to float32 (height, width, channels) in [0, 255]."""
    try:
        with Image.open(file) as image:
            image.load()  # decode now, so a truncated file fails here, named
            if image.mode.startswith("I;16"):
                # 16-bit grayscale: convert("L") would clip at 255, so rescale.
                array = np.asarray(image, dtype="float32") / 257.0
                image = Image.fromarray(np.clip(np.round(array), 0, 255).astype("uint8"), "L")
            elif image.mode in ("I", "F"):
                raise ValueError(f"unsupported {image.mode!r} (32-bit) pixel mode")
            if image.mode != mode:
                image = image.convert(mode)
            if size is not None and (image.height, image.width) != size:
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype="float32")
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"Cannot read image file {file!r}: {e}") from e
    if array.ndim == 2:
        array = array[..., None]
    return array
