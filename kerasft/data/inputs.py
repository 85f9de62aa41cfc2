"""Model inputs: what a model takes, and turning what users pass into that, checked by name.

A model takes one tensor, a list of tensors or a dict of named tensors (``model.input``).
Users pass an array, a tuple or list of arrays, a dict of arrays, a pandas ``DataFrame``,
raw strings (for a model that starts with ``TextVectorization``) or variable-length
integer sequences (padded here, as ``keras.utils.pad_sequences`` does). Everything is
normalised into the model's own structure, and each input is checked by name before
training: present, numeric or text as the model expects, of the right shape, finite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

__all__ = [
    "InputSignature",
    "normalize_inputs",
    "check_inputs",
    "num_examples",
    "take",
    "flatten",
    "restructure",
]


@dataclass(frozen=True)
class InputSignature:
    """The inputs a model takes, flattened in ``model.inputs`` order.

    Attributes:
        names: input names (the dict keys of a dict-input model).
        shapes: per-example shapes (``None`` = any size).
        dtypes: dtype names (``"string"`` for text inputs).
        structure: ``"single"``, ``"list"`` or ``"dict"``.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple, ...]
    dtypes: tuple[str, ...]
    structure: str

    @classmethod
    def of(cls, model: Any) -> InputSignature | None:
        """The signature of a built Keras model, or ``None`` if it has no symbolic inputs."""
        try:
            tensors = list(model.inputs)
        except (AttributeError, ValueError, TypeError):
            return None
        if not tensors:
            return None
        try:
            structure = model.input
        except (AttributeError, ValueError):  # a Sequential model that was never called
            structure = tensors if len(tensors) > 1 else tensors[0]
        if isinstance(structure, Mapping):
            kind, names = "dict", tuple(sorted(structure))
        else:
            kind = "single" if len(tensors) == 1 else "list"
            names = tuple(_base_name(t.name) for t in tensors)
        return cls(
            names,
            tuple(tuple(t.shape[1:]) for t in tensors),
            tuple(keras.backend.standardize_dtype(t.dtype) for t in tensors),
            kind,
        )

    def describe(self) -> str:
        return ", ".join(
            f"{n!r} {_shape(s)} {d}" for n, s, d in zip(self.names, self.shapes, self.dtypes)
        )


def _base_name(name: str) -> str:
    return name.split(":")[0]


def _shape(shape: tuple) -> str:
    return (
        "("
        + ", ".join("None" if d is None else str(d) for d in shape)
        + ("," if len(shape) == 1 else "")
        + ")"
    )


def is_dataframe(obj: Any) -> bool:
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "columns")


def is_series(obj: Any) -> bool:
    return type(obj).__name__ == "Series" and hasattr(obj, "to_numpy")


def as_array(value: Any, argument: str, name: str | None = None) -> np.ndarray:
    """One input as an array: numbers, text (unicode) or padded integer sequences."""
    if is_series(value):
        value = value.to_numpy()
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return np.asarray(value, dtype=str)
    array = np.asarray(value, dtype=object) if not isinstance(value, np.ndarray) else value
    if (
        array.dtype == object
        and array.ndim == 1
        and len(array)
        and all(isinstance(v, (list, tuple, np.ndarray)) for v in array)
    ):
        # Variable-length sequences (token ids): pad at the end with 0, as Keras does.
        return keras.utils.pad_sequences(
            list(array), padding="post", value=0, dtype=_sequence_dtype(array)
        )
    if array.dtype == object and all(isinstance(v, str) for v in array.ravel()):
        return array.astype(str)
    try:
        return np.asarray(value)
    except ValueError:
        where = f" input {name!r}" if name else ""
        raise ValueError(
            f"Argument `{argument}`:{where} could not be read as an array of numbers, text or "
            "integer sequences. HINT: pass numpy arrays, or lists of token-id lists."
        ) from None


def _sequence_dtype(array: np.ndarray) -> str:
    values = [v for seq in array for v in np.asarray(seq).ravel()][:1000]
    return "float32" if any(isinstance(v, (float, np.floating)) for v in values) else "int32"


def normalize_inputs(x: Any, signature: InputSignature | None, argument: str = "data") -> Any:
    """``x`` in the structure the model takes: an array, a tuple of arrays, or a dict.

    Raises:
        ValueError: a dict or DataFrame missing an input (naming the model's inputs), a
            sequence of arrays whose count does not match the model's inputs.
    """
    if is_dataframe(x):
        x = _from_dataframe(x, signature, argument)
    if isinstance(x, Mapping):
        arrays = {str(k): as_array(v, argument, str(k)) for k, v in x.items()}
        if signature is not None and signature.structure != "single":
            missing = [n for n in signature.names if n not in arrays]
            if missing:
                raise ValueError(
                    f"Argument `{argument}`: input {missing[0]!r} is missing. The model's inputs "
                    f"are [{signature.describe()}]; the data has {sorted(arrays)}."
                )
            unknown = [k for k in arrays if k not in signature.names]
            if unknown:
                raise ValueError(
                    f"Argument `{argument}` has inputs {unknown} that the model does not take. The "
                    f"model's inputs are [{signature.describe()}]."
                )
            return {
                n: _conform(arrays[n], signature.shapes[i]) for i, n in enumerate(signature.names)
            }
        if signature is not None and len(arrays) == 1:
            return next(iter(arrays.values()))
        return arrays
    if isinstance(x, (list, tuple)) and signature is not None and signature.structure != "single":
        if len(x) != len(signature.names):
            raise ValueError(
                f"Argument `{argument}`: the model takes {len(signature.names)} inputs "
                f"[{signature.describe()}], but the data has {len(x)}. HINT: pass a dict keyed "
                "by input name."
            )
        arrays = [
            _conform(as_array(v, argument, n), shape)
            for v, n, shape in zip(x, signature.names, signature.shapes)
        ]
        return (
            dict(zip(signature.names, arrays)) if signature.structure == "dict" else tuple(arrays)
        )
    return as_array(x, argument)


def _conform(array: np.ndarray, expected: tuple) -> np.ndarray:
    """A column of scalars for an input of shape ``(1,)`` (a DataFrame column) gets its axis."""
    return array[:, None] if array.ndim == 1 and tuple(expected) == (1,) else array


def _from_dataframe(frame: Any, signature: InputSignature | None, argument: str) -> Any:
    columns = [str(c) for c in frame.columns]
    if signature is not None and signature.structure != "single":
        return {n: frame[n].to_numpy() for n in signature.names if n in columns} | {
            c: frame[c].to_numpy() for c in columns if c not in signature.names
        }
    if len(columns) == 1 and (
        _is_text_column(frame.iloc[:, 0]) or signature is not None and signature.names[0] in columns
    ):
        # One column of text (or the model's own input by name): that column is the input.
        return as_array(frame.iloc[:, 0], argument, columns[0])
    # pandas 3 stores text as its own string dtype, not object: ask pandas what is numeric.
    bad = [c for c, name in zip(columns, frame.columns) if not _is_numeric_column(frame[name])]
    if bad:
        raise ValueError(
            f"Argument `{argument}`: DataFrame columns {bad} are not numeric, and the model takes "
            f"one input. Received columns {columns}. HINT: pass one text column for a text model, "
            "encode the others, or build a model with one named input per column."
        )
    return frame.to_numpy().astype("float32")


def _is_numeric_column(series: Any) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype)


def _is_text_column(series: Any) -> bool:
    import pandas as pd

    if pd.api.types.is_string_dtype(series.dtype) and not pd.api.types.is_object_dtype(
        series.dtype
    ):
        return True
    return pd.api.types.is_object_dtype(series.dtype) and all(isinstance(v, str) for v in series)


def flatten(x: Any) -> list[np.ndarray]:
    """The arrays of ``x`` in ``model.inputs`` order (dicts by sorted key, as Keras does)."""
    if isinstance(x, Mapping):
        return [x[k] for k in sorted(x)]
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def restructure(flat: Sequence[Any], like: Any) -> Any:
    """Inverse of :func:`flatten`: ``flat`` in the structure of ``like``."""
    if isinstance(like, Mapping):
        return dict(zip(sorted(like), flat))
    if isinstance(like, (list, tuple)):
        return tuple(flat)
    return flat[0]


def for_keras(x: Any) -> Any:
    """``x`` as Keras's array adapter takes it: numpy's fixed-width unicode text as Python
    strings (an object array); everything else as it is."""
    return keras.tree.map_structure(
        lambda a: a.astype(object) if isinstance(a, np.ndarray) and a.dtype.kind == "U" else a, x
    )


def num_examples(x: Any, argument: str = "data") -> int:
    """The number of examples in ``x``, checking every input has the same.

    Raises:
        ValueError: inputs of different lengths.
    """
    lengths = {len(a) for a in flatten(x)}
    if len(lengths) > 1:
        raise ValueError(f"Argument `{argument}`: inputs have different lengths {sorted(lengths)}.")
    return lengths.pop() if lengths else 0


def take(x: Any, index: np.ndarray) -> Any:
    """The examples ``index`` of every input of ``x``."""
    return restructure([a[index] for a in flatten(x)], x)


def check_inputs(x: Any, signature: InputSignature | None, argument: str = "data") -> None:
    """Check each input against the model's: kind (numbers or text), shape, finite values.

    Raises:
        ValueError: text where the model takes numbers (or the reverse), a shape that does
            not fit, NaN or inf values; each naming the input.
    """
    arrays = flatten(x)
    if signature is None:
        for a in arrays:
            _check_numbers_or_text(a, None, None, argument, "")
        return
    for array, name, shape, dtype in zip(
        arrays, signature.names, signature.shapes, signature.dtypes
    ):
        where = f" input {name!r}" if signature.structure != "single" else ""
        _check_numbers_or_text(array, name, dtype, argument, where)
        _check_shape(tuple(array.shape[1:]), shape, argument, where)


def _check_numbers_or_text(
    array: np.ndarray, name: str | None, dtype: str | None, argument: str, where: str
) -> None:
    text = array.dtype.kind in "USO"
    if text and dtype is not None and dtype != "string":
        raise ValueError(
            f"Argument `{argument}`:{where} inputs must be numeric arrays (the model takes "
            f"{dtype}), but have dtype {array.dtype}: text. HINT: tokenize the text first, or "
            "start the model with a keras.layers.TextVectorization layer (or use a KerasHub "
            "task with its preprocessor)."
        )
    if not text and dtype == "string":
        raise ValueError(
            f"Argument `{argument}`:{where} holds numbers (dtype {array.dtype}), but the model "
            "takes text (strings)."
        )
    if not text and array.dtype.kind not in "biuf":
        raise ValueError(
            f"Argument `{argument}`:{where} inputs must be numeric arrays, but have dtype "
            f"{array.dtype}."
        )
    if dtype is None and text:
        raise ValueError(
            f"Argument `{argument}`:{where} inputs must be numeric arrays, but have dtype "
            f"{array.dtype}."
        )
    if array.dtype.kind == "f" and len(array) and not np.all(np.isfinite(array)):
        bad = int(np.sum(~np.all(np.isfinite(array.reshape(len(array), -1)), axis=1)))
        raise ValueError(
            f"Argument `{argument}`:{where} {bad} of {len(array)} inputs contain NaN or inf. "
            "HINT: clean or drop them before fine-tuning (np.isfinite)."
        )


def _check_shape(shape: tuple, expected: tuple, argument: str, where: str) -> None:
    ok = len(shape) == len(expected) and all(
        e is None or s is None or e == s for s, e in zip(shape, expected)
    )
    if not ok:
        raise ValueError(
            f"Argument `{argument}`:{where} each input has shape {tuple(shape)}, but the model "
            f"expects {tuple(expected)} (None = any). HINT: resize or reshape the inputs to "
            f"{tuple(expected)}"
            + (
                ", e.g. add a channel axis with x[..., None]."
                if len(shape) + 1 == len(expected)
                else "."
            )
        )
