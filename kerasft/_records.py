"""Dataclass records (evaluation reports, model cards) rebuilt from dicts and JSON."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["record_from_dict", "read_json"]


def record_from_dict(cls: type, data: Mapping[str, Any], exclude: tuple[str, ...] = ()) -> Any:
    """``cls(**data)``, refusing keys that are not fields of ``cls`` (or are in ``exclude``).

    Raises:
        ValueError: naming the unknown keys and the valid ones.
    """
    known = [f.name for f in dataclasses.fields(cls) if f.name not in exclude]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"Argument `data` has unknown keys {unknown}. Valid keys are: {known}")
    return cls(**data)


def read_json(source: str | os.PathLike) -> Any:
    """Parse JSON text, or the JSON file at path ``source``."""
    text = os.fspath(source)
    if isinstance(source, os.PathLike) or not text.lstrip().startswith("{"):
        with open(text, encoding="utf-8") as f:
            text = f.read()
    return json.loads(text)
