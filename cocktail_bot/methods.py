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

import dataclasses
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from cocktail_bot.errors import CocktailError
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
        if isinstance(value, list | dict):
            raise CocktailError(
                f"merge method {method!r}: parameter {self.name!r} takes one value ({self.range_text}), got "
                f"{value!r}; per-layer values are not supported: give one value for the whole model"
            )
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


LAMBDA = Parameter("lambda", float, 1.0, "scales the merged task vector before it is added to the base")
DENSITY = Parameter(
    "density",
    float,
    1.0,
    "fraction of each task vector's entries kept",
    minimum=0.0,
    maximum=1.0,
    exclusive_minimum=True,
)
RESCALE = Parameter("rescale", bool, None, "rescale each sparsified task vector to its original L1 norm")
SEED = Parameter("seed", int, 0, "seeds the random drop masks, per tensor with the tensor's name", minimum=0)
T = Parameter("t", float, None, "interpolation factor: 0 gives the base, 1 the other model", 0.0, 1.0)


def _normalize(default: bool) -> Parameter:
    return Parameter("normalize", bool, default, "divide the merged task vector by the sum of its weights")


@dataclass(frozen=True)
class MergeMethod:
    """A merge method with its parameters, validated (and defaults filled in) once before any tensor is read.

    Subclasses declare ``parameters`` (the schema), ``paper`` and ``title``; ``params`` always holds every
    declared parameter's value, so the card and the report show exactly what was used.
    """

    name: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    needs_base: bool = False

    parameters: ClassVar[tuple[Parameter, ...]] = ()
    uses_weights: ClassVar[bool] = True  # False: per-model weights are not needed (and ignored when given)
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    kernel: ClassVar[str] = ""  # the key of merge_kernels.KERNELS that computes it

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", self._resolve(dict(self.params)))

    def _resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        declared = {parameter.name: parameter for parameter in self.parameters}
        for name in given:
            if name not in declared:
                owner = f"merge method {self.name!r}"
                raise CocktailError(_unknown("parameter", name, list(declared), owner))
        resolved = {}
        for name, parameter in declared.items():
            if name in given:
                resolved[name] = parameter.validate(self.name, given[name])
            elif parameter.default is None:
                raise CocktailError(
                    f"merge method {self.name!r} needs the parameter {name!r} ({parameter.range_text}: "
                    f"{parameter.description})"
                )
            else:
                resolved[name] = parameter.default
        return resolved

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
        settings = ", ".join(f"{name}={_format(value)}" for name, value in self.params.items())
        text = f"{self.name} ({self.title}"
        text += f", {self.paper})" if self.paper else ")"
        return f"{text} with {settings}" if settings else text

    @property
    def paper_url(self) -> str | None:
        """A link to the paper for the card (arXiv or DOI)."""
        scheme, _, identifier = self.paper.partition(":")
        return {"arXiv": f"https://arxiv.org/abs/{identifier}", "doi": f"https://doi.org/{identifier}"}.get(
            scheme
        )

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
        self, models: Sequence[Hashable], weights: Sequence[float] | None, base: Hashable | None
    ) -> None:
        """Every check that can run before a tensor is read, on the recipe's models as listed (base included).

        ``weights`` are one per listed model, or None where they are not known yet (computed from examples).
        """
        self.check_base(base)
        merged = self.split_base(models, base)
        if weights is None:
            self.check_models(len(merged))
        else:
            self.check([weights[index] for index in merged])

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


def _check_finite(weights: Sequence[float]) -> None:
    if not all(math.isfinite(float(w)) for w in weights):
        raise CocktailError(f"weights must be finite numbers, got {list(weights)}")


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


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

    @property
    def elementwise(self) -> bool:
        return True

    def check(self, weights: Sequence[float]) -> None:
        super().check(weights)
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
    kernel: ClassVar[str] = "task_arithmetic"
    sparsification: ClassVar[str | None] = None  # a key of merge_kernels.SPARSIFIERS
    sign_consensus: ClassVar[bool] = False

    @property
    def elementwise(self) -> bool:
        # the sign election is per entry; sparsification ranks, masks and rescales the whole tensor
        return self.sparsification is None or self.params["density"] >= 1

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
    sparsification: ClassVar[str | None] = "random"


@dataclass(frozen=True)
class DareTies(DareLinear):
    """DARE's random drop followed by TIES' sign election."""

    name: str = "dare_ties"
    title: ClassVar[str] = "DARE with TIES sign election, Yu et al. 2024"
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

    def temporary_bytes(self, numel: int, itemsize: int) -> int:
        return 2 * numel * itemsize  # both tensors normalised, for their angle

    def check_models(self, count: int) -> None:
        if count != 1:
            raise CocktailError(
                "merge method 'slerp' merges exactly two models, the base (t=0) and one other (t=1), but got "
                f"{count} models besides the base"
            )


METHODS: dict[str, type[MergeMethod]] = {
    method.name: method for method in (Linear, TaskArithmetic, Ties, DareLinear, DareTies, Slerp)
}
# dataclass defaults are class attributes too, so `method.name` above is each class's default name.


def get_method(name: str, params: Mapping[str, Any] | None = None) -> MergeMethod:
    """The named method with its parameters validated and defaults filled in, or one clear CocktailError."""
    try:
        method_class = METHODS[name]
    except (KeyError, TypeError):
        raise CocktailError(_unknown("merge method", name, list(METHODS))) from None
    return method_class(params=dict(params or {}))
