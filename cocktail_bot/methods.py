"""The merge methods' registry: names, parameters, defaults, validation and every check that runs before a
tensor is read. Free of torch, so that `cocktail validate` and `cocktail plan` stay fast; the arithmetic is in
:mod:`cocktail_bot.merge_kernels`.

Semantics and defaults follow mergekit 0.1.5 (``mergekit/merge_methods/generalized_task_arithmetic.py``,
``slerp.py`` and ``mergekit/sparsify.py``) so a recipe means the same thing in both tools. As in mergekit,
a method that ``needs_base`` measures task vectors ``theta_i - theta_base`` from a base model that is
*not* one of the task vectors: the engine passes the base tensor separately, and ``tensors`` / ``weights``
hold the other models only (a base that the manifest also lists among the models is dropped from them,
with its weight).

Adding a method: one :class:`MergeMethod` subclass below (its ``parameters``, ``title``, ``paper``, checks and
the ``kernel`` that computes it), listed in ``METHODS``; a new kind of arithmetic is one function in
``merge_kernels.KERNELS``. The memory it needs while merging is :mod:`cocktail_bot.memory`'s business, through
``elementwise``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from cocktail_bot.errors import CocktailError
from cocktail_bot.memory import DELLA_BLOCK
from cocktail_bot.parameter_values import (
    SettingError,
    check_setting,
    covers_every_tensor,
    evaluate,
    format_setting,
    scalars,
)
from cocktail_bot.suggest import closest

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# linear weights may miss 1 by LM_Cocktail's tolerance (`[0.33, 0.33, 0.33]`, `0.333333` x 3): they are divided by
# their sum, with a note; sums within EXACT_SUM (float rounding) are used as given.
SUM_TOLERANCE = 1e-3
EXACT_SUM = 1e-9


@dataclass(frozen=True)
class Parameter:
    """One parameter a method accepts: its default (None: required), its type and its allowed range."""

    name: str
    kind: type  # bool, int or float
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    # one value per merged model (mergekit's INPUT / NON_BASE scope), given on the model or, for every model,
    # in the merge's parameters; otherwise one value shared by all models (mergekit's SHARED scope)
    per_model: bool = False
    # may take a different value per tensor: a per-layer list, filter-scoped values (parameter_values)
    varies: bool = True

    @property
    def range_text(self) -> str:
        if self.kind is bool:
            return "true or false"
        noun = "an integer" if self.kind is int else "a number"
        if self.minimum is None and self.maximum is None:
            return f"{noun}" if self.kind is int else "a finite number"
        if self.maximum is None:
            return f"{noun} >= {self.minimum:g}"
        opening = "(" if self.exclusive_minimum else "["
        return f"{noun} in {opening}{self.minimum:g}, {self.maximum:g}]"

    def validate(self, method: str, value: Any) -> Any:
        """The value, as its kind, or CocktailError naming the method, the parameter and the allowed range."""
        problem = CocktailError(
            f"merge method {method!r}: parameter {self.name!r} must be {self.range_text}, got {value!r}"
        )
        if self.kind is bool:
            if not isinstance(value, bool):
                raise problem
            return value
        if isinstance(value, bool) or not isinstance(value, int if self.kind is int else (int, float)):
            raise problem
        if not math.isfinite(value):
            raise problem
        if self.minimum is not None and (
            value < self.minimum or (self.exclusive_minimum and value == self.minimum)
        ):
            raise problem
        if self.maximum is not None and value > self.maximum:
            raise problem
        return self.kind(value)

    def check_setting(self, method: str, setting: Any) -> Any:
        """The setting (a value, a per-layer list, filtered values) with every value validated; SettingError
        says what is wrong and where inside it."""
        return check_setting(setting, partial(self.validate, method), varies=self.varies)

    def evaluate(self, method: str, setting: Any, tensor: str, position: float) -> Any:
        """The setting's value for one tensor, or None where no filter matches it."""
        return evaluate(setting, tensor, position, partial(self.validate, method))


LAMBDA = Parameter("lambda", float, 1.0, "scales the merged task vector before it is added to the base")
DENSITY = Parameter(
    "density",
    float,
    1.0,
    "fraction of each task vector's entries kept",
    minimum=0.0,
    maximum=1.0,
    exclusive_minimum=True,
    per_model=True,
)
RESCALE = Parameter("rescale", bool, None, "rescale each sparsified task vector to its original L1 norm")
SEED = Parameter(
    "seed", int, 0, "seeds the random drop masks, per tensor with the tensor's name", minimum=0, varies=False
)
T = Parameter("t", float, None, "interpolation factor: 0 gives the base, 1 the other model", 0.0, 1.0)


def _normalize(default: bool) -> Parameter:
    return Parameter("normalize", bool, default, "divide the merged task vector by the sum of its weights")


@dataclass(frozen=True)
class MergeMethod:
    """A merge method with its parameters, validated (and defaults filled in) once before any tensor is read.

    Subclasses declare ``parameters`` (the schema), ``paper`` and ``title``. ``params`` holds every declared
    parameter's setting (a value, a per-layer list or filtered values, see :mod:`cocktail_bot.parameter_values`;
    for a ``per_model`` parameter, the one every model gets unless it sets its own), so the card and the report
    show exactly what was used. ``model_params`` holds each listed model's own settings of ``per_model``
    parameters (empty: none set any). The kernels see the method :meth:`at` one tensor, where every value is
    plain.
    """

    name: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    model_params: tuple[Mapping[str, Any], ...] = ()
    needs_base: bool = False
    resolved: bool = field(
        default=False, compare=False, repr=False
    )  # set by ``at``: plain values for a tensor

    parameters: ClassVar[tuple[Parameter, ...]] = ()
    uses_weights: ClassVar[bool] = True  # False: per-model weights are not needed (and ignored when given)
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # what it does, in one sentence, for the card
    kernel: ClassVar[str] = ""  # the key of merge_kernels.KERNELS that computes it
    optional_base: ClassVar[bool] = False  # a base, when named, is used (mergekit's BasePolicy.OPTIONAL)

    def __post_init__(self) -> None:
        if self.resolved:
            raise ValueError("a method is resolved for a tensor by at(), not built so")
        object.__setattr__(self, "params", self._resolve(dict(self.params)))
        object.__setattr__(
            self,
            "model_params",
            tuple(self._model_settings(index, dict(given)) for index, given in enumerate(self.model_params)),
        )
        self.check_params()

    def check_params(self) -> None:
        """Raise CocktailError if the parameters, each valid on its own, do not go together."""

    def for_base(self, base: Hashable | None) -> MergeMethod:
        """This method for a recipe whose base is ``base`` (None: no base named): a method whose base is
        optional uses one when it is named, as in mergekit."""
        if self.optional_base and base is not None and not self.needs_base:
            return dataclasses.replace(self, needs_base=True)
        return self

    @property
    def declared(self) -> dict[str, Parameter]:
        return {parameter.name: parameter for parameter in self.parameters}

    def _setting(self, parameter: Parameter, setting: Any, where: tuple[str | int, ...]) -> Any:
        try:
            checked = parameter.check_setting(self.name, setting)
        except SettingError as error:
            message = str(error)
            if not message.startswith("merge method"):
                message = f"merge method {self.name!r}: parameter {parameter.name!r} {message}"
            raise SettingError(message, (*where, *error.where)) from None
        return checked

    def _resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        declared = self.declared
        for name in given:
            if name not in declared:
                owner = f"merge method {self.name!r}"
                raise SettingError(_unknown("parameter", name, list(declared), owner), (name,))
        resolved = {}
        for name, parameter in declared.items():
            if name in given:
                resolved[name] = self._setting(parameter, given[name], (name,))
                if parameter.default is None and not covers_every_tensor(resolved[name]):
                    raise SettingError(
                        f"merge method {self.name!r}: parameter {name!r} has no value for the tensors no "
                        "filter matches: add an entry without a filter, e.g. {value: 0.5}",
                        (name,),
                    )
            elif parameter.default is None:
                raise CocktailError(
                    f"merge method {self.name!r} needs the parameter {name!r} ({parameter.range_text}: "
                    f"{parameter.description})"
                )
            else:
                resolved[name] = parameter.default
        return resolved

    def _model_settings(self, index: int, given: dict[str, Any]) -> dict[str, Any]:
        """One listed model's own settings; only ``per_model`` parameters may be set on a model."""
        declared = self.declared
        per_model = [name for name, parameter in declared.items() if parameter.per_model]
        where: tuple[str | int, ...] = ("models", index, "parameters")
        checked = {}
        for name, setting in given.items():
            if name not in declared or not declared[name].per_model:
                owner = f"merge method {self.name!r} per model"
                message = _unknown("parameter", name, per_model, owner)
                if name in declared:
                    message = (
                        f"parameter {name!r} of merge method {self.name!r} is one value for all models: "
                        "set it under the merge's parameters"
                    )
                raise SettingError(message, (*where, name))
            checked[name] = self._setting(declared[name], setting, (*where, name))
        return checked

    def values(self, name: str) -> list[Any]:
        """Every value the recipe gives parameter ``name``, anywhere (shared, per model, per layer, per filter):
        for decisions that hold for every tensor (``elementwise``, memory)."""
        found = list(scalars(self.params[name]))
        for settings in self.model_params:
            if name in settings:
                found.extend(scalars(settings[name]))
        return found

    def at(self, tensor: str, position: float, merged: Sequence[int]) -> MergeMethod:
        """This method with every parameter's value for one tensor: shared parameters a plain value, ``per_model``
        ones a list with one value per merged model (``merged``: their indices among the listed models, in the
        order of the kernel's tensors). ``position`` is the tensor's place over the layers (mergekit's t)."""
        resolved: dict[str, Any] = {}
        for name, parameter in self.declared.items():
            if not parameter.per_model:
                resolved[name] = self._value(parameter, [self.params[name]], tensor, position)
                continue
            resolved[name] = [
                self._value(parameter, [*self._own(index, name), self.params[name]], tensor, position)
                for index in merged
            ]
        at = copy.copy(self)  # not replace(): the values are checked already, and are no settings
        object.__setattr__(at, "params", resolved)
        object.__setattr__(at, "model_params", ())
        object.__setattr__(at, "resolved", True)
        return at

    def _own(self, index: int, name: str) -> list[Any]:
        if index < len(self.model_params) and name in self.model_params[index]:
            return [self.model_params[index][name]]
        return []

    def _value(self, parameter: Parameter, settings: list[Any], tensor: str, position: float) -> Any:
        """The first setting that has a value for the tensor (mergekit's precedence: the model's, then the
        merge's), else the default."""
        for setting in settings:
            value = parameter.evaluate(self.name, setting, tensor, position)
            if value is not None:
                return value
        if parameter.default is None:
            raise CocktailError(
                f"merge method {self.name!r}: parameter {parameter.name!r} has no value for {tensor}"
            )
        return parameter.default

    @property
    def elementwise(self) -> bool:
        """Each output entry depends only on the same entry of the inputs: the engine may merge in chunks."""
        return False

    def temporary_bytes(self, numel: int, itemsize: int) -> int:
        """Bytes the arithmetic allocates besides its inputs, on a tensor of ``numel`` values of ``itemsize``
        bytes merged whole (methods that are not ``elementwise``); :mod:`cocktail_bot.memory` adds them up."""
        return 0

    def describe(self) -> str:
        """One line for the card and the report: the method, its paper and every parameter's value."""
        settings = ", ".join(f"{name}={format_setting(value)}" for name, value in self.params.items())
        own = "; ".join(
            f"model {index + 1}: " + ", ".join(f"{name}={format_setting(v)}" for name, v in given.items())
            for index, given in enumerate(self.model_params)
            if given
        )
        text = f"{self.name} ({self.title}"
        text += f", {self.paper})" if self.paper else ")"
        text = f"{text} with {settings}" if settings else text
        return f"{text} ({own})" if own else text

    @property
    def paper_url(self) -> str | None:
        """A link to the paper for the card (arXiv, DOI, or the web page that introduced the method)."""
        return paper_link(self.paper)

    def check_base(self, base: Hashable | None) -> None:
        """Raise CocktailError if this method needs a base model and none is named."""
        if self.needs_base and base is None:
            raise CocktailError(
                f"merge method {self.name!r} needs a base model, the one its task vectors are measured from: "
                "name it with `base`"
            )

    def split_base(self, models: Sequence[Hashable], base: Hashable | None) -> list[int]:
        """Indices of the models whose tensors ``merge`` takes, in order.

        Every model for a method without a base. For a method with one, every model but the base: as in
        mergekit, the base is not a task vector, and a weight given to it is unused.
        """
        if not self.needs_base:
            return list(range(len(models)))
        return [index for index, model in enumerate(models) if model != base]

    def check_recipe(
        self, models: Sequence[Hashable], weights: Sequence[Any] | None, base: Hashable | None
    ) -> None:
        """Every check that can run before a tensor is read, on the recipe's models as listed (base included).

        ``weights`` are one per listed model (a number, or a per-layer list / filtered values), or None where
        they are not known yet (computed from examples).
        """
        self.check_base(base)
        if self.model_params and len(self.model_params) != len(models):
            raise CocktailError(
                f"got parameters for {len(self.model_params)} models but {len(models)} models: "
                "give one set of parameters per model (or none)"
            )
        method = self.for_base(base)
        merged = method.split_base(models, base)
        if weights is None:
            method.check_models(len(merged))
        else:
            method.check([weights[index] for index in merged])

    def check_models(self, count: int) -> None:
        """Raise CocktailError if the method cannot merge this many models (besides the base, if any)."""
        if count < 1:
            raise CocktailError(f"merge method {self.name!r} needs at least one model")

    def check(self, weights: Sequence[float]) -> None:
        """Raise CocktailError if these weights (one per merged model) cannot be used with this method."""
        _check_finite(weights)
        self.check_models(len(weights))

    def normalised(self, weights: Sequence[float]) -> list[float]:
        """The weights (one per listed model) the merge uses, once checked: as given; ``linear`` divides
        weights that sum to nearly 1 (LM_Cocktail accepts them) by their sum."""
        return list(weights)

    def merge(
        self,
        tensors: Sequence[torch.Tensor],
        weights: Sequence[float],
        base: torch.Tensor | None,
        *,
        key: str,
    ) -> torch.Tensor:
        """Merge one tensor. ``key`` is the tensor's name (seeds per-tensor randomness such as DARE's masks).

        Inputs are never modified; the result is a new tensor in the inputs' dtype.
        """
        from cocktail_bot.merge_kernels import merge

        return merge(self, tensors, weights, base, key=key)

    def merge_(
        self,
        tensors: Sequence[torch.Tensor],
        weights: Sequence[float],
        base: torch.Tensor | None,
        *,
        key: str,
    ) -> torch.Tensor:
        """``merge`` on contiguous inputs the caller gives up: they may be overwritten, and the result may be
        one of them.

        The same arithmetic, step for step, as ``merge``: the results are bit-identical.
        """
        from cocktail_bot.merge_kernels import merge_

        return merge_(self, tensors, weights, base, key=key)


def paper_link(paper: str) -> str | None:
    """The URL of a method's ``paper`` (``arXiv:ID``, ``doi:ID`` or an https URL)."""
    if paper.startswith("https://"):
        return paper
    scheme, _, identifier = paper.partition(":")
    return {"arXiv": f"https://arxiv.org/abs/{identifier}", "doi": f"https://doi.org/{identifier}"}.get(
        scheme
    )


def method_notes(names: Sequence[str]) -> list[dict[str, str | None]]:
    """What the card says of each of these methods (in order, once each): its summary and its paper's link."""
    notes = []
    for name in dict.fromkeys(names):
        method = METHODS.get(name)
        if method is not None:
            notes.append(
                {
                    "name": name,
                    "summary": method.summary,
                    "title": method.title,
                    "paper_url": paper_link(method.paper),
                }
            )
    return notes


def _check_finite(weights: Sequence[Any]) -> None:
    """Every weight (a number, or a per-layer / filtered setting of numbers) is finite."""
    if not all(
        isinstance(value, (int, float)) and math.isfinite(value)
        for weight in weights
        for value in scalars(weight)
    ):
        raise CocktailError(f"weights must be finite numbers, got {list(weights)}")


def varies_per_tensor(weights: Sequence[Any]) -> bool:
    """True if a weight is a per-layer list or filtered values (mergekit's forms), not one number."""
    return any(isinstance(weight, list) for weight in weights)


def _unknown(what: str, name: str, choices: Sequence[str], owner: str = "") -> str:
    """'unknown X' with a "did you mean" hint and the valid choices."""
    where = f" for {owner}" if owner else ""
    message = f"unknown {what} {name!r}{where}"
    close = closest(str(name), choices)
    if close is not None:
        message += f"; did you mean {close!r}?"
    if choices:
        return f"{message} (valid: {', '.join(choices)})"
    return f"{message} (it takes no parameters)"


@dataclass(frozen=True)
class Linear(MergeMethod):
    """LM-Cocktail's weighted average: sum(w_i * theta_i), the weights summing to 1."""

    name: str = "linear"
    title: ClassVar[str] = "LM-Cocktail weighted average, Xiao et al. 2023"
    paper: ClassVar[str] = "arXiv:2311.13534"
    kernel: ClassVar[str] = "linear"
    summary: ClassVar[str] = (
        "LM-Cocktail's weighted average of parameters, `sum(w_i * theta_i)`, the weights summing to 1."
    )

    @property
    def elementwise(self) -> bool:
        return True

    def check(self, weights: Sequence[float]) -> None:
        super().check(weights)
        if varies_per_tensor(weights):
            raise CocktailError(
                "linear merge weights are one number per model (they sum to 1): per-layer or filtered weights are "
                "for the methods with a base (task_arithmetic, ties, ...)"
            )
        total = sum(weights)
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise CocktailError(
                f"linear merge weights must sum to 1 (within {SUM_TOLERANCE:g}, then they are divided by their "
                f"sum), but {list(weights)} sums to {total!r}"
            )

    def normalised(self, weights: Sequence[float]) -> list[float]:
        total = math.fsum(weights)
        if abs(total - 1.0) <= EXACT_SUM:
            return list(weights)
        divided = [weight / total for weight in weights]
        logger.info(
            "note: the linear weights %s sum to %s, not 1: merging with them divided by their sum, %s",
            list(weights),
            f"{total:.6g}",
            [round(weight, 6) for weight in divided],
        )
        return divided


@dataclass(frozen=True)
class TaskArithmetic(MergeMethod):
    """base + lambda * sum(w_i * (theta_i - base)), optionally sparsified, sign-elected and normalised.

    One class for mergekit's generalized task arithmetic family; subclasses choose the sparsification and
    whether TIES' sign consensus applies. Per-model weights may take any finite values (they need not sum to
    1): with ``normalize`` the merged task vector is divided by the sum of the weights that contributed.
    """

    name: str = "task_arithmetic"
    needs_base: bool = True
    parameters: ClassVar[tuple[Parameter, ...]] = (LAMBDA, _normalize(False))
    title: ClassVar[str] = "task arithmetic, Ilharco et al. 2023"
    paper: ClassVar[str] = "arXiv:2212.04089"
    summary: ClassVar[str] = (
        "the base plus the weighted sum of task vectors, `base + sum(w_i * (theta_i - base))`."
    )
    kernel: ClassVar[str] = "task_arithmetic"
    sparsification: ClassVar[str | None] = None  # a key of merge_kernels.SPARSIFIERS
    sign_consensus: ClassVar[bool] = False

    @property
    def elementwise(self) -> bool:
        # the sign election is per entry; sparsification ranks, masks and rescales the whole tensor
        return self.sparsification is None or all(density >= 1 for density in self.values("density"))

    def temporary_bytes(self, numel: int, itemsize: int) -> int:
        if self.elementwise:
            return 0
        # the keep/drop mask (bool), and the larger of TIES' float32 magnitudes and the rescale's |delta|
        return numel + numel * max(4, itemsize)

    def check_models(self, count: int) -> None:
        if count < 1:
            raise CocktailError(
                f"merge method {self.name!r} needs at least one model besides the base: add the models whose "
                "task vectors to merge"
            )


@dataclass(frozen=True)
class Ties(TaskArithmetic):
    """TIES: trim task vectors to their largest entries, elect a sign per entry, average the agreeing ones."""

    name: str = "ties"
    parameters: ClassVar[tuple[Parameter, ...]] = (
        DENSITY,
        LAMBDA,
        _normalize(True),
        dataclasses.replace(RESCALE, default=False),
    )
    title: ClassVar[str] = "TIES-Merging, Yadav et al. 2023"
    paper: ClassVar[str] = "arXiv:2306.01708"
    summary: ClassVar[str] = (
        "TIES-Merging: task vectors trimmed to their largest entries, a sign elected per parameter, then merged."
    )
    sparsification: ClassVar[str | None] = "magnitude"
    sign_consensus: ClassVar[bool] = True


@dataclass(frozen=True)
class DareLinear(TaskArithmetic):
    """DARE: drop task-vector entries at random with probability 1 - density, rescale, then add up."""

    name: str = "dare_linear"
    parameters: ClassVar[tuple[Parameter, ...]] = (
        DENSITY,
        LAMBDA,
        _normalize(False),
        dataclasses.replace(RESCALE, default=True),
        SEED,
    )
    title: ClassVar[str] = "DARE, Yu et al. 2024"
    paper: ClassVar[str] = "arXiv:2311.03099"
    summary: ClassVar[str] = (
        "DARE: task-vector entries randomly dropped and the rest rescaled, then added to the base."
    )
    sparsification: ClassVar[str | None] = "random"


@dataclass(frozen=True)
class DareTies(DareLinear):
    """DARE's random drop followed by TIES' sign election."""

    name: str = "dare_ties"
    title: ClassVar[str] = "DARE with TIES sign election, Yu et al. 2024"
    summary: ClassVar[str] = "DARE's drop and rescale followed by TIES sign election."
    sign_consensus: ClassVar[bool] = True


@dataclass(frozen=True)
class Slerp(MergeMethod):
    """Spherical interpolation from the base (t=0) to exactly one other model (t=1), over the whole tensor.

    As in mergekit, per-model weights are not used: ``t`` sets the mix.
    """

    name: str = "slerp"
    needs_base: bool = True
    parameters: ClassVar[tuple[Parameter, ...]] = (T,)
    uses_weights: ClassVar[bool] = False
    title: ClassVar[str] = "spherical linear interpolation, Shoemake 1985"
    paper: ClassVar[str] = "doi:10.1145/325165.325242"
    kernel: ClassVar[str] = "slerp"
    summary: ClassVar[str] = "spherical linear interpolation between two models."

    def temporary_bytes(self, numel: int, itemsize: int) -> int:
        return 2 * numel * itemsize  # both tensors normalised, for their angle

    def check_models(self, count: int) -> None:
        if count != 1:
            raise CocktailError(
                "merge method 'slerp' merges exactly two models, the base (t=0) and one other (t=1), but got "
                f"{count} models besides the base"
            )


GAMMA = Parameter(
    "gamma",
    float,
    0.01,
    "fraction of each task vector's largest entries dropped as outliers",
    0.0,
    1.0,
    per_model=True,
)
EPSILON = Parameter(
    "epsilon",
    float,
    0.15,
    "spread of the keep probabilities: from density - epsilon (smallest entries) to density + epsilon",
    per_model=True,
)


@dataclass(frozen=True)
class Breadcrumbs(TaskArithmetic):
    """Model Breadcrumbs: drop each task vector's largest entries (outliers, ``gamma``) and its smallest, keeping
    ``density`` of them, then add up."""

    name: str = "breadcrumbs"
    parameters: ClassVar[tuple[Parameter, ...]] = (
        DENSITY,
        GAMMA,
        LAMBDA,
        _normalize(False),
        dataclasses.replace(RESCALE, default=False),
    )
    title: ClassVar[str] = "Model Breadcrumbs, Davari and Belilovsky 2024"
    paper: ClassVar[str] = "arXiv:2312.06795"
    summary: ClassVar[str] = (
        "Model Breadcrumbs: each task vector loses its largest entries (outliers) and its smallest, then the rest "
        "are added to the base."
    )
    sparsification: ClassVar[str | None] = "magnitude_outliers"

    def temporary_bytes(self, numel: int, itemsize: int) -> int:
        if self.elementwise:
            return 0
        # two keep/drop masks (bool) and the float32 magnitudes ranked for both thresholds (or |delta|)
        return 2 * numel + numel * max(4, itemsize)


@dataclass(frozen=True)
class BreadcrumbsTies(Breadcrumbs):
    """Model Breadcrumbs' sparsification followed by TIES' sign election."""

    name: str = "breadcrumbs_ties"
    title: ClassVar[str] = "Model Breadcrumbs with TIES sign election, Davari and Belilovsky 2024"
    summary: ClassVar[str] = "Model Breadcrumbs' outlier and small-entry drop followed by TIES sign election."
    sign_consensus: ClassVar[bool] = True


@dataclass(frozen=True)
class Della(TaskArithmetic):
    """DELLA: drop task-vector entries at random, the smaller ones more often (MagPrune: keep probabilities from
    ``density - epsilon`` to ``density + epsilon`` by magnitude rank within each row), rescale, elect signs."""

    name: str = "della"
    parameters: ClassVar[tuple[Parameter, ...]] = (
        DENSITY,
        EPSILON,
        LAMBDA,
        _normalize(True),
        dataclasses.replace(RESCALE, default=True),
        SEED,
    )
    title: ClassVar[str] = "DELLA-Merging, Deep et al. 2024"
    paper: ClassVar[str] = "arXiv:2406.11617"
    summary: ClassVar[str] = (
        "DELLA: task-vector entries randomly dropped, small ones more often (MagPrune), the rest rescaled, a sign "
        "elected per parameter, then merged."
    )
    sparsification: ClassVar[str | None] = "della_magprune"
    sign_consensus: ClassVar[bool] = True

    def check_params(self) -> None:
        """density +- epsilon within (0, 1) wherever both are one value (shared, or a model's own); per-layer and
        filtered values are checked per tensor, before its task vectors are sparsified."""
        for settings in [self.params, *({**self.params, **own} for own in self.model_params)]:
            density, epsilon = settings["density"], settings["epsilon"]
            if isinstance(density, int | float) and isinstance(epsilon, int | float):
                self.check_spread(density, epsilon)

    def check_spread(self, density: float, epsilon: float, where: str = "") -> None:
        """mergekit's della_magprune condition: below density 1, keep probabilities from density - epsilon to
        density + epsilon must be probabilities strictly between 0 and 1."""
        if density < 1 and not (0 < density - epsilon and density + epsilon < 1):
            raise CocktailError(
                f"merge method {self.name!r}{where}: density - epsilon and density + epsilon must lie in (0, 1), "
                f"but density={density:g} and epsilon={epsilon:g} give {density - epsilon:g} and "
                f"{density + epsilon:g}: lower epsilon"
            )

    def temporary_bytes(self, numel: int, itemsize: int) -> int:
        if self.elementwise:
            return 0
        # the mask (bool), |delta| for the rescale, and per block of rows: two int64 orders, float32 ranks
        # (reused for the probabilities) and uniform draws
        return numel + numel * max(4, itemsize) + 24 * min(numel, DELLA_BLOCK)


@dataclass(frozen=True)
class DellaLinear(Della):
    """DELLA's MagPrune drop and rescale, then the task vectors added up (no sign election)."""

    name: str = "della_linear"
    parameters: ClassVar[tuple[Parameter, ...]] = (
        DENSITY,
        EPSILON,
        LAMBDA,
        _normalize(False),
        dataclasses.replace(RESCALE, default=True),
        SEED,
    )
    title: ClassVar[str] = "DELLA-Merging without sign election, Deep et al. 2024"
    summary: ClassVar[str] = "DELLA's MagPrune drop and rescale, the task vectors then added to the base."
    sign_consensus: ClassVar[bool] = False


@dataclass(frozen=True)
class ModelStock(MergeMethod):
    """Model Stock: the models' average pulled toward the base by a ratio from the angle between their task
    vectors (per tensor, or per row with ``filter_wise``). Per-model weights are not used, as in mergekit."""

    name: str = "model_stock"
    needs_base: bool = True
    parameters: ClassVar[tuple[Parameter, ...]] = (
        Parameter("filter_wise", bool, False, "one ratio per row (output filter) instead of one per tensor"),
    )
    title: ClassVar[str] = "Model Stock, Jang et al. 2024"
    paper: ClassVar[str] = "arXiv:2403.19522"
    summary: ClassVar[str] = (
        "Model Stock: the fine-tuned models' average interpolated toward the base by a ratio set by the angle "
        "between their task vectors."
    )
    kernel: ClassVar[str] = "model_stock"
    uses_weights: ClassVar[bool] = False

    def temporary_bytes(self, numel: int, itemsize: int) -> int:
        return 2 * numel * itemsize  # the models' average, and one product of two task vectors

    def check_models(self, count: int) -> None:
        if count < 2:
            raise CocktailError(
                f"merge method 'model_stock' needs at least two models besides the base (their task vectors' "
                f"angle sets the ratio), but got {count}"
            )


@dataclass(frozen=True)
class NuSlerp(MergeMethod):
    """mergekit's NuSLERP: spherical interpolation between exactly two models at ``t = w_2 / (w_1 + w_2)``, of
    their task vectors when a base is named; over the flattened tensor, or row by row (or column by column)."""

    name: str = "nuslerp"
    parameters: ClassVar[tuple[Parameter, ...]] = (
        Parameter("nuslerp_flatten", bool, True, "interpolate the tensors flattened (false: row by row)"),
        Parameter("nuslerp_row_wise", bool, False, "without flattening, interpolate columns instead of rows"),
    )
    title: ClassVar[str] = "NuSLERP, spherical linear interpolation (Shoemake 1985) by weights"
    paper: ClassVar[str] = "doi:10.1145/325165.325242"
    summary: ClassVar[str] = (
        "spherical interpolation between two models (or their task vectors from the base), at the ratio of "
        "their weights."
    )
    kernel: ClassVar[str] = "nuslerp"
    optional_base: ClassVar[bool] = True

    def temporary_bytes(self, numel: int, itemsize: int) -> int:
        return 3 * numel * itemsize  # both tensors normalised and their product, or the two terms

    def check_models(self, count: int) -> None:
        if count != 2:
            raise CocktailError(
                f"merge method 'nuslerp' merges exactly two models besides the base, but got {count}"
            )


@dataclass(frozen=True)
class MultiSlerp(MergeMethod):
    """Multi-SLERP: the weighted barycentre of any number of models (or task vectors, with a base) on the
    hypersphere, through the tangent space at their weighted mean direction; norms averaged by weight."""

    name: str = "multislerp"
    parameters: ClassVar[tuple[Parameter, ...]] = (
        Parameter("normalize_weights", bool, True, "divide the weights by their sum"),
        Parameter("eps", float, 1e-8, "added to norms to avoid dividing by zero", minimum=0.0),
    )
    title: ClassVar[str] = "Multi-SLERP, Goddard 2024"
    paper: ClassVar[str] = "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea"
    summary: ClassVar[str] = (
        "spherical interpolation of any number of models (or task vectors from the base) by their weights."
    )
    kernel: ClassVar[str] = "multislerp"
    optional_base: ClassVar[bool] = True

    def temporary_bytes(self, numel: int, itemsize: int) -> int:
        return 3 * numel * itemsize  # the mean direction, the tangent sum and one scaled term

    def check(self, weights: Sequence[float]) -> None:
        super().check(weights)
        plain = all(isinstance(weight, int | float) for weight in weights)
        if (
            self.params["normalize_weights"] is True
            and plain
            and len(weights) > 1
            and math.fsum(weights) == 0
        ):
            raise CocktailError(
                f"merge method 'multislerp' divides the weights by their sum, but {list(weights)} sums to 0: "
                "change the weights or set normalize_weights: false"
            )


@dataclass(frozen=True)
class Karcher(MergeMethod):
    """The Karcher (Riemannian) mean of the models' directions on the hypersphere, found by iteration, scaled
    by their mean norm. Every listed model counts equally: per-model weights are not used, as in mergekit."""

    name: str = "karcher"
    parameters: ClassVar[tuple[Parameter, ...]] = (
        Parameter("max_iter", int, 10, "iterations at most", minimum=0, varies=False),
        Parameter("tol", float, 1e-5, "stops once a step is shorter than this", minimum=0.0),
    )
    title: ClassVar[str] = "Karcher mean merging"
    paper: ClassVar[str] = "arXiv:2603.04972"
    summary: ClassVar[str] = (
        "the Karcher (Riemannian) mean of the models' directions on the hypersphere, at their mean norm."
    )
    kernel: ClassVar[str] = "karcher"
    uses_weights: ClassVar[bool] = False

    def temporary_bytes(self, numel: int, itemsize: int) -> int:
        return 3 * numel * itemsize  # the mean, the tangent step and one term of it


@dataclass(frozen=True)
class Sce(MergeMethod):
    """SCE: Select the entries where the task vectors vary most (``select_topk``), Calculate each model's weight
    from its task vector's mean square, Erase the entries against the elected sign, then merge."""

    name: str = "sce"
    needs_base: bool = True
    parameters: ClassVar[tuple[Parameter, ...]] = (
        Parameter(
            "select_topk",
            float,
            1.0,
            "fraction of entries kept, those that vary most across models",
            0.0,
            1.0,
        ),
        Parameter("int8_mask", bool, False, "mergekit's int8 masks (same result; accepted for its configs)"),
    )
    title: ClassVar[str] = "SCE (select, calculate, erase), Wan et al. 2024"
    paper: ClassVar[str] = "arXiv:2408.07990"
    summary: ClassVar[str] = (
        "SCE: the entries that vary most across task vectors selected, each model weighted by its task vector's "
        "mean square, entries against the elected sign erased, then merged."
    )
    kernel: ClassVar[str] = "sce"
    uses_weights: ClassVar[bool] = False

    def temporary_bytes(self, numel: int, itemsize: int) -> int:
        # the variance (float32, ranked in place) and its mask, or the weight and erase sums
        return numel + 2 * numel * max(4, itemsize)

    def check_models(self, count: int) -> None:
        if count < 1:
            raise CocktailError(
                "merge method 'sce' needs at least one model besides the base: add the models whose task "
                "vectors to merge"
            )


METHODS: dict[str, type[MergeMethod]] = {
    method.name: method
    for method in (
        Linear,
        TaskArithmetic,
        Ties,
        DareLinear,
        DareTies,
        Slerp,
        Breadcrumbs,
        BreadcrumbsTies,
        Della,
        DellaLinear,
        ModelStock,
        NuSlerp,
        MultiSlerp,
        Karcher,
        Sce,
    )
}
# dataclass defaults are class attributes too, so `method.name` above is each class's default name.


def get_method(
    name: str,
    params: Mapping[str, Any] | None = None,
    model_params: Sequence[Mapping[str, Any] | None] | None = None,
) -> MergeMethod:
    """The named method with its parameters validated and defaults filled in, or one clear CocktailError
    (a SettingError, saying where, for a parameter). ``model_params``: each listed model's own settings of
    per-model parameters (None or empty: none)."""
    try:
        method_class = METHODS[name]
    except (KeyError, TypeError):
        raise CocktailError(_unknown("merge method", name, list(METHODS))) from None
    own = tuple(dict(given or {}) for given in model_params or ())
    return method_class(params=dict(params or {}), model_params=own if any(own) else ())
