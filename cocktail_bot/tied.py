"""Tied word embeddings: models whose output head is their input embedding (``tie_word_embeddings: true``).

Such a model usually stores no head (``save_pretrained``), but ``torch.save(model.state_dict())`` stores a redundant
copy; an untied model stores its own head. The tensor names then differ between models that merge fine: as
mergekit 0.1.5 and LM_Cocktail 0.0.4 do, a tied model's embedding stands in for its head beside an untied base,
and a redundant head beside a tied base is left out. Only an untied source beside a tied base is refused: the
merged model (the base's config) would have no head of its own to hold the source's.

Called only when the models' tensor names differ, so a plain merge never imports transformers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from cocktail_bot.errors import CocktailError
from cocktail_bot.model_types import AUTO_CLASS, ModelType

if TYPE_CHECKING:
    from cocktail_bot.checkpoint import Checkpoint

logger = logging.getLogger(__name__)


@cache
def _config(folder: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError, KeyError):
        return None


def is_tied(folder: Path) -> bool | None:
    """The folder's ``tie_word_embeddings`` (its config class's default when config.json omits it); None when
    there is no config transformers can read."""
    config = _config(Path(folder).resolve())
    return None if config is None else bool(getattr(config, "tie_word_embeddings", False))


@cache
def _embedding_names(folder: Path, model_type: ModelType) -> tuple[str, str] | None:
    """(head, embedding) parameter names of the folder's architecture, from a model built on the meta device (no
    memory); None when it has no output embedding."""
    import torch
    import transformers

    config = _config(folder)
    if config is None:
        return None
    try:
        with torch.device("meta"):
            model = getattr(transformers, AUTO_CLASS[model_type]).from_config(config, trust_remote_code=False)
    except (ValueError, KeyError, OSError):
        return None
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or embedding is None:
        return None
    names = {id(module): name for name, module in model.named_modules()}
    return f"{names[id(head)]}.weight", f"{names[id(embedding)]}.weight"


def reconcile(
    base: tuple[Path, Checkpoint],
    sources: Sequence[tuple[Path, Checkpoint]],
    model_type: ModelType,
) -> None:
    """Make every checkpoint show the base's head name or none, as tie_word_embeddings says (see the module)."""
    base_folder, base_checkpoint = base
    names = _embedding_names(base_folder.resolve(), model_type)
    if names is None:
        return
    head, embedding = names
    if is_tied(base_folder):
        for folder, checkpoint in [base, *sources]:
            if head not in checkpoint:
                continue
            if checkpoint is not base_checkpoint and is_tied(folder) is False:
                raise CocktailError(
                    f"{folder} has its own {head} (tie_word_embeddings: false) but the base {base_folder} ties "
                    f"its head to {embedding} (tie_word_embeddings: true): the merged model, with the base's "
                    f"config, would have no head to hold it; make {folder} (or another untied model) the base"
                )
            logger.debug("%s: leaving out %s, a copy of %s (tie_word_embeddings)", folder, head, embedding)
            checkpoint.drop(head)
        return
    for folder, checkpoint in sources:
        if head not in checkpoint and head in base_checkpoint and embedding in checkpoint and is_tied(folder):
            logger.info(
                "%s ties its head to its embeddings (tie_word_embeddings): %s stands in for its %s",
                folder,
                embedding,
                head,
            )
            checkpoint.alias(head, embedding)
