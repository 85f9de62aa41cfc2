"""Loading a model to fine-tune from a file: ``.keras``, ``.h5`` or a SavedModel directory.

Files load with Keras's ``safe_mode=True``: a file carrying Python code (a ``Lambda``
layer) is refused unless the caller says it trusts the file, before anything in it
runs (tf_keras's own loaders would run it). A SavedModel is a TensorFlow graph, which
Keras's ``safe_mode`` does not cover: kerasft refuses graphs with ops that touch files
or call Python, and warns that loading one trusts it. Files saved by Keras 2
(tf_keras, or ``tf.keras`` before TensorFlow 2.16) are converted to Keras 3 by
:func:`kerasft.convert.to_keras3`. Every failure names the file and what would be valid.
"""

from __future__ import annotations

import os
import zipfile

import keras

from kerasft import convert

__all__ = ["load_model"]


def load_model(path: str, *, safe_mode: bool = True, verbose: int = 0) -> keras.Model:
    """Load a ``.keras`` or ``.h5`` model file for fine-tuning, refusing unsafe code by default.

    A model saved by Keras 2 (a legacy ``.h5``, or a ``.keras`` file or SavedModel
    directory written by tf_keras) is converted to Keras 3 with
    :func:`kerasft.convert.to_keras3`, which checks that both predict the same.

    Args:
        path: file path.
        safe_mode: refuse to deserialize Python code (``Lambda`` layers) in the file, as
            Keras does. Set ``False`` only for files you trust. Defaults to `True`.
        verbose: print one line when a Keras 2 model is converted, if > 0. Defaults to `0`.

    Raises:
        ValueError: a missing file, an unsupported extension, a file Keras cannot read,
            or a Keras 2 model that cannot be converted (a
            :class:`kerasft.convert.ConversionError` naming each layer at fault).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"Argument `model`: no file or directory at {path!r}.")
    if convert.is_legacy_file(path):
        return convert.to_keras3(path, safe_mode=safe_mode, verbose=verbose).model
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "saved_model.pb")):
            from kerasft.export import load_saved_model

            return load_saved_model(path, safe_mode=safe_mode)
        raise ValueError(
            f"Argument `model`: {path!r} is a directory without saved_model.pb. Pass a .keras "
            "or .h5 file, or a SavedModel directory."
        )
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".keras", ".h5", ".hdf5"):
        raise ValueError(
            f"Argument `model`: {path!r} has extension {ext!r}; kerasft loads '.keras' and "
            "'.h5' model files and SavedModel directories."
        )
    if ext == ".keras" and not zipfile.is_zipfile(path):
        raise ValueError(
            f"Argument `model`: {path!r} is not a valid .keras file (a .keras model is a zip "
            f"archive; this file is not one, {os.path.getsize(path)} bytes). Is it complete, "
            "or was it saved in another format?"
        )
    try:
        return keras.models.load_model(path, compile=False, safe_mode=safe_mode)
    except ValueError as e:
        if "safe_mode" in str(e) or "Lambda" in str(e):
            raise ValueError(
                f"Argument `model`: {path!r} contains Python code (e.g. a Lambda layer) that "
                "kerasft will not run from a file by default. If you trust the file, pass "
                f"safe_mode=False. Keras said: {e}"
            ) from None
        raise ValueError(
            f"Argument `model`: {path!r} could not be read as a Keras model: {e}"
        ) from None
    except Exception as e:  # corrupt zip / h5 files raise many types
        raise ValueError(
            f"Argument `model`: {path!r} could not be read as a Keras model "
            f"({type(e).__name__}: {e}). Is the file complete and a .keras/.h5 model?"
        ) from None
