"""What trains in a model: adapters, fully trained layers, and their share of all weights.

The Keras counterpart of PEFT's ``print_trainable_parameters``, with one row per layer
that has trainable weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from kerasft.peft import _walk

__all__ = ["LayerRow", "TrainableReport", "trainable_report"]


@dataclass(frozen=True)
class LayerRow:
    """One layer with trainable weights.

    ``kind`` is ``"lora"``, ``"dora"`` or ``"full"`` (a layer trained as a whole, such as
    a new head); ``rank`` is ``None`` for ``"full"``.
    """

    path: str
    kind: str
    rank: int | None
    trainable_params: int


@dataclass(frozen=True)
class TrainableReport:
    """Rows per trainable layer, and the totals.

    ``str(report)`` is a table followed by PEFT's summary line, ``trainable params: ... ||
    all params: ... || trainable%: ...``.
    """

    rows: tuple[LayerRow, ...]
    trainable_params: int
    total_params: int
    adapter_params: int

    @property
    def trainable_share(self) -> float:
        """Trainable parameters as a fraction of all parameters."""
        return self.trainable_params / self.total_params if self.total_params else 0.0

    def __str__(self) -> str:
        width = max([len("layer")] + [len(r.path) for r in self.rows])
        lines = [f"{'layer':<{width}}  {'adapter':<7}  {'rank':>4}  {'trainable':>12}"]
        lines.append("-" * len(lines[0]))
        for r in self.rows:
            rank = "" if r.rank is None else str(r.rank)
            lines.append(f"{r.path:<{width}}  {r.kind:<7}  {rank:>4}  {r.trainable_params:>12,}")
        lines.append(
            f"trainable params: {self.trainable_params:,} || all params: {self.total_params:,}"
            f" || trainable%: {100 * self.trainable_share:.4f}"
        )
        return "\n".join(lines)


def _rank(layer: keras.layers.Layer) -> int:
    return layer.rank if hasattr(layer, "adapter_variables") else int(layer.lora_rank)


def trainable_report(model: keras.Model) -> TrainableReport:
    """Tabulate the trainable weights of ``model``, adapters first-class.

    Works on any Functional or Sequential model, adapted or not. Parameter counts include
    every variable in ``model.weights`` (BatchNorm statistics, int8 kernels and their
    scales count as parameters, as in ``model.count_params()``).

    Example:

    >>> import keras
    >>> from kerasft import peft
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(2)])
    >>> _ = peft.apply_lora(model, rank=2, targets=[keras.layers.Dense], train=())
    >>> peft.trainable_report(model).adapter_params  # (4*2 + 2*8) + (8*2 + 2*2)
    44

    Args:
        model: a Functional or Sequential Keras model.

    Returns:
        A :class:`TrainableReport`; print it for the table.

    Raises:
        TypeError: when ``model`` is not a Functional or Sequential Keras model.
    """
    _walk.check_model(model)
    trainable_ids = {id(v) for v in model.trainable_weights}
    rows = []
    adapter_params = 0
    for node in _walk.walk(model):
        own = [v for v in node.own_weights if id(v) in trainable_ids]
        if not own:
            continue
        adapters = [v for v in _walk.adapter_variables(node.layer) if id(v) in trainable_ids]
        if adapters:
            kind = getattr(node.layer, "kind", "lora")
            adapter_params += _walk.num_elements(adapters)
            rows.append(LayerRow(node.path, kind, _rank(node.layer), _walk.num_elements(own)))
        else:
            rows.append(LayerRow(node.path, "full", None, _walk.num_elements(own)))
    return TrainableReport(
        rows=tuple(rows),
        trainable_params=_walk.num_elements(model.trainable_weights),
        total_params=_walk.num_elements(model.weights),
        adapter_params=adapter_params,
    )
