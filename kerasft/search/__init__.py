"""``kerasft.search``: try several ``finetune`` configurations and keep the best one.

Each trial is one ``finetune`` call with some keywords drawn from a search space (rates,
``unfreeze`` depth, recipe, label smoothing...). KerasTuner's oracles choose them
(random search, Bayesian optimisation, Hyperband) and keep the trials in a project
directory, so a search that stops can be started again and continues after the trials
it finished. Every trial fine-tunes a fresh copy of the pretrained model, and all of
them share one :class:`kerasft.speed.FeatureStore`: the outputs of a frozen bottom are
computed once for the whole search, not once per trial, and a phase that trains the
same network as an earlier trial's runs that trial's compiled training steps instead of
tracing its own (:mod:`kerasft.speed.compiled`).

Modules: :mod:`~kerasft.search.space` (the keywords searched and their values),
:mod:`~kerasft.search.oracles` (KerasTuner's oracles, ``finetune``'s defaults first),
:mod:`~kerasft.search.trials` (a trial: one ``finetune`` call and its score),
:mod:`~kerasft.search.tuner` (:func:`search` on KerasTuner's tuner and project
directory) and :mod:`~kerasft.search.result` (:class:`SearchResult`, its table and plot).
"""

from kerasft.search.oracles import ORACLES
from kerasft.search.result import SearchResult, TrialRow
from kerasft.search.space import baseline_values, parse_space, searchable_keywords
from kerasft.search.tuner import search

__all__ = [
    "search",
    "SearchResult",
    "TrialRow",
    "ORACLES",
    "baseline_values",
    "parse_space",
    "searchable_keywords",
]
