"""The shared grammars (references, sizes, dtypes, devices): one parser each, and the JSON Schema's patterns
generated from them agree with the parsers."""

from __future__ import annotations

import re

import pytest

from cocktail_bot.devices import DEVICE_PATTERN, is_device
from cocktail_bot.dtypes import DTYPE_BYTES, OUTPUT_DTYPES, canonical_dtype
from cocktail_bot.manifest_schema import json_schema
from cocktail_bot.references import (
    REFERENCE_PATTERN,
    check_reference,
    parse_hub_reference,
    split_revision,
)
from cocktail_bot.sizes import SIZE_PATTERN, format_size, parse_size


def _patterns(node) -> set[str]:
    found = set()
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            found.add(node["pattern"])
        for value in node.values():
            found |= _patterns(value)
    elif isinstance(node, list):
        for value in node:
            found |= _patterns(value)
    return found


def test_the_schema_uses_the_grammar_patterns():
    patterns = _patterns(json_schema())
    assert {REFERENCE_PATTERN, SIZE_PATTERN, DEVICE_PATTERN} <= patterns
    dtype = json_schema()["$defs"]["MergeOptions"]["properties"]["dtype"]
    assert [option.get("enum") for option in dtype["anyOf"] if "enum" in option] == [list(OUTPUT_DTYPES)]


@pytest.mark.parametrize(
    "text, size",
    [
        ("5GB", 5 * 10**9),
        ("500MB", 5 * 10**8),
        ("500MiB", 500 * 2**20),
        ("1.5 kb", 1500),
        (" 7 ", 7),
        (42, 42),
    ],
)
def test_sizes_parse_and_match_the_pattern(text, size):
    assert parse_size(text) == size
    assert isinstance(text, int) or re.fullmatch(SIZE_PATTERN, text)


@pytest.mark.parametrize("text", ["5XB", "GB", "five", "-1GB", "1e9", ""])
def test_bad_sizes_are_refused_by_parser_and_pattern(text):
    with pytest.raises(ValueError):
        parse_size(text)
    assert not re.fullmatch(SIZE_PATTERN, text)


@pytest.mark.parametrize("text", ["0GB", 0, -5, True])
def test_sizes_must_be_positive_numbers(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_sizes_print_in_the_hubs_decimal_units():
    assert [format_size(n) for n in (None, 999, 1500, 2_600_000, 815 * 10**6)] == [
        "—",
        "999 B",
        "1.5 kB",
        "2.6 MB",
        "815.0 MB",
    ]


@pytest.mark.parametrize(
    "text, repo_id, revision",
    [("org/name", "org/name", None), ("org/name@v1", "org/name", "v1"), ("gpt2", "gpt2", None)],
)
def test_hub_references(text, repo_id, revision):
    parsed = parse_hub_reference(text)
    assert parsed is not None and (parsed.repo_id, parsed.revision) == (repo_id, revision)
    assert str(parsed) == text
    assert split_revision(text) == (repo_id, revision)
    assert check_reference(text) == text
    assert re.fullmatch(REFERENCE_PATTERN, text)


@pytest.mark.parametrize("text", ["bad id!", "a/b/c", "org/-name", "org/na--me", "org/name.git", "org/name@"])
def test_bad_hub_references_are_refused(text):
    assert parse_hub_reference(text) is None
    with pytest.raises(ValueError):
        check_reference(text)


@pytest.mark.parametrize("text", ["./models/a", "../up", "/abs/path@x"])
def test_local_references_keep_their_at_signs(text):
    assert split_revision(text) == (text, None)
    assert check_reference(text) == text
    assert re.fullmatch(REFERENCE_PATTERN, text)


def test_dtypes():
    assert [canonical_dtype(name) for name in ("fp16", "BF16", "torch.float32", "half", "float64")] == [
        "float16",
        "bfloat16",
        "float32",
        "float16",
        "float64",
    ]
    assert set(OUTPUT_DTYPES) <= set(DTYPE_BYTES)
    with pytest.raises(
        ValueError, match="unknown dtype 'int8': use one of bfloat16, float16, float32, float64"
    ):
        canonical_dtype("int8")


def test_dtype_sizes_are_torchs():
    torch = pytest.importorskip("torch")
    from cocktail_bot.engine import TORCH_DTYPES

    assert {name: dtype.itemsize for name, dtype in TORCH_DTYPES.items()} == DTYPE_BYTES
    assert all(getattr(torch, name) is dtype for name, dtype in TORCH_DTYPES.items())


@pytest.mark.parametrize(
    "text, ok",
    [
        ("auto", True),
        ("cpu", True),
        ("mps", True),
        ("cuda", True),
        ("cuda:3", True),
        ("tpu", False),
        ("cuda:", False),
        ("CPU", False),
        ("cuda:x", False),
    ],
)
def test_devices(text, ok):
    assert is_device(text) is ok
    assert bool(re.fullmatch(DEVICE_PATTERN, text)) is ok
