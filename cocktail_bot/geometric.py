"""The methods that treat a tensor as one vector (or one vector per row) and merge by angles and norms: Model
Stock, NuSLERP, Multi-SLERP and the Karcher mean.

Each follows mergekit 0.1.5's arithmetic step for step (``mergekit/merge_methods/model_stock.py``,
``nuslerp.py``, ``multislerp.py``, ``karcher.py``), so the values are mergekit's, but works in place of the
engine's own copies of the inputs (``MergeMethod.merge_``) with a few tensor-sized temporaries, where mergekit
stacks every input again. Kernels take ``(method, tensors, weights, base, key)`` as in
:mod:`cocktail_bot.merge_kernels`; ``base`` is None where the method runs without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from cocktail_bot.errors import CocktailError

if TYPE_CHECKING:
    from cocktail_bot.methods import MergeMethod

NORM_EPS = 1e-7  # nuslerp's floor under a norm before dividing by it
COLINEAR_EPS = 1e-8  # nuslerp: below this sine the two vectors are interpolated linearly
STOCK_EPS = 1e-6  # model_stock: floor under the norms' product, and the singular denominator


def _vectors(tensor: torch.Tensor, per_row: bool) -> torch.Tensor:
    """The tensor as one vector, or (``per_row``) one vector per slice along its last dimension."""
    if per_row and tensor.dim() >= 2:
        return tensor.reshape(-1, tensor.shape[-1])
    return tensor.reshape(-1)


def model_stock(
    method: MergeMethod, tensors: Sequence[torch.Tensor], weights, base, key: str
) -> torch.Tensor:
    """``t * average + (1 - t) * base`` with ``t = N cos / (1 + (N - 1) cos)``, ``cos`` the mean cosine between
    pairs of task vectors (per tensor, or per row with ``filter_wise``); the base where the ratio is singular."""
    per_row = method.params["filter_wise"]
    w_0 = _vectors(base, per_row)
    ws = [_vectors(tensor, per_row) for tensor in tensors]
    average = ws[0].clone()
    for weight in ws[1:]:
        average.add_(weight)
    average.div_(len(ws))
    offsets = [weight.sub_(w_0) for weight in ws]  # in place: the models' tensors are not needed again
    norms = [torch.norm(offset, dim=-1) for offset in offsets]
    product = torch.empty_like(w_0)
    cos_thetas = []
    for index, offset_a in enumerate(offsets):
        for other, offset_b in enumerate(offsets[index + 1 :], start=index + 1):
            norm_product = norms[index] * norms[other]
            dot = torch.mul(offset_a, offset_b, out=product).sum(dim=-1)
            cos_thetas.append((dot / norm_product.clamp(min=STOCK_EPS)).clamp(-1, 1))
    del product
    cos_theta = torch.stack(cos_thetas).mean(dim=0).unsqueeze(-1)
    count = len(ws)
    denominator = 1 + (count - 1) * cos_theta
    singular = denominator.abs() < STOCK_EPS
    safe_denominator = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos_theta), (count * cos_theta) / safe_denominator)
    return w_0.mul_(1 - t).add_(average.mul_(t)).reshape(base.shape)


def nuslerp(method: MergeMethod, tensors: Sequence[torch.Tensor], weights, base, key: str) -> torch.Tensor:
    """SLERP between the two models (their task vectors when there is a base) at ``t = w_2 / (w_1 + w_2)``
    (0.5 where the weights cancel): over the flattened tensor, or per row (per column with ``nuslerp_row_wise``)."""
    first, second = tensors
    total = weights[0] + weights[1]
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    if base is not None:
        first.sub_(base)
        second.sub_(base)
    flatten, row_wise = method.params["nuslerp_flatten"], method.params["nuslerp_row_wise"]
    v0, v1 = first, second
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    unit_0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=NORM_EPS)
    unit_1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=NORM_EPS)
    cos_theta = torch.sum(unit_0.mul_(unit_1), dim=-1, keepdim=True).clamp(-1, 1)
    del unit_0, unit_1
    colinear = (1 - cos_theta.square()) <= COLINEAR_EPS**2
    theta = torch.acos(torch.where(colinear, 0, cos_theta))
    sin_theta = torch.sin(theta)
    linear = None
    if bool(colinear.any()):
        linear = v0 * (1 - t)
        linear.add_(v1 * t)
    result = v0.mul_(torch.sin((1 - t) * theta)).add_(v1.mul_(torch.sin(t * theta))).div_(sin_theta)
    if linear is not None:
        result = torch.where(colinear, linear, result)
    merged = result.transpose(0, -1) if row_wise and not flatten else result
    merged = merged.reshape(first.shape)
    return merged if base is None else base.add_(merged)


def multislerp(method: MergeMethod, tensors: Sequence[torch.Tensor], weights, base, key: str) -> torch.Tensor:
    """The weighted barycentre on the hypersphere: unit vectors averaged, projected to the tangent space at
    their mean direction, averaged there and mapped back; scaled by the weighted mean norm (of task vectors
    when there is a base)."""
    if len(tensors) == 1:
        return tensors[0]
    eps = method.params["eps"]
    vectors = [tensor.view(-1) for tensor in tensors]
    if base is not None:
        for vector in vectors:
            vector.sub_(base.view(-1))
    weight = torch.tensor(list(weights), dtype=vectors[0].dtype, device=vectors[0].device)
    if method.params["normalize_weights"]:
        if float(weight.sum()) == 0:
            raise CocktailError(
                f"multislerp cannot merge tensor {key!r}: its weights {list(weights)} sum to 0 and "
                "normalize_weights divides by their sum; change the weights or set normalize_weights: false"
            )
        weight = weight / weight.sum()
    norms = torch.stack([torch.norm(vector, dim=-1) for vector in vectors])
    scale = norms + eps
    mean = torch.zeros_like(vectors[0])
    term = torch.empty_like(mean)
    for vector, divisor, w in zip(vectors, scale, weight, strict=True):
        mean.add_(torch.div(vector, divisor, out=term).mul_(w))
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if len(vectors) != 2:
            raise CocktailError(
                f"multislerp cannot merge tensor {key!r}: the weighted sum of its unit vectors is zero (opposite "
                "vectors with weights that balance out); change the weights"
            )
        result = vectors[0].mul_(weight[0]).add_(vectors[1].mul_(weight[1]))
        return result.view(tensors[0].shape) if base is None else base.add_(result.view(base.shape))
    mean.div_(mean_norm)
    units = [vector.div_(divisor) for vector, divisor in zip(vectors, scale, strict=True)]
    tangent = torch.zeros_like(mean)
    for unit, w in zip(units, weight, strict=True):
        dot = torch.mul(unit, mean, out=term).sum(-1)
        unit.sub_(torch.mul(mean, dot, out=term))
        tangent.add_(unit.mul_(w))
    del term
    tangent_norm = torch.norm(tangent) + eps
    result = mean.mul_(torch.cos(tangent_norm)).add_(tangent.mul_(torch.sin(tangent_norm) / tangent_norm))
    result.mul_((norms * weight).sum())
    result = result.view(tensors[0].shape)
    return result if base is None else base.add_(result)


def karcher(method: MergeMethod, tensors: Sequence[torch.Tensor], weights, base, key: str) -> torch.Tensor:
    """The weighted Karcher mean of the models' directions on the unit hypersphere (every model weighted
    equally, as in mergekit), iterated up to ``max_iter`` times, scaled by the models' mean norm."""
    if len(tensors) == 1:
        return tensors[0]
    max_iter, tol = method.params["max_iter"], method.params["tol"]
    alphas = [1.0 / len(tensors)] * len(tensors)
    vectors = [tensor.view(-1) for tensor in tensors]
    norms = [torch.linalg.vector_norm(vector) for vector in vectors]
    units = [
        vector.div_(norm) if norm.item() != 0.0 else vector
        for vector, norm in zip(vectors, norms, strict=True)
    ]
    valid = [index for index, norm in enumerate(norms) if norm.item() > tol]
    if not valid:
        return vectors[0].zero_().view(tensors[0].shape)
    alpha_sum = sum(alphas[index] for index in valid)
    valid_alphas = [alphas[index] / alpha_sum for index in valid]
    valid_units = [units[index] for index in valid]
    term = torch.empty_like(valid_units[0])
    mean = torch.zeros_like(valid_units[0])
    for alpha, unit in zip(valid_alphas, valid_units, strict=True):
        mean.add_(torch.mul(unit, alpha, out=term))
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm.item() < tol:
        mean.copy_(valid_units[0])
    else:
        mean.div_(mean_norm)
    tangent = torch.empty_like(mean)
    for _ in range(max_iter):
        tangent.zero_()
        for alpha, unit in zip(valid_alphas, valid_units, strict=True):
            dot = torch.clamp(torch.dot(mean, unit), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            step = torch.sub(unit, torch.mul(mean, dot, out=term), out=term)
            tangent.add_(step.mul_(alpha * (theta / torch.sin(theta))))
        tangent_norm = torch.linalg.vector_norm(tangent)
        if tangent_norm.item() < tol:
            break
        mean.mul_(torch.cos(tangent_norm)).add_(tangent.div_(tangent_norm).mul_(torch.sin(tangent_norm)))
        unit_norm = torch.linalg.vector_norm(mean)
        if unit_norm.item() > tol:
            mean.div_(unit_norm)
    scale = sum(alpha * norm for alpha, norm in zip(alphas, norms, strict=True))
    return mean.mul_(scale).view(tensors[0].shape)
