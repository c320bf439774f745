"""The merge methods' arithmetic: pure functions of one tensor's values across models.

The engine streams a checkpoint tensor by tensor and, for every floating-point tensor, calls the method
with that tensor from each source (already float32, or float64 for float64 inputs). Methods never see
whole models, so every method inherits the engine's memory bound and determinism. Which method, with which
parameters, is :mod:`cocktail_bot.methods` (free of torch); this module only computes.

``merge`` is pure; ``merge_`` may overwrite its inputs, which saves the engine a copy of every model's tensor
(it passes its own float32 copies, rows of one preallocated buffer).

Randomness (DARE's drop masks) comes from a generator seeded per tensor from ``(seed, key)`` with a stable
hash, so results are reproducible and independent of the order in which tensors are processed; no global
RNG is used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from cocktail_bot.methods import MergeMethod, Slerp, TaskArithmetic

RESCALE_EPS = 1e-7  # mergekit's sparsify.rescaled_masked_tensor: below this L1 norm a mask is not rescaled
SLERP_DOT_THRESHOLD = 0.9995  # mergekit's slerp: nearly collinear tensors are interpolated linearly
SLERP_EPS = 1e-8
MASK_CHUNK = 2**20  # DARE's uniform draws are made this many at a time, into one reused float32 buffer
COMBINE_ELEMENTS = 2**18  # entries combined at a time once task vectors are sparsified: small temporaries


def merge(
    method: MergeMethod,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    base: torch.Tensor | None,
    *,
    key: str,
) -> torch.Tensor:
    """``method`` on one tensor; inputs are never modified, the result is a new tensor in the inputs' dtype."""
    copies = [tensor.clone(memory_format=torch.contiguous_format) for tensor in tensors]
    base_copy = None if base is None else base.clone(memory_format=torch.contiguous_format)
    return merge_(method, copies, weights, base_copy, key=key)


def merge_(
    method: MergeMethod,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    base: torch.Tensor | None,
    *,
    key: str,
) -> torch.Tensor:
    """``merge`` on contiguous inputs the caller gives up: they may be overwritten, and the result may be one
    of them. The same arithmetic, step for step, as ``merge``: the results are bit-identical."""
    if method.needs_base and base is None:
        method.check_base(None)
    if not method.resolved:  # a direct call: the listed models are the tensors', outside any layer
        method = method.at(key, 0.0, range(len(tensors)))
    return KERNELS[method.kernel](method, tensors, weights, base, key)


def linear(method: MergeMethod, tensors, weights, base, key: str) -> torch.Tensor:
    """LM-Cocktail's weighted average, accumulated into the first model's tensor."""
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


# ---- task arithmetic family (task_arithmetic, TIES, DARE) ---------------------------------------------


def _task_vectors(
    method: TaskArithmetic, tensors: Sequence[torch.Tensor], base: torch.Tensor, key: str
) -> Iterator[torch.Tensor]:
    """Each model's task vector, sparsified with that model's density, in the models' order (one generator per
    tensor), computed in place of the model's tensor."""
    params = method.params
    generator = None
    if method.sparsification == "random" and min(params["density"]) < 1:
        generator = torch.Generator(device=base.device).manual_seed(tensor_seed(params["seed"], key))
    densities = params.get("density", [1.0] * len(tensors))  # one per model (task_arithmetic: none)
    for tensor, density in zip(tensors, densities, strict=True):
        delta = tensor.sub_(base)
        if method.sparsification is not None:
            sparsify = SPARSIFIERS[method.sparsification]
            delta = sparsify(delta, density, params["rescale"], generator)
        yield delta


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


def _combine_(
    method: TaskArithmetic, deltas: list[torch.Tensor], weight: torch.Tensor, base: torch.Tensor
) -> None:
    """base += the merged task vector, on one slice of the entries (every step here is elementwise)."""
    normalize = method.params["normalize"]
    divisor: torch.Tensor | None
    if method.sign_consensus:
        mixed, divisor = _elect_signs(deltas, weight, normalize)
    else:
        mixed = deltas[0].mul_(weight[0])
        for delta, w in zip(deltas[1:], weight[1:], strict=True):
            mixed.add_(delta.mul_(w))
        divisor = weight.sum()
        if divisor.abs() < 1e-8:
            divisor = torch.ones_like(divisor)
    if normalize and divisor is not None:
        mixed /= divisor
    if method.params["lambda"] != 1:
        mixed *= method.params["lambda"]
    base.add_(mixed)


def task_arithmetic(method: TaskArithmetic, tensors, weights, base, key: str) -> torch.Tensor:
    """Task vectors in place of the models' tensors (sparsified over the whole tensor), then their
    combination slice by slice into the base's tensor, so that its temporaries stay small."""
    deltas = [delta.view(-1) for delta in _task_vectors(method, tensors, base, key)]
    result = base.view(-1)
    weight = torch.tensor(list(weights), dtype=base.dtype, device=base.device)
    for start in range(0, result.numel(), COMBINE_ELEMENTS):
        end = min(start + COMBINE_ELEMENTS, result.numel())
        _combine_(method, [delta[start:end] for delta in deltas], weight, result[start:end])
    return base


def slerp(method: Slerp, tensors, weights, base, key: str) -> torch.Tensor:
    """Spherical interpolation from the base to the one other model, over the whole tensor."""
    (other,) = tensors
    t = method.params["t"]
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


Kernel = Callable[..., torch.Tensor]
KERNELS: dict[str, Kernel] = {"linear": linear, "task_arithmetic": task_arithmetic, "slerp": slerp}
