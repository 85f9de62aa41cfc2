"""Export a fine-tuned classifier for serving, and load an export back for more fine-tuning.

`export_model` (in `kerasft.export.savedmodel`) writes a TensorFlow SavedModel (through
Keras 3's `keras.export.ExportArchive`, the machinery behind
`model.export(..., format="tf_saved_model")`) or a TFLite flatbuffer. Both take raw
inputs, since whatever preprocessing lives inside the model (rescaling, resizing) is part
of the exported graph, and both return class probabilities and the top class, plus its
name when class names are given. A SavedModel also carries `assets/class_names.txt` and a
`kerasft.json` metadata file, and a `features` endpoint (the input of the classification
layer) so that `load_for_finetuning` (in `kerasft.export.loading`) can separate the
trainable body from the head, and `kerasft.finetune("path/to/export", data)` can keep or
replace it. A TFLite file may be float16, dynamic-range or full-integer (int8) quantized
and is checked in the LiteRT interpreter against the Keras model
(`kerasft.export.tflite`); every export carries a model card (`kerasft.export.card`).
What an export takes and serves (inputs, output kind, the probabilities it must match)
is read off the Keras model in `kerasft.export.serving`.
Every export is run beside its Keras model on sample inputs before it is renamed into
place (an export that serves other predictions is refused), written beside its
destination and renamed into place, so an interrupted export never leaves a
half-written model where a good one was; `overwrite=True` replaces only an earlier
kerasft export.
"""

from kerasft.export.card import CARD_FILE, CARD_JSON, ModelCard, model_card
from kerasft.export.loading import SavedModelLayer, load_for_finetuning, load_saved_model
from kerasft.export.savedmodel import (
    CLASS_NAMES_ASSET,
    FEATURES_ENDPOINT,
    FORMATS,
    IO_DTYPES,
    METADATA_FILE,
    QUANTIZE,
    SERVE_ENDPOINT,
    ExportedPath,
    check_destination,
    export_files,
    export_model,
    is_export,
    read_export_metadata,
)
from kerasft.export.serving import input_names, served_probabilities
from kerasft.export.tflite import ExportSample, TFLiteCheck, export_sample, verify_tflite

__all__ = [
    "export_model",
    "export_files",
    "is_export",
    "check_destination",
    "input_names",
    "load_for_finetuning",
    "load_saved_model",
    "read_export_metadata",
    "served_probabilities",
    "verify_tflite",
    "export_sample",
    "model_card",
    "ModelCard",
    "ExportedPath",
    "ExportSample",
    "TFLiteCheck",
    "SavedModelLayer",
    "CARD_FILE",
    "CARD_JSON",
    "CLASS_NAMES_ASSET",
    "FEATURES_ENDPOINT",
    "FORMATS",
    "IO_DTYPES",
    "METADATA_FILE",
    "QUANTIZE",
    "SERVE_ENDPOINT",
]
