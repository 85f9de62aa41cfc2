"""kerasft: fine-tune a pretrained Keras 3 model on a new task in one call.

Import kerasft before TensorFlow: it turns TensorFlow's oneDNN kernels off
(``TF_ENABLE_ONEDNN_OPTS=0``) because they crash on the shortcut convolutions of
ResNet-style models; see ``kerasft/_onednn.py``.
"""

from kerasft import _onednn

_onednn.configure()

from kerasft.data import DataSpec, PreparedData, prepare_data  # noqa: E402
from kerasft.finetuning import FinetuneResult, PhaseResult, finetune, load_model  # noqa: E402
from kerasft.surgery import (  # noqa: E402
    ParamCount,
    count_params,
    find_backbone,
    find_head,
    freeze,
    get_layer,
    iter_layers,
    replace_head,
    select_layers,
    set_trainable,
    trainable_state,
    unfreeze,
)

__version__ = "0.1.0"

__all__ = [
    "DataSpec",
    "FinetuneResult",
    "ParamCount",
    "PhaseResult",
    "PreparedData",
    "count_params",
    "find_backbone",
    "find_head",
    "finetune",
    "freeze",
    "get_layer",
    "iter_layers",
    "load_model",
    "prepare_data",
    "replace_head",
    "select_layers",
    "set_trainable",
    "trainable_state",
    "unfreeze",
]
