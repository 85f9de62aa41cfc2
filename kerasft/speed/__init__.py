"""Making each fine-tuning phase fast without changing what it computes.

:mod:`~kerasft.speed.caching` trains the layers above a frozen, deterministic bottom on
features computed once (:mod:`~kerasft.speed.prefix` finds that bottom,
:mod:`~kerasft.speed.store` and :mod:`~kerasft.speed.keys` keep its features across
runs); :mod:`~kerasft.speed.devices` picks XLA, mixed precision and
steps per execution from the devices present; :mod:`~kerasft.speed.distribute` runs
under a ``tf.distribute`` strategy; :mod:`~kerasft.speed.plan` combines them into one
:class:`SpeedPlan` per ``finetune`` run and records its decisions as a
:class:`SpeedRecord`. A :class:`FeatureStore` shares cached features across runs, and
with ``compiled_models=`` the compiled training steps of the networks they train
(:mod:`~kerasft.speed.compiled`).
"""

from kerasft.speed.caching import FeatureCache
from kerasft.speed.plan import PhaseSpeed, SpeedPlan, SpeedRecord, check_options
from kerasft.speed.prefix import CachedFeatureModel, split_frozen_prefix
from kerasft.speed.store import FeatureStore

__all__ = [
    "CachedFeatureModel",
    "FeatureCache",
    "FeatureStore",
    "PhaseSpeed",
    "SpeedPlan",
    "SpeedRecord",
    "check_options",
    "split_frozen_prefix",
]
