"""Drop-in replacements for ``LM_Cocktail``'s functions, backed by the streaming engine.

Same names, signatures and results as LM_Cocktail 0.0.4: each returns the merged model loaded with
transformers (``AutoModelForCausalLM``, ``AutoModel`` or ``AutoModelForSequenceClassification``) and writes it
to ``output_path`` when one is given. Unlike LM_Cocktail, a merge never holds every model in memory, the
output is written atomically, and an encoder keeps its base's sentence-transformers modules (its pooling)
instead of being rewritten to CLS pooling. An existing ``output_path`` is written into as LM_Cocktail does, each
file replaced atomically; nothing the merge did not write is deleted. Model names that are not local folders are Hugging Face Hub
references, pinned first; merging and scoring read their safetensors weights from the Hub by range (nothing
whole on disk).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cocktail_bot.engine import check_arguments, merge
from cocktail_bot.errors import CocktailError
from cocktail_bot.methods import SUM_TOLERANCE, get_method
from cocktail_bot.model_types import ModelType, load_transformers_model
from cocktail_bot.remote import HubModel
from cocktail_bot.weights import compute_weights
from cocktail_bot.writable import writing

logger = logging.getLogger(__name__)


def resolve_models(model_names_or_paths: Sequence[str | Path]) -> list[Path | HubModel]:
    """Local folders as they are; anything else is a Hub reference pinned to its commit, whose safetensors
    weights stay on the Hub, read by range (pickle-only repos are downloaded: see ``sources.resolve_source``)."""
    models: list[Path | HubModel] = []
    for reference in model_names_or_paths:
        if Path(reference).is_dir():
            models.append(Path(reference))
        else:
            from cocktail_bot.sources import resolve_source

            models.append(resolve_source(str(reference), stream=True).model)
    return models


def lm_cocktail_weights(weights: Sequence[float]) -> list[float]:
    """LM_Cocktail 0.0.4 takes any weights whose sum is at most 1 + 1e-3 (``[0.33, 0.33, 0.33]``) and scales
    the model by their sum; the drop-in takes the same ones but divides them by their sum, with a note."""
    total = math.fsum(weights)
    if math.isfinite(total) and 0 < total <= 1 + SUM_TOLERANCE:
        return get_method("linear").normalised(weights)
    return list(weights)


def _mix_and_load(
    model_names_or_paths: Sequence[str | Path],
    model_type: str,
    weights: Sequence[float],
    output_path: str | Path | None,
    resolved: Sequence[Path | HubModel] | None = None,
):
    """Merge and load; ``resolved``: the models already pinned (``resolve_models``) for these names."""
    kind = ModelType.parse(model_type)
    weights = lm_cocktail_weights(weights)
    check_arguments(list(model_names_or_paths), weights)
    models = list(resolved) if resolved is not None else resolve_models(model_names_or_paths)
    for name, weight in zip(model_names_or_paths, weights, strict=False):
        logger.info("weight for %s: %s", name, weight)
    if output_path is not None:
        output = Path(output_path)
        if output.is_dir():
            logger.info(
                "writing the merged model into the existing %s; its other files stay (as LM_Cocktail)", output
            )
        with writing(output, "the merged model"):
            merge(models, weights, output, model_type=kind, into_existing=True)
        return load_transformers_model(output, kind)
    with tempfile.TemporaryDirectory(prefix="cocktail-") as scratch:
        output = Path(scratch, "merged")
        with writing(scratch, "the merged model"):
            merge(models, weights, output, model_type=kind)
        return load_transformers_model(output, kind)


def mix_models(
    model_names_or_paths: list[str], model_type: str, weights: list[float], output_path: str | None = None
):
    """Merge models with the given weights (one per model, summing to 1) and return the merged model.

    ``model_type`` is ``decoder``, ``encoder`` or ``reranker``; ``output_path``, when given, receives the
    merged model with the first model's config, tokenizer and sentence-transformers modules.
    """
    return _mix_and_load(model_names_or_paths, model_type, weights, output_path)


def mix_models_by_layers(
    model_names_or_paths: list[str], model_type: str, weights: list[float], output_path: str | None = None
):
    """LM_Cocktail's low-memory variant; the engine always streams, so this is ``mix_models``."""
    return _mix_and_load(model_names_or_paths, model_type, weights, output_path)


def mix_models_with_data(
    model_names_or_paths: list[str],
    model_type: str,
    example_data: list[dict] | None = None,
    temperature: float = 5.0,
    batch_size: int = 2,
    max_input_length: int = 2048,
    neg_number: int = 7,
    output_path: str | None = None,
    *,
    example_ata: list[dict] | None = None,
):
    """Merge models with weights ``softmax(-loss / temperature)`` from their losses on ``example_data``.

    ``example_data`` is a list of records (or an example file); ``example_ata=`` is accepted too, as
    LM_Cocktail 0.0.4 spells it, so existing code runs unchanged. Rerankers work as well (LM_Cocktail refuses
    them). The weights are printed as LM_Cocktail prints them; the merged model is returned and, with
    ``output_path``, saved.
    """
    if example_data is not None and example_ata is not None:
        raise CocktailError("both example_data and example_ata were given: pass the examples once")
    examples = example_data if example_data is not None else example_ata
    if examples is None:
        raise CocktailError("no examples: pass example_data (a list of records or an example file)")
    models = resolve_models(model_names_or_paths)  # scored and merged with Hub weights read in place
    result = compute_weights(
        models,
        model_type,
        examples,
        temperature=temperature,
        max_input_length=max_input_length,
        neg_number=neg_number,
        batch_size=batch_size,
    )
    print("***weight for each model***: ")
    for name, weight in zip(model_names_or_paths, result.weights, strict=True):
        print(name, weight)
    return _mix_and_load(model_names_or_paths, model_type, result.weights, output_path, models)
