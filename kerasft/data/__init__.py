"""Data for fine-tuning: inputs checked by name, labels read as a task, batched pipelines.

- :mod:`~kerasft.data.inputs`: what a model takes, and users' arrays, tuples, dicts,
  DataFrames, strings and sequences normalised into it and checked per input;
- :mod:`~kerasft.data.labels`: the task (classification, multi-label, regression) and
  label encoding read off the targets, class weights;
- :mod:`~kerasft.data.prepare`: :func:`prepare_data`, the split and the pipelines.
"""

from kerasft.data.inputs import InputSignature, check_inputs, normalize_inputs
from kerasft.data.labels import LABEL_MODES, TASKS, DataSpec, cast_labels, class_weights, infer_spec
from kerasft.data.prepare import (
    PreparedData,
    as_source,
    check_batching,
    has_random_ops,
    make_pipeline,
    prepare_data,
    read_examples,
    to_arrays,
)

__all__ = [
    "DataSpec",
    "InputSignature",
    "LABEL_MODES",
    "PreparedData",
    "TASKS",
    "as_source",
    "cast_labels",
    "check_batching",
    "check_inputs",
    "class_weights",
    "has_random_ops",
    "infer_spec",
    "make_pipeline",
    "normalize_inputs",
    "prepare_data",
    "read_examples",
    "to_arrays",
]
