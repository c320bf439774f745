"""Merge methods as pure functions of one tensor's values across models.

The engine streams a checkpoint tensor by tensor and, for every floating-point tensor, calls the method
with that tensor from each source (already float32, or float64 for float64 inputs). Methods never see
whole models, so every method inherits the engine's memory bound and determinism.

Semantics and defaults follow mergekit 0.1.5 (``mergekit/merge_methods/generalized_task_arithmetic.py``,
``slerp.py`` and ``mergekit/sparsify.py``) so a recipe means the same thing in both tools. As in mergekit,
a method that ``needs_base`` measures task vectors ``theta_i - theta_base`` from a base model that is
*not* one of the task vectors: the engine passes the base tensor separately, and ``tensors`` / ``weights``
hold the other models only (a base that the manifest also lists among the models is dropped from them,
with its weight).

``merge`` is pure; ``merge_`` may overwrite its inputs, which saves the engine a copy of every model's tensor
(it passes its own float32 copies, rows of one preallocated buffer).

Randomness (DARE's drop masks) comes from a generator seeded per tensor from ``(seed, key)`` with a stable
hash, so results are reproducible and independent of the order in which tensors are processed; no global
RNG is used.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from cocktail_bot.errors import CocktailError

RESCALE_EPS = 1e-7  # mergekit's sparsify.rescaled_masked_tensor: below this L1 norm a mask is not rescaled
SLERP_DOT_THRESHOLD = 0.9995  # mergekit's slerp: nearly collinear tensors are interpolated linearly
SLERP_EPS = 1e-8
MASK_CHUNK = 2**20  # DARE's uniform draws are made this many at a time, into one reused float32 buffer
COMBINE_ELEMENTS = 2**18  # entries combined at a time once task vectors are sparsified: small temporaries


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

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    needs_base: bool = False

    parameters: ClassVar[tuple[Parameter, ...]] = ()
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""

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
        copies = [tensor.clone(memory_format=torch.contiguous_format) for tensor in tensors]
        base_copy = None if base is None else base.clone(memory_format=torch.contiguous_format)
        return self.merge_(copies, weights, base_copy, key=key)

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
        raise NotImplementedError


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
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
    if close:
        message += f"; did you mean {close[0]!r}?"
    if choices:
        return f"{message} (valid: {', '.join(choices)})"
    return f"{message} (it takes no parameters)"


@dataclass(frozen=True)
class Linear(MergeMethod):
    """LM-Cocktail's weighted average: sum(w_i * theta_i), the weights summing to 1."""

    name: str = "linear"
    title: ClassVar[str] = "LM-Cocktail weighted average, Xiao et al. 2023"
    paper: ClassVar[str] = "arXiv:2311.13534"

    @property
    def elementwise(self) -> bool:
        return True

    def check(self, weights: Sequence[float]) -> None:
        super().check(weights)
        total = sum(weights)
        if abs(total - 1.0) > 1e-6:
            raise CocktailError(
                f"linear merge weights must sum to 1 (within 1e-6), but {list(weights)} sums to {total!r}"
            )

    def merge_(self, tensors, weights, base, *, key):
        result = tensors[0].mul_(weights[0])
        for tensor, weight in zip(tensors[1:], weights[1:], strict=True):
            result.add_(tensor, alpha=weight)
        return result


def _rescaled(delta: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    """mergekit's rescaled_masked_tensor with the L1 norm: the masked task vector keeps its L1 norm.

    Masks ``delta`` in place: callers own the task vector, so no second copy of a large tensor is made.
    """
    before = delta.abs().sum() if rescale else None
    masked = delta.mul_(mask)
    if before is None:
        return masked
    after = masked.abs().sum()
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return masked
    return masked.mul_(before / after)


def keep_largest(
    delta: torch.Tensor, density: float, rescale: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """TIES' trim step (mergekit's sparsify 'magnitude'): keep the ``density`` fraction of largest magnitude.

    ``delta`` is masked in place (it is the caller's own task vector); ``generator`` is unused.

    Exactly ``max(1, int(density * numel))`` entries are kept, as in mergekit. mergekit ranks them with a full
    argsort (unstable at ties); a selection of the threshold is several times faster on large tensors, and
    entries tied at the threshold are taken by position, as a stable sort would, so results are deterministic.
    The selection is numpy's in-place introselect on one float32 copy of the magnitudes (``torch.kthvalue``
    would add a copy of its own and an int64 index per entry, three times the copy again); the mask is then
    built ``MASK_CHUNK`` entries at a time, so that copy is the only tensor-sized temporary besides the mask.
    """
    if density >= 1:
        return delta
    if delta.numel() == 0:
        return delta.zero_()
    keep = max(1, int(density * delta.numel()))
    magnitude = _magnitude(delta)  # mergekit ranks float32 magnitudes
    threshold = _kth_largest_(magnitude, keep)
    del magnitude
    flat = delta.reshape(-1)
    parts = [slice(start, start + MASK_CHUNK) for start in range(0, flat.numel(), MASK_CHUNK)]
    mask = torch.empty(flat.numel(), dtype=torch.bool, device=delta.device)
    for part in parts:
        torch.gt(_magnitude(flat[part]), threshold, out=mask[part])
    short = keep - int(torch.count_nonzero(mask))  # a bool sum would widen to int64
    for part in parts:
        if short <= 0:
            break
        tied = torch.nonzero(_magnitude(flat[part]) == threshold).squeeze(1)[:short]
        mask[tied + part.start] = True
        short -= tied.numel()
    return _rescaled(delta, mask.reshape(delta.shape), rescale)


def _kth_largest_(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of a flat tensor; on the CPU, ``values`` is reordered in place."""
    if values.device.type != "cpu":
        return torch.kthvalue(values, values.numel() - k + 1).values
    values.numpy().partition(values.numel() - k)  # the entry of that rank lands at its sorted place
    return values[values.numel() - k].clone()


def _magnitude(delta: torch.Tensor) -> torch.Tensor:
    """|delta| flattened, in float32."""
    return delta.abs().reshape(-1).float()


def drop_randomly(
    delta: torch.Tensor, density: float, rescale: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """DARE's drop step (mergekit's sparsify 'random'): keep each entry with probability ``density``.

    ``delta`` is masked in place (it is the caller's own task vector).

    Uniform float32 draws below ``density``: the same mask as mergekit's ``torch.bernoulli`` of a float32
    tensor of ``density`` from a generator in the same state (a test checks it), without that tensor. The draws
    come ``MASK_CHUNK`` at a time into one reused buffer, so only the boolean mask is tensor-sized: a CPU
    generator gives the same sequence however the draws are split (a CUDA one does not, and its masks were
    never the CPU's).
    """
    if density >= 1:
        return delta
    mask = torch.empty(delta.numel(), dtype=torch.bool, device=delta.device)
    uniform = torch.empty(min(MASK_CHUNK, delta.numel()), dtype=torch.float32, device=delta.device)
    for start in range(0, delta.numel(), MASK_CHUNK):
        draws = uniform[: min(MASK_CHUNK, delta.numel() - start)]
        torch.rand(draws.shape, generator=generator, out=draws)
        torch.lt(draws, density, out=mask[start : start + draws.numel()])
    del uniform
    return _rescaled(delta, mask.reshape(delta.shape), rescale)


Sparsifier = Callable[[torch.Tensor, float, bool, "torch.Generator | None"], torch.Tensor]
SPARSIFIERS: dict[str, Sparsifier] = {"magnitude": keep_largest, "random": drop_randomly}  # mergekit's names


def tensor_seed(seed: int, key: str) -> int:
    """A 63-bit seed for one tensor from the recipe's seed and the tensor's name (stable across processes)."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


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
    sparsification: ClassVar[str | None] = None  # a key of SPARSIFIERS
    sign_consensus: ClassVar[bool] = False

    @property
    def elementwise(self) -> bool:
        # the sign election is per entry; sparsification ranks, masks and rescales the whole tensor
        return self.sparsification is None or self.params["density"] >= 1

    def check_models(self, count: int) -> None:
        if count < 1:
            raise CocktailError(
                f"merge method {self.name!r} needs at least one model besides the base: add the models whose "
                "task vectors to merge"
            )

    def _task_vectors(
        self, tensors: Sequence[torch.Tensor], base: torch.Tensor, key: str
    ) -> Iterator[torch.Tensor]:
        """Each model's task vector, sparsified, in the models' order (one generator per tensor), computed in
        place of the model's tensor."""
        generator = None
        if self.sparsification == "random" and self.params["density"] < 1:
            generator = torch.Generator(device=base.device).manual_seed(tensor_seed(self.params["seed"], key))
        for tensor in tensors:
            delta = tensor.sub_(base)
            if self.sparsification is not None:
                sparsify = SPARSIFIERS[self.sparsification]
                delta = sparsify(delta, self.params["density"], self.params["rescale"], generator)
            yield delta

    @staticmethod
    def _elect_signs(
        deltas: list[torch.Tensor], weight: torch.Tensor, normalize: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """TIES' sign election (mergekit's 'sum' consensus) over weighted task vectors.

        Returns the sum of the entries that agree with the sign of their column's total, and the sum of those
        entries' weights (1 where none agree). The task vectors are weighted in place; the column totals'
        buffer is reused for the result.
        """
        deltas = [delta.mul_(w) for delta, w in zip(deltas, weight, strict=True)]
        mixed = deltas[0].clone()
        for delta in deltas[1:]:
            mixed.add_(delta)
        positive = mixed >= 0
        mixed.zero_()
        divisor = torch.zeros_like(mixed) if normalize else None
        for delta, w in zip(deltas, weight.tolist(), strict=True):
            agrees = torch.where(positive, delta > 0, delta < 0)
            mixed.add_(delta.mul_(agrees))
            if divisor is not None:
                divisor.add_(agrees, alpha=w)
        if divisor is not None:
            divisor[divisor == 0] = 1
        return mixed, divisor

    def _combine_(self, deltas: list[torch.Tensor], weight: torch.Tensor, base: torch.Tensor) -> None:
        """base += the merged task vector, on one slice of the entries (every step here is elementwise)."""
        normalize = self.params["normalize"]
        if self.sign_consensus:
            mixed, divisor = self._elect_signs(deltas, weight, normalize)
        else:
            mixed = deltas[0].mul_(weight[0])
            for delta, w in zip(deltas[1:], weight[1:], strict=True):
                mixed.add_(delta.mul_(w))
            divisor = weight.sum()
            if divisor.abs() < 1e-8:
                divisor = torch.ones_like(divisor)
        if normalize:
            mixed /= divisor
        if self.params["lambda"] != 1:
            mixed *= self.params["lambda"]
        base.add_(mixed)

    def merge_(self, tensors, weights, base, *, key):
        """Task vectors in place of the models' tensors (sparsified over the whole tensor), then their
        combination slice by slice into the base's tensor, so that its temporaries stay small."""
        if base is None:
            self.check_base(None)
        deltas = [delta.view(-1) for delta in self._task_vectors(tensors, base, key)]
        result = base.view(-1)
        weight = torch.tensor(list(weights), dtype=base.dtype, device=base.device)
        for start in range(0, result.numel(), COMBINE_ELEMENTS):
            end = min(start + COMBINE_ELEMENTS, result.numel())
            self._combine_([delta[start:end] for delta in deltas], weight, result[start:end])
        return base


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
    title: ClassVar[str] = "spherical linear interpolation, Shoemake 1985"
    paper: ClassVar[str] = "doi:10.1145/325165.325242"

    def check_models(self, count: int) -> None:
        if count != 1:
            raise CocktailError(
                "merge method 'slerp' merges exactly two models, the base (t=0) and one other (t=1), but got "
                f"{count} models besides the base"
            )

    def merge_(self, tensors, weights, base, *, key):
        if base is None:
            self.check_base(None)
        (other,) = tensors
        t = self.params["t"]
        a, b = base.reshape(-1), other.reshape(-1)
        norm_a, norm_b = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
        norm_a = torch.where(norm_a > SLERP_EPS, norm_a, 1)
        norm_b = torch.where(norm_b > SLERP_EPS, norm_b, 1)
        dot = torch.dot(a / norm_a, b / norm_b).clamp(-1, 1)
        if dot.abs() > SLERP_DOT_THRESHOLD:
            return base.mul_(1 - t).add_(other.mul_(t))
        theta = torch.acos(dot)
        sin_theta = torch.sin(theta)
        result = base.mul_(torch.sin((1 - t) * theta) / sin_theta)
        return result.add_(other.mul_(torch.sin(t * theta) / sin_theta))


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
