"""One module per ``cocktail`` subcommand: ``register(subparsers)`` adds it and sets ``handler``."""

from __future__ import annotations

import argparse

from cocktail_bot.model_types import ModelType


def add_model_type_argument(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--type``, named as LM_Cocktail's ``model_type``, for the commands that load models (required unless
    there is a ``default``)."""
    parser.add_argument(
        "--type",
        dest="model_type",
        required=default is None,
        default=default,
        choices=[model_type.value for model_type in ModelType],
        help="kind of model: decoder (causal LM), encoder (embeddings), reranker (cross-encoder)",
    )
