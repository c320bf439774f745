"""Example files (a JSON list or JSON Lines) for the three model types, validated record by record.

A bad record is reported once, naming the file, the record's index (0-based, as in the JSON list; JSONL adds
the line) and the field, so the user can fix it without guessing; nothing downstream ever sees a malformed
record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cocktail_bot.errors import CocktailError
from cocktail_bot.model_types import ModelType

DECODER_FIELDS = ("input", "output")
RETRIEVAL_FIELDS = ("query", "pos", "neg")

Records = Sequence[Mapping[str, Any]]


def load_examples(path_or_records: str | Path | Records, model_type: ModelType | str) -> list[dict]:
    """The validated examples of ``path_or_records`` (a file, or records in memory) for ``model_type``.

    Decoder records are ``{"input": str, "output": str}``; encoder and reranker records are
    ``{"query": str, "pos": [str, ...], "neg": [str, ...]}`` (``pos`` non-empty, ``neg`` may be empty).
    Extra fields are ignored; the returned records hold only the known fields.
    """
    model_type = ModelType.parse(model_type)
    if isinstance(path_or_records, (str, Path)):
        where = str(path_or_records)
        records, lines = _read_file(Path(path_or_records))
    else:
        where = "example data"
        records, lines = list(path_or_records), None
    if not records:
        raise CocktailError(f"{where}: no examples: give at least one record")
    return [_validate(record, index, where, lines, model_type) for index, record in enumerate(records)]


def _read_file(path: Path) -> tuple[list[Any], list[int] | None]:
    """Parse a JSON list or JSON Lines file; for JSONL also return each record's line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CocktailError(f"{path}: no such example file: check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CocktailError(f"{path}: cannot read the example file ({error})") from None
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise CocktailError(
                f"{path}: not valid JSON (line {error.lineno}, column {error.colno}): {error.msg}"
            ) from None
        return records, None
    records, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise CocktailError(
                f"{path}: line {number} is not valid JSON (column {error.colno}): {error.msg}; "
                "example files are a JSON list or one JSON object per line"
            ) from None
        lines.append(number)
    return records, lines


def _validate(record: Any, index: int, where: str, lines: list[int] | None, model_type: ModelType) -> dict:
    place = f"{where}: record {index}" + (f" (line {lines[index]})" if lines else "")
    fields = DECODER_FIELDS if model_type is ModelType.DECODER else RETRIEVAL_FIELDS
    if not isinstance(record, Mapping):
        expected = ", ".join(repr(field) for field in fields)
        raise CocktailError(
            f"{place}: expected a JSON object with the fields {expected} for a {model_type.value}, "
            f"got {_json_type(record)}"
        )
    for field in fields:
        if field not in record:
            raise CocktailError(
                f"{place}: the field {field!r} is missing ({model_type.value} examples need it)"
            )
        value = record[field]
        if field in ("pos", "neg"):
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise CocktailError(
                    f"{place}: the field {field!r} must be a list of strings, got {_describe(value)}"
                )
            if field == "pos" and not value:
                raise CocktailError(f"{place}: the field 'pos' is empty: give at least one positive passage")
            blank = next((i for i, item in enumerate(value) if not item.strip()), None)
            if blank is not None:
                raise CocktailError(f"{place}: {field}[{blank}] is an empty string: give the passage's text")
        elif not isinstance(value, str):
            raise CocktailError(f"{place}: the field {field!r} must be a string, got {_json_type(value)}")
        elif not value.strip():
            raise CocktailError(
                f"{place}: the field {field!r} is empty: an example without text says nothing about the task"
            )
    return {field: record[field] for field in fields}


def _describe(value: Any) -> str:
    if isinstance(value, list):
        wrong = next(item for item in value if not isinstance(item, str))
        return f"a list holding {_json_type(wrong)}"
    return _json_type(value)


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, as the user wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
