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
from typing import TYPE_CHECKING, cast

import torch

from cocktail_bot import geometric
from cocktail_bot.memory import DELLA_BLOCK

if TYPE_CHECKING:
    from cocktail_bot.methods import Della, MergeMethod, Sce, Slerp, TaskArithmetic

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

    Exactly ``max(1, int(density * numel))`` entries are kept, as in mergekit; see :func:`_ranked_mask` for how
    they are found without mergekit's full argsort.
    """
    if density >= 1:
        return delta
    if delta.numel() == 0:
        return delta.zero_()
    mask = _ranked_mask(delta.reshape(-1), max(1, int(density * delta.numel())), largest=True)
    return _rescaled(delta, mask.reshape(delta.shape), rescale)


def drop_outliers(delta: torch.Tensor, density: float, gamma: float, rescale: bool) -> torch.Tensor:
    """Model Breadcrumbs' sparsification (mergekit's 'magnitude_outliers'): drop the ``gamma`` fraction of largest
    magnitude, then the smallest, so that ``int(density * numel)`` entries stay (fewer outliers go if needed).

    ``delta`` is masked in place. mergekit keeps the entries of ascending ranks ``[bottom, bottom + keep)``: the
    ``bottom + keep`` smallest without the ``bottom`` smallest, each found as :func:`_ranked_mask` finds them.
    """
    if density >= 1:
        return delta
    numel = delta.numel()
    keep = int(density * numel)
    bottom = max(0, numel - keep - int(gamma * numel))
    flat = delta.reshape(-1)
    mask = _ranked_mask(flat, bottom + keep, largest=False)
    mask &= _ranked_mask(flat, bottom, largest=False).logical_not_()
    return _rescaled(delta, mask.reshape(delta.shape), rescale)


def _ranked_mask(flat: torch.Tensor, count: int, largest: bool) -> torch.Tensor:
    """The ``count`` entries of largest (or smallest) magnitude, entries tied at the threshold taken by position,
    as a stable sort would take them, so results are deterministic.

    mergekit ranks them with a full sort (unstable at ties); a selection of the threshold is several times faster
    on large tensors. The selection is numpy's in-place introselect on one float32 copy of the magnitudes
    (``torch.kthvalue`` would add a copy of its own and an int64 index per entry, three times the copy again);
    the mask is then built ``MASK_CHUNK`` entries at a time, so that copy is the only tensor-sized temporary
    besides the mask.
    """
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if count <= 0:
        return mask
    if count >= flat.numel():
        return mask.fill_(True)
    magnitude = _magnitude(flat)  # mergekit ranks float32 magnitudes
    rank = count if largest else flat.numel() - count + 1  # the threshold's rank from the top
    threshold = _kth_largest_(magnitude, rank)
    del magnitude
    beyond = torch.gt if largest else torch.lt
    parts = [slice(start, start + MASK_CHUNK) for start in range(0, flat.numel(), MASK_CHUNK)]
    for part in parts:
        beyond(_magnitude(flat[part]), threshold, out=mask[part])
    short = count - int(torch.count_nonzero(mask))  # a bool sum would widen to int64
    for part in parts:
        if short <= 0:
            break
        tied = torch.nonzero(_magnitude(flat[part]) == threshold).squeeze(1)[:short]
        mask[tied + part.start] = True
        short -= tied.numel()
    return mask


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


def magprune(
    delta: torch.Tensor, density: float, epsilon: float, rescale: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """DELLA's MagPrune (mergekit's 'della_magprune'): keep each entry with a probability from ``density -
    epsilon`` (the smallest magnitude of its row) to ``density + epsilon`` (the largest), by rank in its row.

    ``delta`` is masked in place. mergekit ranks each row (a 1-D tensor is one row) and draws one Bernoulli per
    entry; uniform float32 draws below the probabilities are the same draws (a test checks it). Rows are ranked
    and drawn ``DELLA_BLOCK`` entries at a time (at least one row), in order, so the temporaries stay small and
    the generator gives the same sequence as over the whole tensor.
    """
    if density >= 1:
        return delta
    matrix = delta.unsqueeze(0) if delta.dim() < 2 else delta
    mask = torch.empty(matrix.shape, dtype=torch.bool, device=delta.device)
    if matrix.dim() > 2:  # ranked along dim 1 as mergekit ranks them; not in the models cocktail-bot merges
        probabilities = _keep_probabilities(matrix, density, epsilon)
        torch.lt(torch.rand(matrix.shape, generator=generator, device=delta.device), probabilities, out=mask)
    else:
        step = max(1, DELLA_BLOCK // max(1, matrix.shape[1]))
        for start in range(0, matrix.shape[0], step):
            block = matrix[start : start + step]
            probabilities = _keep_probabilities(block, density, epsilon)
            draws = torch.rand(block.shape, generator=generator, device=delta.device)
            torch.lt(draws, probabilities, out=mask[start : start + step])
    return _rescaled(delta, mask.reshape(delta.shape), rescale)


def _keep_probabilities(block: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """mergekit's della_magprune probabilities, step for step (the same float32 values)."""
    ranks = torch.argsort(torch.argsort(block.abs(), dim=1), dim=1).to(torch.float32) + 1
    min_ranks = ranks.min(dim=1, keepdim=True).values
    max_ranks = ranks.max(dim=1, keepdim=True).values
    rank_norm = ((ranks - min_ranks) / (max_ranks - min_ranks)).clamp(0, 1)
    return (density - epsilon) + rank_norm * 2 * epsilon


def _sparsify(
    method: TaskArithmetic, index: int, delta: torch.Tensor, generator: torch.Generator | None, key: str
) -> torch.Tensor:
    """The method's sparsification (mergekit's names) of model ``index``'s task vector, in place, with that
    model's values of the per-model parameters (density, gamma, epsilon)."""
    params = method.params
    density, rescale = params["density"][index], params["rescale"]
    if method.sparsification == "magnitude":
        return keep_largest(delta, density, rescale)
    if method.sparsification == "random":
        return drop_randomly(delta, density, rescale, generator)
    if method.sparsification == "magnitude_outliers":
        return drop_outliers(delta, density, params["gamma"][index], rescale)
    if method.sparsification == "della_magprune":
        epsilon = params["epsilon"][index]
        cast("Della", method).check_spread(density, epsilon, f" (tensor {key!r}, model {index + 1})")
        return magprune(delta, density, epsilon, rescale, generator)
    raise ValueError(f"unknown sparsification {method.sparsification!r}")


RANDOM_SPARSIFICATIONS = ("random", "della_magprune")


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
    if method.sparsification in RANDOM_SPARSIFICATIONS and min(params["density"]) < 1:
        generator = torch.Generator(device=base.device).manual_seed(tensor_seed(params["seed"], key))
    for index, tensor in enumerate(tensors):
        delta = tensor.sub_(base)
        if method.sparsification is not None:
            delta = _sparsify(method, index, delta, generator, key)
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


def sce(method: Sce, tensors, weights, base, key: str) -> torch.Tensor:
    """SCE over task vectors computed in place of the models' tensors: the entries that vary most across them
    kept (``select_topk``), one weight per model from its task vector's mean square, entries against the
    elected sign erased; per-entry sums slice by slice, so the temporaries stay small. Per-model ``weights`` are
    not used (as in mergekit)."""
    deltas = [tensor.sub_(base).view(-1) for tensor in tensors]
    result = base.view(-1)
    if method.params["select_topk"] < 1:
        selected = _most_varying(deltas, method.params["select_topk"])
        for delta in deltas:
            delta.mul_(selected)
    squares = torch.stack([delta.square().mean() for delta in deltas])
    total = torch.sum(squares).item()
    model_weights = torch.ones_like(squares) / len(deltas) if abs(total) < 1e-6 else squares / total
    for start in range(0, result.numel(), COMBINE_ELEMENTS):
        end = min(start + COMBINE_ELEMENTS, result.numel())
        _erase_and_merge_([delta[start:end] for delta in deltas], model_weights, result[start:end])
    return base


def _most_varying(deltas: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """SCE's selection: the ``int(fraction * nonzero)`` entries whose values vary most across task vectors
    (population variance), as mergekit's ``sce_mask`` (ties taken by position, see :func:`_ranked_mask`)."""
    variance = torch.empty_like(deltas[0])
    for start in range(0, variance.numel(), COMBINE_ELEMENTS):
        part = slice(start, start + COMBINE_ELEMENTS)
        torch.var(torch.stack([delta[part] for delta in deltas]), dim=0, unbiased=False, out=variance[part])
    keep = int(int(torch.count_nonzero(variance)) * fraction)
    return _ranked_mask(variance, keep, largest=True)


def _erase_and_merge_(deltas: list[torch.Tensor], model_weights: torch.Tensor, base: torch.Tensor) -> None:
    """base += the weighted average of the task vectors' entries that agree with their elected sign (mergekit's
    sce_merge on one slice of the entries)."""
    positive = deltas[0].clone()
    for delta in deltas[1:]:
        positive.add_(delta)
    positive = positive >= 0
    merged = torch.zeros_like(base)
    total = torch.zeros_like(base)
    for delta, weight in zip(deltas, model_weights, strict=True):
        erased = torch.where(positive, delta > 0, delta < 0) * weight
        merged.add_(delta.mul_(erased))
        total.add_(erased)
    base.add_(merged.div_(total.clamp_(min=1e-6)))


Kernel = Callable[..., torch.Tensor]
KERNELS: dict[str, Kernel] = {
    "linear": linear,
    "task_arithmetic": task_arithmetic,
    "slerp": slerp,
    "sce": sce,
    "model_stock": geometric.model_stock,
    "nuslerp": geometric.nuslerp,
    "multislerp": geometric.multislerp,
    "karcher": geometric.karcher,
}
