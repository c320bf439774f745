"""The three kinds of model LM-Cocktail merges, and what each means for transformers and the Hub."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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


# The head an architecture name ends with says what the checkpoint is (transformers' naming): BertModel,
# XLMRobertaModel and MistralModel are bare encoders (embedders), ...ForSequenceClassification a cross-encoder.
# Anything else (ForMaskedLM, ForConditionalGeneration, ...) says nothing here, and nothing is refused for it.
ARCHITECTURE_SUFFIXES = (
    (("ForCausalLM", "LMHeadModel"), ModelType.DECODER),
    (("ForSequenceClassification",), ModelType.RERANKER),
    (("Model",), ModelType.ENCODER),
)
MODEL_TYPES = tuple(member.value for member in ModelType)
ARTICLE = {ModelType.DECODER: "a decoder", ModelType.ENCODER: "an encoder", ModelType.RERANKER: "a reranker"}


def config_type(config: Mapping[str, Any] | None) -> tuple[ModelType, str] | None:
    """The type a config.json's ``architectures`` say, with the architecture that says it; None if they don't."""
    architectures = (config or {}).get("architectures") or []
    for architecture in architectures if isinstance(architectures, list) else []:
        for suffixes, model_type in ARCHITECTURE_SUFFIXES:
            if isinstance(architecture, str) and architecture.endswith(suffixes):
                return model_type, architecture
    return None


def read_config(folder: Path) -> dict[str, Any] | None:
    """A model folder's config.json, or None when it has none that parses (loading the model says more)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def config_problems(
    model_type: str, sources: Sequence[tuple[str, Mapping[str, Any] | None]], base: str
) -> dict[str, str]:
    """What each source's config.json says against the manifest's ``type`` and against the base's family
    (``model_type``): label -> message, for the sources that do not match. A source without a config, or whose
    config does not say, is not judged here (loading it says more)."""
    wanted = ModelType.parse(model_type)
    configs = dict(sources)
    family = (configs.get(base) or {}).get("model_type")
    problems = {}
    for label, config in sources:
        said = config_type(config)
        own = (config or {}).get("model_type")
        if said is not None and said[0] is not wanted:
            problems[label] = (
                f"{label} is {ARTICLE[said[0]]} (its config.json has architectures [{said[1]}]), but the "
                f"manifest says type: {wanted.value}: set 'type: {said[0].value}', or use {wanted.value} models"
            )
        elif isinstance(family, str) and isinstance(own, str) and own != family:
            problems[label] = (
                f"{label} is a {own} model (config.json model_type {own!r}), but the base {base} is {family}: "
                f"models of one family merge (same architecture and shapes); use {family} models here"
            )
    return problems


def is_sentence_transformer(folder: Path) -> bool:
    """A folder saved by sentence-transformers carries its module list; its pooling must be kept as is."""
    return (Path(folder) / "modules.json").is_file()


def load_transformers_model(folder: str | Path, model_type: ModelType | str, **kwargs: Any):
    """Load a model folder with the transformers Auto class of its type; remote code is never trusted."""
    import transformers

    auto_class = getattr(transformers, AUTO_CLASS[ModelType.parse(model_type)])
    return auto_class.from_pretrained(str(folder), trust_remote_code=False, **kwargs)
