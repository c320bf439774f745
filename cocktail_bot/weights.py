"""Example-based merge weights: ``softmax(-loss_i / temperature)`` over each model's loss on a few examples.

A model that already does the target task well has a low loss and gets a large weight; a helper model that
does not help gets a small one. The temperature sets how sharply the best model dominates (LM_Cocktail's
default, 5).

Losses and weights are rounded to ``DECIMALS`` decimal places: a loss computed on another CPU differs around
its 8th digit, and unrounded weights would make a different model and a different lock. The weights are the
softmax of the rounded losses, rounded in turn, the largest taking what rounding left so that they sum to 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cocktail_bot.errors import CocktailError
from cocktail_bot.examples import load_examples
from cocktail_bot.model_types import ModelType

if TYPE_CHECKING:
    from cocktail_bot.remote import HubModel

DEFAULT_SEED = 0
DECIMALS = 4  # of losses and example-based weights: the same examples give the same weights on any CPU


@dataclass(frozen=True)
class WeightsResult:
    models: list[str]
    losses: list[float]
    weights: list[float]
    dtype: str = "float32"  # the dtype the losses were computed in


def _check_temperature(temperature: float) -> None:
    """A softmax temperature must be positive and finite (checked before any model is scored, too)."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise CocktailError(f"temperature must be a positive number, got {temperature}")


def softmax_weights(losses: Sequence[float], temperature: float) -> list[float]:
    """``softmax(-loss / temperature)``, computed stably; a non-finite loss or temperature is refused."""
    _check_temperature(temperature)
    if not losses:
        raise CocktailError("no losses to turn into weights: give at least one model")
    for index, loss in enumerate(losses):
        if not math.isfinite(loss):
            raise CocktailError(f"the loss of model {index} is {loss}: weights cannot be computed from it")
    best = min(losses)
    scaled = [math.exp(-(loss - best) / temperature) for loss in losses]
    total = sum(scaled)
    return [value / total for value in scaled]


def rounded_weights(losses: Sequence[float], temperature: float) -> list[float]:
    """``softmax_weights`` rounded to ``DECIMALS`` places; the largest takes the rest, so they sum to 1."""
    weights = [round(weight, DECIMALS) for weight in softmax_weights(losses, temperature)]
    largest = weights.index(max(weights))
    weights[largest] = round(1.0 - sum(weights[:largest]) - sum(weights[largest + 1 :]), DECIMALS)
    return weights


def compute_weights(
    models: Sequence[str | Path | HubModel],
    model_type: ModelType | str,
    examples: str | Path | Sequence[Mapping],
    temperature: float = 5.0,
    max_input_length: int = 2048,
    neg_number: int = 7,
    batch_size: int = 2,
    device: str = "auto",
    seed: int = DEFAULT_SEED,
    progress: bool = True,
    labels: Sequence[str] | None = None,
    dtype: str = "auto",
) -> WeightsResult:
    """Losses of each model (local folders or Hub models read in place, one architecture) on ``examples``
    and the weights they give.

    ``examples`` is an example file (JSON list or JSONL) or the records themselves; ``labels`` name the models
    in logs and messages (default: their paths). Negatives are sampled with
    ``seed``, so the same inputs always give the same weights; losses and weights are rounded to ``DECIMALS``
    places, so that they are the same on any CPU. ``dtype`` is the compute dtype of the losses (``auto``:
    float32 on CPU, the checkpoint's dtype on a GPU).
    """
    from cocktail_bot.scoring import score_models

    model_type = ModelType.parse(model_type)
    _check_temperature(temperature)
    records = load_examples(examples, model_type)
    scoring = score_models(
        models,
        model_type,
        {"examples": records},
        max_input_length=max_input_length,
        neg_number=neg_number,
        batch_size=batch_size,
        device=device,
        seed=seed,
        progress=progress,
        labels=labels,
        dtype=dtype,
    )
    losses = [score["examples"].loss for score in scoring.scores]
    labels = list(labels) if labels is not None else [str(model) for model in models]
    for label, loss in zip(labels, losses, strict=True):
        if not math.isfinite(loss):
            raise CocktailError(f"the loss of {label} on the examples is {loss}: check the model's weights")
    losses = [round(loss, DECIMALS) for loss in losses]
    return WeightsResult(
        models=labels, losses=losses, weights=rounded_weights(losses, temperature), dtype=scoring.dtype
    )
