"""The three kinds of model LM-Cocktail merges, and what each means for transformers and the Hub."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

from cocktail_bot.errors import CocktailError


class ModelType(str, Enum):
    DECODER = "decoder"
    ENCODER = "encoder"
    RERANKER = "reranker"

    @classmethod
    def parse(cls, value: str | ModelType) -> ModelType:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(member.value for member in cls)
            raise CocktailError(f"unknown model type {value!r}: use one of {choices}") from None


AUTO_CLASS = {
    ModelType.DECODER: "AutoModelForCausalLM",
    ModelType.ENCODER: "AutoModel",
    ModelType.RERANKER: "AutoModelForSequenceClassification",
}

PIPELINE_TAG = {
    ModelType.DECODER: "text-generation",
    ModelType.ENCODER: "feature-extraction",
    ModelType.RERANKER: "text-classification",
}


def is_sentence_transformer(folder: Path) -> bool:
    """A folder saved by sentence-transformers carries its module list; its pooling must be kept as is."""
    return (Path(folder) / "modules.json").is_file()


def load_transformers_model(folder: str | Path, model_type: ModelType | str, **kwargs: Any):
    """Load a model folder with the transformers Auto class of its type; remote code is never trusted."""
    import transformers

    auto_class = getattr(transformers, AUTO_CLASS[ModelType.parse(model_type)])
    return auto_class.from_pretrained(str(folder), trust_remote_code=False, **kwargs)
