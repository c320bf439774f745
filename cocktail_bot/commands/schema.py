"""`cocktail schema`: the manifest's JSON Schema, for editors (`# yaml-language-server: $schema=...`)."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("schema", help="print the JSON Schema of cocktail.yml")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from cocktail_bot.manifest_schema import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0
