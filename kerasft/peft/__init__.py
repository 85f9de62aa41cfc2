"""Parameter-efficient fine-tuning (LoRA, DoRA, QLoRA-style int8) for Keras 3 models.

The HuggingFace PEFT workflow on Keras's own LoRA: ``apply_lora`` adds adapters and
freezes the pretrained weights, ``trainable_report`` shows what trains,
``save_adapters``/``load_adapters`` keep the adapters apart from the base model, and
``merge`` folds them back into a plain model. See ``docs/peft.md``.
"""

from kerasft.peft.adapters import load_adapters, save_adapters
from kerasft.peft.layers import DoRA, LoRA
from kerasft.peft.lora import LoraResult, apply_lora
from kerasft.peft.merge import has_adapters, merge
from kerasft.peft.report import LayerRow, TrainableReport, trainable_report

__all__ = [
    "DoRA",
    "LayerRow",
    "LoRA",
    "LoraResult",
    "TrainableReport",
    "apply_lora",
    "has_adapters",
    "load_adapters",
    "merge",
    "save_adapters",
    "trainable_report",
]
