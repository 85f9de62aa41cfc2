"""Everything ``import kerasft`` gives, loaded in one place (see ``kerasft/__init__.py``)."""
# ruff: noqa: F401  (these imports are the package's public names)

from kerasft import _keras_compat

_keras_compat.check_keras_version()

from kerasft import convert, peft, pooling, pruning  # noqa: E402  (register their layers for load_model)

pooling.register_stand_in()
from kerasft.callbacks import (  # noqa: E402
    GradualUnfreezing,
    PhaseLogger,
    ReduceLROnPlateauScaled,
    monitor_mode,
)
from kerasft.configs import (  # noqa: E402
    HeadConfig,
    LayerwiseConfig,
    LoraConfig,
    OptimizerConfig,
    RegularizationConfig,
    RunConfig,
    SpeedConfig,
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
