"""Loss and top-1 accuracy of each source and the merge on each example set.

This is the paper's "target task vs other tasks" table, on the user's own data: it shows whether the merge
kept the fine-tune's gain on the target set while recovering the other sets. The losses are the ones weights
are computed from, so the table and the weights tell one story.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cocktail_bot.examples import load_examples
from cocktail_bot.model_types import ModelType
from cocktail_bot.report import EvalResult
from cocktail_bot.weights import DEFAULT_SEED

if TYPE_CHECKING:
    from cocktail_bot.remote import HubModel


def evaluate(
    models: Mapping[str, str | Path | HubModel],
    model_type: ModelType | str,
    eval_sets: Mapping[str, str | Path | Sequence[Mapping]],
    *,
    max_input_length: int = 2048,
    neg_number: int = 7,
    batch_size: int = 2,
    device: str = "auto",
    seed: int = DEFAULT_SEED,
    progress: bool = True,
    dtype: str = "auto",
) -> list[EvalResult]:
    """One :class:`EvalResult` per (eval set, model), eval sets outermost, models in the order given.

    ``models`` maps a label (a source label, or ``"merged"``) to a local folder or a Hub model read in place; all share one architecture.
    Accuracy is reported for encoders and rerankers (the positive ranked first among its passages).
    """
    from cocktail_bot.scoring import score_models

    model_type = ModelType.parse(model_type)
    example_sets = {name: load_examples(source, model_type) for name, source in eval_sets.items()}
    if not models or not example_sets:
        return []
    scoring = score_models(
        list(models.values()),
        model_type,
        example_sets,
        max_input_length=max_input_length,
        neg_number=neg_number,
        batch_size=batch_size,
        device=device,
        seed=seed,
        progress=progress,
        dtype=dtype,
        labels=list(models),
    )
    return [
        EvalResult(
            eval_set=name,
            model=label,
            loss=score[name].loss,
            accuracy=score[name].accuracy,
            examples=score[name].examples,
            dtype=scoring.dtype,
        )
        for name in example_sets
        for label, score in zip(models, scoring.scores, strict=True)
    ]
