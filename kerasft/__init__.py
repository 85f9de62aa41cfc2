"""kerasft: fine-tune a pretrained Keras 3 model on a new task in one call.

Import kerasft before TensorFlow: it turns TensorFlow's oneDNN kernels off
(``TF_ENABLE_ONEDNN_OPTS=0``) because they crash on the shortcut convolutions of
ResNet-style models; see ``kerasft/_onednn.py``.
"""

import os as _os
import sys as _sys

from kerasft import _onednn

_onednn.configure()

__version__ = "0.1.0"


def _is_command_line() -> bool:
    """Whether this process is the ``kerasft`` console script (``kerasft.cli:main``).

    The script reads its command line before the library (and TensorFlow, seconds to load)
    is needed: ``kerasft --help``, ``--version`` and a mistyped option answer at once, and
    TensorFlow's start-up lines are quietened before it loads.
    """
    script = _os.path.basename(_sys.argv[0]) if _sys.argv and _sys.argv[0] else ""
    return (
        script in ("kerasft", "kerasft.exe", "kerasft-script.py")
        and "tensorflow" not in _sys.modules
    )


_COMMAND_LINE = _is_command_line()
if _COMMAND_LINE:
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
else:
    from kerasft._api import *  # noqa: E402, F403


__all__ = [
    "CachedFeatureModel",
    "HeadConfig",
    "LayerwiseConfig",
    "LoraConfig",
    "OptimizerConfig",
    "RegularizationConfig",
    "RunConfig",
    "SpeedConfig",
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
    import importlib
    import importlib.util

    # kerasft.llm (causal LMs, GGUF) imports KerasHub: it loads on first use, not with kerasft.
    if name == "llm":
        return importlib.import_module("kerasft.llm")
    if _COMMAND_LINE and name in __all__:  # the command needs the library now
        api = importlib.import_module("kerasft._api")
        globals().update({k: v for k, v in vars(api).items() if not k.startswith("_")})
        if name in globals():
            return globals()[name]
        # Asked for while the library is still loading (`from kerasft import convert`):
        # a submodule imports by itself; anything else is not there yet.
        if importlib.util.find_spec(f"kerasft.{name}") is not None:
            return importlib.import_module(f"kerasft.{name}")
    raise AttributeError(f"module 'kerasft' has no attribute {name!r}")
