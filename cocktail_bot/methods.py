"""Merge methods as pure functions of one tensor's values across models.

The engine streams a checkpoint tensor by tensor and, for every floating-point tensor, calls the method with that
tensor from each source (already float32, or float64 for float64 inputs). Methods never see whole models, so every
method inherits the engine's memory bound and determinism.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cocktail_bot.errors import CocktailError


@dataclass(frozen=True)
class MergeMethod:
    """A merge method with its parameters, validated once before any tensor is read."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    needs_base: bool = False

    def check(self, weights: Sequence[float]) -> None:
        """Raise CocktailError if these weights (one per model) cannot be used with this method."""
        raise NotImplementedError

    def merge(self, tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor | None,
              *, key: str) -> torch.Tensor:
        """Merge one tensor. ``key`` is the tensor's name (seeds per-tensor randomness such as DARE's masks)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Linear(MergeMethod):
    """LM-Cocktail's weighted average: sum(w_i * theta_i), the weights summing to 1."""

    name: str = "linear"

    def check(self, weights: Sequence[float]) -> None:
        if not all(torch.isfinite(torch.tensor(float(w))) for w in weights):
            raise CocktailError(f"weights must be finite numbers, got {list(weights)}")
        total = sum(weights)
        if abs(total - 1.0) > 1e-6:
            raise CocktailError(
                f"linear merge weights must sum to 1 (within 1e-6), but {list(weights)} sums to {total!r}"
            )

    def merge(self, tensors, weights, base, *, key):
        result = tensors[0] * weights[0]
        for tensor, weight in zip(tensors[1:], weights[1:]):
            result.add_(tensor, alpha=weight)
        return result


METHODS: dict[str, type[MergeMethod]] = {"linear": Linear}


def get_method(name: str, params: Mapping[str, Any] | None = None) -> MergeMethod:
    try:
        method_class = METHODS[name]
    except KeyError:
        raise CocktailError(f"unknown merge method {name!r}: use one of {', '.join(METHODS)}") from None
    return method_class(params=dict(params or {}))
