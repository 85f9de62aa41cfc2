"""Plans: the phases a recipe makes, built without training.

A recipe (``"lp-ft"``, ``"full"``, ``"head"``, ``"gradual"``, a phase list, and whatever
later recipes :func:`register_recipe` adds) turns the recipe options, and for some
recipes the model's layer groups, into a list of :class:`Phase` descriptions: what
trains, for how many epochs, at which peak rate and schedule, whether rates spread
over layer groups, whether the trainable set changes during the phase (stages) and so
whether the phase may train on cached features. Nothing trains while a plan is built,
so every recipe's plan is checked in tests in milliseconds, and ``kerasft.plan(model,
data, ...)`` prints what a ``finetune`` call would do (phase, epochs, trainable
parameters, rate). The runner (:mod:`kerasft.engine.runner`) executes any plan.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import keras

from kerasft import layerwise, surgery
from kerasft.engine.options import RecipeOptions
from kerasft.engine.registry import RECIPES, prunable_recipes, register_recipe
from kerasft.surgery import TrainableSnapshot
from kerasft.unfreezing import apply_trainable

__all__ = [
    "Phase",
    "Plan",
    "Rate",
    "Stage",
    "RECIPES",
    "build_plan",
    "prunable_recipes",
    "register_recipe",
    "select_trainable",
    "trainable_layers",
]


@dataclass(frozen=True)
class Rate:
    """A peak learning rate: a number, or a multiple of the LR finder's suggestion.

    Example:

    >>> str(Rate(1e-3)), str(Rate(of_found=1.0)), str(Rate(of_found=0.1))
    ('0.001', 'find', 'find/10')
    >>> float(Rate(of_found=0.1).resolve(2e-2))
    0.002
    """

    value: float | None = None
    of_found: float | None = None

    @property
    def known(self) -> bool:
        return self.value is not None

    def resolve(self, found: float) -> Rate:
        """This rate once the LR finder suggested ``found``."""
        return self if self.known else Rate(float(found) * float(self.of_found))

    def __float__(self) -> float:
        if self.value is None:
            raise ValueError(f"The rate {self} is not known before the LR finder has run.")
        return float(self.value)

    def __str__(self) -> str:
        if self.known:
            return f"{self.value:g}"
        return "find" if self.of_found == 1 else f"find/{1 / self.of_found:g}"


@dataclass(frozen=True)
class Stage:
    """One step of a staged phase: from ``epoch`` on, ``layers`` (regexes) train too.

    Attributes:
        layers: regexes over layer names or paths.
        epoch: the epoch (0-based, within the phase) the stage starts.
        lr: the rate the user gave the stage, if any.
        rate: the peak rate its layers train at (``lr``, else the head rate for the
            first stage and the body rate, spread by ``lr_mult`` / ``layer_decay``
            deepest lowest, for the others).
    """

    layers: list[str]
    epoch: int
    lr: float | None = None
    rate: Rate = Rate()


#: How plans and logs name a phase's schedule (a constant rate goes unnamed).
SCHEDULE_NAMES = {"warmup_cosine": "warmup+cosine", "warmup_constant": "warmup+constant"}


@dataclass(frozen=True)
class Phase:
    """One ``fit`` of a run.

    Attributes:
        name: ``"head"``, ``"finetune"``, ``"full"``, ``"gradual"``, ``"phases"``...
        epochs: epochs of the phase (0: skipped).
        trains: ``"head"``, ``"all"``, an ``unfreeze`` value (top N weighted layers, a
            top fraction, a regex), ``"stages"``, or ``"adapters"`` (low-rank adapters and
            the layers trained in full beside them, as ``kerasft.peft.apply_lora`` set them).
        rate: the peak learning rate.
        schedule: ``"constant"``, ``"warmup_cosine"`` or ``"warmup_constant"`` (warmed up,
            then held at the peak).
        warmup: fraction of the phase's steps spent warming up.
        spread: whether ``lr_mult`` / ``layer_decay`` spread the rate over layer groups.
        stages: for a staged phase, when which layers join (trainable set changes in fit).
        train_bn: whether BatchNormalization layers train once unfrozen.
        solver: ``"fit"`` (gradient steps) or ``"probe"`` (the head fitted in closed form
            on the frozen body's features: :mod:`kerasft.probe`).
        layer_decay: the phase's own layer-wise rate decay (``None``: the options').
        candidates: other peak rates tried beside ``rate`` by successive halving: each
            rate trains the first half of the epochs from the same weights, and the one
            that scores best on the validation data trains the second half.
    """

    name: str
    epochs: int
    trains: Any
    rate: Rate
    schedule: str = "constant"
    warmup: float = 0.0
    spread: bool = False
    stages: tuple[Stage, ...] = ()
    train_bn: bool = False
    solver: str = "fit"
    layer_decay: float | None = None
    candidates: tuple[float, ...] = ()

    @property
    def halving(self) -> bool:
        """Whether the phase chooses its rate by successive halving."""
        return bool(self.candidates) and self.epochs >= 2 and not self.staged

    @property
    def probe(self) -> bool:
        return self.solver == "probe"

    @property
    def prunable(self) -> bool:
        """Whether pruning can run in this phase: gradient steps on a fixed set of layers."""
        return not self.probe and not self.staged and self.trains != "adapters"

    @property
    def staged(self) -> bool:
        return bool(self.stages)

    @property
    def cacheable(self) -> bool:
        """Whether the phase may train on cached features (its trainable set is fixed)."""
        return not self.staged

    @property
    def trains_body(self) -> bool:
        return self.trains != "head"


@dataclass
class Plan:
    """The phases of a run, with what each trains.

    Attributes:
        phases: the phases, in order.
        steps_per_epoch: optimizer steps per epoch.
        trainable_params: per phase, the parameters it trains (for a staged phase, per
            stage; ``None`` until :meth:`count` ran on a model).
        total_params: all parameters of the model.
        decision: what ``recipe="auto"`` decided and why (a
            :class:`kerasft.engine.auto.AutoDecision`), else ``None``.
    """

    phases: list[Phase]
    steps_per_epoch: int = 1
    trainable_params: list[list[int]] | None = None
    total_params: int = 0
    rates: list[list[float]] | None = field(default=None, repr=False)
    decision: Any = None

    @property
    def total_epochs(self) -> int:
        """Epochs of gradient steps over all phases (a closed-form probe takes none)."""
        return sum(p.epochs for p in self.phases if not p.probe)

    @property
    def total_steps(self) -> int:
        """Optimizer steps over all phases, successive halving's extra half included."""
        return self.steps_per_epoch * sum(
            p.epochs + (p.epochs // 2) * len(p.candidates) * p.halving
            for p in self.phases
            if not p.probe
        )

    def resolve_rates(self, found: float) -> Plan:
        """The plan once the LR finder suggested ``found`` for the first phase."""
        phases = [
            dataclasses.replace(
                p,
                rate=p.rate.resolve(found),
                stages=tuple(dataclasses.replace(s, rate=s.rate.resolve(found)) for s in p.stages),
            )
            for p in self.phases
        ]
        return dataclasses.replace(self, phases=phases)

    def count(self, model: keras.Model, head: keras.layers.Layer, adapters: Any = None) -> Plan:
        """Fill :attr:`trainable_params` by applying each phase's trainable set in turn.

        ``adapters`` is the :class:`TrainableSnapshot` taken after adapters were added
        (for ``"adapters"`` phases). The model's trainable flags are put back afterwards.
        """
        snapshot = TrainableSnapshot.take(model)
        counts = []
        try:
            for phase in self.phases:
                if phase.staged:
                    layers = stage_layers(model, phase)
                    surgery.freeze(model)
                    row = []
                    for k in range(len(layers)):
                        apply_trainable(
                            model,
                            {id(lyr): True for group in layers[: k + 1] for lyr in group},
                            phase.train_bn,
                        )
                        row.append(surgery.count_params(model).trainable)
                    counts.append(row)
                else:
                    select_trainable(model, head, phase, adapters)
                    counts.append([surgery.count_params(model).trainable])
        finally:
            snapshot.restore(model)
        self.trainable_params = counts
        self.total_params = surgery.count_params(model).total
        return self

    def rows(self) -> list[tuple[str, int, int | None, str]]:
        """``(phase, epochs, trainable params, rate)`` per phase, and per stage of staged ones."""
        out = []
        for i, phase in enumerate(self.phases):
            counts = self.trainable_params[i] if self.trainable_params else [None]
            if phase.probe:
                out.append((phase.name, 0, counts[0], "closed form (L-BFGS/ridge)"))
                continue
            if not phase.staged:
                named = SCHEDULE_NAMES.get(phase.schedule)
                schedule = f" {named}" if named else ""
                spread = (
                    f" layer decay {phase.layer_decay:g}"
                    if phase.layer_decay
                    else " spread"
                    if phase.spread
                    else ""
                )
                rate = str(phase.rate)
                if phase.halving:
                    rate = " or ".join(f"{r:g}" for r in (float(phase.rate), *phase.candidates))
                out.append((phase.name, phase.epochs, counts[0], f"{rate}{schedule}{spread}"))
                continue
            starts = [s.epoch for s in phase.stages] + [phase.epochs]
            for k, stage in enumerate(phase.stages):
                out.append(
                    (
                        f"{phase.name}[{k}] from epoch {stage.epoch}",
                        starts[k + 1] - starts[k],
                        counts[k] if k < len(counts) else None,
                        f"{stage.rate} warmup+cosine",
                    )
                )
        return out

    def __str__(self) -> str:
        lines = [f"{'phase':<28}{'epochs':>7}{'trainable':>13}  rate"]
        for name, epochs, count, rate in self.rows():
            shown = "?" if count is None else f"{count:,}"
            steps = "-" if rate.startswith("closed form") else epochs  # a probe takes no epochs
            lines.append(f"{name:<28}{steps:>7}{shown:>13}  {rate}")
        if self.total_params:
            lines.append(
                f"{self.total_params:,} parameters in all; {self.steps_per_epoch} steps per epoch"
            )
        if self.decision is not None:
            lines += self.decision.describe()
        return "\n".join(lines)


# ----------------------------------------------------------------------------- recipes


def _head_rate(o: RecipeOptions) -> Rate:
    return Rate(of_found=1.0) if o.finds_lr else Rate(float(o.lr))


def _body_rate(o: RecipeOptions) -> Rate:
    if o.finetune_lr is not None:
        return Rate(float(o.finetune_lr))
    return Rate(of_found=0.1) if o.finds_lr else Rate(float(o.lr) / 10)


@register_recipe("lp-ft", prunable=True)
def _lp_ft(o: RecipeOptions, model: keras.Model, head: keras.layers.Layer) -> list[Phase]:
    return [
        Phase("head", o.head_epochs, "head", _head_rate(o), train_bn=o.train_bn),
        Phase(
            "finetune",
            o.epochs,
            o.unfreeze,
            _body_rate(o),
            "warmup_cosine",
            o.warmup,
            spread=True,
            train_bn=o.train_bn,
        ),
    ]


@register_recipe("full", prunable=True)
def _full(o: RecipeOptions, model: keras.Model, head: keras.layers.Layer) -> list[Phase]:
    return [
        Phase(
            "full",
            o.epochs,
            o.unfreeze,
            _head_rate(o),
            "warmup_cosine",
            o.warmup,
            spread=True,
            train_bn=o.train_bn,
        )
    ]


@register_recipe("head", prunable=True)
def _head(o: RecipeOptions, model: keras.Model, head: keras.layers.Layer) -> list[Phase]:
    return [Phase("head", o.epochs, "head", _head_rate(o), train_bn=o.train_bn)]


def _adapter_phase(o: RecipeOptions) -> Phase:
    return Phase(
        "adapters",
        o.epochs,
        "adapters",
        _body_rate(o),
        "warmup_cosine",
        o.warmup,
        spread=True,
        train_bn=o.train_bn,
    )


@register_recipe("lora")
@register_recipe("dora")
def _adapters(o: RecipeOptions, model: keras.Model, head: keras.layers.Layer) -> list[Phase]:
    # The head fitted in closed form first: adapters trained beside a random head spend
    # their steps repairing it (0.608 on the text job, against 0.703 after a head phase).
    return [
        Phase("probe", 0, "head", Rate(0.0), solver="probe", train_bn=o.train_bn),
        _adapter_phase(o),
    ]


@register_recipe("lp-lora")
@register_recipe("lp-dora")
def _lp_adapters(o: RecipeOptions, model: keras.Model, head: keras.layers.Layer) -> list[Phase]:
    return [
        Phase("head", o.head_epochs, "head", _head_rate(o), train_bn=o.train_bn),
        _adapter_phase(o),
    ]


def _staged(name: str, epochs: int, stages: list[Stage], o: RecipeOptions) -> Phase:
    late = [s.epoch for s in stages if s.epoch >= epochs]
    if late:
        raise ValueError(
            f"Argument `recipe`: phases start at epochs {[s.epoch for s in stages]} but the "
            f"run lasts {epochs} epoch{'s' if epochs != 1 else ''}, so some would never train. "
            "HINT: raise `epochs`."
        )
    mults = layerwise.group_multipliers(
        max(1, len(stages) - 1), lr_mult=o.lr_mult, layer_decay=o.layer_decay
    )
    head, body = _head_rate(o), _body_rate(o)
    for k, stage in enumerate(stages):
        if stage.lr is not None:
            rate = Rate(float(stage.lr))
        elif k == 0:
            rate = head
        else:
            mult = mults[len(stages) - 1 - k]
            rate = Rate(float(body) * mult) if body.known else Rate(of_found=body.of_found * mult)
        stages[k] = dataclasses.replace(stage, rate=rate)
    return Phase(
        name,
        epochs,
        "stages",
        body,
        "warmup_cosine",
        o.warmup,
        spread=True,
        stages=tuple(stages),
        train_bn=o.train_bn,
    )


@register_recipe("gradual")
def _gradual(o: RecipeOptions, model: keras.Model, head: keras.layers.Layer) -> list[Phase]:
    stages = gradual_stages(model, head, o.head_epochs, o.epochs, o.layer_groups)
    return [_staged("gradual", o.head_epochs + o.epochs, stages, o)]


@register_recipe("auto")
def _auto(
    o: RecipeOptions, model: keras.Model, head: keras.layers.Layer, decision: Any = None
) -> list[Phase]:
    if decision is None:
        raise ValueError("recipe='auto' is planned from the data: use kerasft.plan(model, data).")
    finetune = Phase(
        "finetune",
        decision.epochs,
        decision.unfreeze,
        Rate(decision.rate),
        getattr(decision, "schedule", "warmup_cosine"),
        decision.warmup,
        spread=decision.layer_decay is not None or o.lr_mult is not None,
        train_bn=o.train_bn,
        layer_decay=decision.layer_decay,
        candidates=tuple(getattr(decision, "candidates", ())),
    )
    if getattr(decision, "continues", False):  # a refit from a fine-tune's weights: no probe
        return [finetune]
    return [Phase("probe", 0, "head", Rate(0.0), solver="probe", train_bn=o.train_bn), finetune]


@register_recipe("phases")
def _phases(o: RecipeOptions, model: keras.Model, head: keras.layers.Layer) -> list[Phase]:
    stages = [Stage(list(p["layers"]), int(p["epoch"]), p["lr"]) for p in o.phase_list]
    return [_staged("phases", o.epochs, stages, o)]


def build_plan(
    model: keras.Model,
    head: keras.layers.Layer,
    options: RecipeOptions,
    steps_per_epoch: int,
    decision: Any = None,
) -> Plan:
    """The plan of ``options.recipe`` for ``model`` (whose output layer is ``head``).

    ``decision`` is what ``recipe="auto"`` decided from the data
    (:func:`kerasft.engine.auto.decide`).

    Raises:
        ValueError: when the recipe leaves nothing to train.
    """
    if options.kind == "auto":
        return Plan(
            _auto(options, model, head, decision),
            steps_per_epoch=steps_per_epoch,
            decision=decision,
        )
    phases = RECIPES[options.kind](options, model, head)
    if not any(p.epochs for p in phases):
        raise ValueError(
            f"Arguments `head_epochs={options.head_epochs}` and `epochs={options.epochs}` leave "
            f"nothing to train for recipe={options.recipe!r}."
        )
    return Plan(phases, steps_per_epoch=steps_per_epoch)


# ---------------------------------------------------------------------- trainable sets


def trainable_layers(
    model: keras.Model, head: keras.layers.Layer, phase: Phase
) -> list[keras.layers.Layer]:
    """The leaf layers a (non-staged) phase trains, the head included.

    Raises:
        ValueError: an ``unfreeze`` regex that matches nothing.
    """
    if phase.trains == "head":
        return [head]
    body = [lyr for _, lyr in surgery.leaf_layers(model) if lyr is not head]
    chosen = body if phase.trains == "all" else _unfrozen_body(model, head, body, phase.trains)
    return [
        lyr
        for lyr in chosen
        if phase.train_bn or not isinstance(lyr, keras.layers.BatchNormalization)
    ] + [head]


def _unfrozen_body(model: keras.Model, head: keras.layers.Layer, body: list, unfreeze: Any) -> list:
    """The body layers ``unfreeze`` selects: top N weighted layers, a top fraction, a regex."""
    if isinstance(unfreeze, str):
        try:
            keep = surgery.select_layers(model, unfreeze, argument="unfreeze", legacy="search")
        except ValueError as e:
            raise ValueError(
                f"Argument `unfreeze={unfreeze!r}` selects nothing to train: {e}"
            ) from None
        return [lyr for lyr in keep if lyr is not head]
    weighted = [
        lyr for lyr in body if lyr.weights and not isinstance(lyr, keras.layers.BatchNormalization)
    ]
    count = unfreeze if isinstance(unfreeze, int) else max(1, int(round(unfreeze * len(weighted))))
    keep = weighted[-count:]
    return body[body.index(keep[0]) :] if keep else []


def select_trainable(
    model: keras.Model, head: keras.layers.Layer, phase: Phase, adapters: Any = None
) -> None:
    """Freeze ``model`` except what the (non-staged) ``phase`` trains.

    An ``"adapters"`` phase restores ``adapters``, the snapshot of the trainable state
    that ``kerasft.peft.apply_lora`` left (adapters and the layers trained in full).
    """
    if phase.trains == "adapters":
        if adapters is None:
            raise ValueError(f"Phase {phase.name!r} trains adapters, but the model has none.")
        adapters.restore(model)
        return
    ids = {id(lyr) for lyr in trainable_layers(model, head, phase)}
    surgery.set_trainable(model, {p: id(lyr) in ids for p, lyr in surgery.leaf_layers(model)})


def stage_layers(model: keras.Model, phase: Phase) -> list[list[keras.layers.Layer]]:
    """The layers each stage of a staged phase adds (a layer belongs to its first stage)."""
    out, taken = [], set()
    for i, stage in enumerate(phase.stages):
        layers = [
            lyr
            for lyr in surgery.select_layers(model, stage.layers, argument=f"phases[{i}]['layers']")
            if id(lyr) not in taken
        ]
        if not layers:
            raise ValueError(f"Phase {i} ({stage.layers}) has only layers of earlier phases.")
        taken.update(id(lyr) for lyr in layers)
        out.append(layers)
    return out


def gradual_stages(
    model: keras.Model, head: keras.layers.Layer, head_epochs: int, epochs: int, patterns: Any
) -> list[Stage]:
    """Stages of ``recipe="gradual"``: the head, then body groups top-down.

    The head trains alone for ``head_epochs``; then over ``epochs`` the body groups join
    from the top, evenly spaced (several per stage when there are more groups than
    epochs), so that the last stage still trains for ``epochs // stages`` epochs or more.
    A group of normalization layers alone (``bn1`` between ``conv2`` and ``conv1``) would
    be a stage that trains nothing: it joins the group below it, whose output it
    normalizes.
    """
    groups = layerwise.layer_groups(model, patterns)
    top = [i for i, (_, layers) in enumerate(groups) if any(lyr is head for lyr in layers)]
    head_group = top[0] if top else len(groups) - 1
    top_down = [groups[i] for i in range(len(groups) - 1, -1, -1) if i != head_group]
    body: list[tuple[str, list]] = []
    pending: list = []
    for name, layers in top_down:
        if all(isinstance(lyr, surgery.NORMALIZATION_LAYERS) for lyr in layers):
            pending += layers
            continue
        body.append((name, pending + layers))
        pending = []
    if pending and body:
        body[-1] = (body[-1][0], body[-1][1] + pending)
    elif pending:
        body.append(("normalization", pending))

    def regexes(items) -> list[str]:
        return [re.escape(surgery.layer_path(model, lyr)) for _, layers in items for lyr in layers]

    first = regexes([groups[head_group]])
    stages: list[Stage] = []
    if epochs and body:
        size = math.ceil(len(body) / epochs)
        chunks = [body[k : k + size] for k in range(0, len(body), size)]
        every = epochs // len(chunks)
        for j, chunk in enumerate(chunks):
            start = head_epochs + j * every
            if start == 0:
                first += regexes(chunk)
            else:
                stages.append(Stage(regexes(chunk), start))
    return [Stage(first, 0), *stages]
