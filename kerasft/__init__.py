"""kerasft: fine-tune a pretrained Keras 3 model on a new task in one call.

Import kerasft before TensorFlow: it turns TensorFlow's oneDNN kernels off
(``TF_ENABLE_ONEDNN_OPTS=0``) because they crash on the shortcut convolutions of
ResNet-style models; see ``kerasft/_onednn.py``.
"""

from kerasft import _onednn

_onednn.configure()

from kerasft import _keras_compat  # noqa: E402

_keras_compat.check_keras_version()

from kerasft import convert, peft, pooling, pruning  # noqa: E402  (register their layers for load_model)

pooling.register_stand_in()
from kerasft.callbacks import (  # noqa: E402
    GradualUnfreezing,
    PhaseLogger,
    ReduceLROnPlateauScaled,
    monitor_mode,
)
from kerasft.data import DataSpec, PreparedData, prepare_data  # noqa: E402
from kerasft.engine import Options, Plan  # noqa: E402
from kerasft.evaluation import EvaluationReport, evaluate, evaluate_model, report_from_predictions  # noqa: E402
from kerasft.export import export_model, load_for_finetuning, read_export_metadata  # noqa: E402
from kerasft.finetuning import FinetuneResult, PhaseResult, finetune, load_model, plan  # noqa: E402
from kerasft.imagefolder import image_folder_to_tfds, load_image_folder, load_tfds_folder  # noqa: E402
from kerasft.layerwise import (  # noqa: E402
    discriminative_optimizer,
    group_multipliers,
    layer_groups,
    no_decay_variables,
)
from kerasft.lr_finder import LRFindResult, lr_find, suggest_learning_rates  # noqa: E402
from kerasft.plots import plot_confusion_matrix, plot_history, plot_lr_find, plot_report  # noqa: E402
from kerasft.pruning import prune_low_magnitude, sparsity_report, strip_pruning  # noqa: E402
from kerasft.regularizers import L2SP, ClipWeights, apply_l2sp, clip_weights  # noqa: E402
from kerasft.schedules import (  # noqa: E402
    OneCycle,
    Scaled,
    WarmupCosineDecay,
    WarmupExponentialDecay,
    WarmupStepDecay,
    scale_schedule,
)
from kerasft.search import SearchResult, search  # noqa: E402
from kerasft.speed import CachedFeatureModel, FeatureCache, split_frozen_prefix  # noqa: E402
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
from kerasft.tensorboard import TensorBoardLogger  # noqa: E402
from kerasft.unfreezing import load_phases, sync_optimizer  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CachedFeatureModel",
    "Options",
    "EvaluationReport",
    "evaluate",
    "evaluate_model",
    "report_from_predictions",
    "plot_report",
    "peft",
    "llm",
    "convert",
    "SearchResult",
    "search",
    "Plan",
    "monitor_mode",
    "plan",
    "FeatureCache",
    "split_frozen_prefix",
    "ClipWeights",
    "GradualUnfreezing",
    "L2SP",
    "LRFindResult",
    "OneCycle",
    "PhaseLogger",
    "ReduceLROnPlateauScaled",
    "Scaled",
    "WarmupCosineDecay",
    "WarmupExponentialDecay",
    "WarmupStepDecay",
    "apply_l2sp",
    "clip_weights",
    "discriminative_optimizer",
    "group_multipliers",
    "layer_groups",
    "load_phases",
    "lr_find",
    "no_decay_variables",
    "scale_schedule",
    "suggest_learning_rates",
    "sync_optimizer",
    "DataSpec",
    "FinetuneResult",
    "ParamCount",
    "PhaseResult",
    "PreparedData",
    "TensorBoardLogger",
    "count_params",
    "export_model",
    "find_backbone",
    "find_head",
    "finetune",
    "freeze",
    "get_layer",
    "image_folder_to_tfds",
    "iter_layers",
    "load_for_finetuning",
    "load_image_folder",
    "load_model",
    "load_tfds_folder",
    "plot_confusion_matrix",
    "plot_history",
    "plot_lr_find",
    "prepare_data",
    "prune_low_magnitude",
    "pruning",
    "read_export_metadata",
    "replace_head",
    "select_layers",
    "set_trainable",
    "sparsity_report",
    "strip_pruning",
    "trainable_state",
    "unfreeze",
]


def __getattr__(name: str):
    # kerasft.llm (causal LMs, GGUF) imports KerasHub: it loads on first use, not with kerasft.
    if name == "llm":
        import importlib

        return importlib.import_module("kerasft.llm")
    raise AttributeError(f"module 'kerasft' has no attribute {name!r}")
