"""`cocktail import-mergekit CONFIG.yml > cocktail.yml`: a mergekit config as a manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cocktail_bot.commands import add_model_type_argument
from cocktail_bot.errors import CocktailError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import-mergekit",
        help="translate a mergekit config into a cocktail.yml manifest (printed)",
        description="Print the cocktail.yml for a mergekit config: models, base, method, parameters (per model, "
        "per layer, filtered), dtype and tokenizer source where cocktail-bot has an equivalent. What it does "
        "not do (slices, passthrough, tokenizer merging, LoRA, chat templates) is refused by name with its "
        "line. Local model paths are read from the current folder; run it where the manifest will live.",
    )
    parser.add_argument("config", metavar="CONFIG.yml", help="the mergekit config")
    parser.add_argument("--name", help="the manifest's name (default: from the config's file name)")
    add_model_type_argument(parser, default="decoder")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from cocktail_bot.mergekit_import import default_name, translate

    path = Path(args.config)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CocktailError(f"{args.config} not found: give the path of a mergekit config (YAML)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CocktailError(f"cannot read {args.config}: {error}") from None
    name = args.name or default_name(path)
    sys.stdout.write(translate(text, display=args.config, name=name, model_type=args.model_type))
    return 0
