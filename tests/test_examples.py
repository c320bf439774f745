"""Example files: JSON lists and JSONL for each model type, and one exact message per kind of mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cocktail_bot.errors import CocktailError
from cocktail_bot.examples import load_examples

DECODER = [
    {"input": "review: good movie. label:", "output": "positive", "id": 7},
    {"input": "a", "output": "b"},
]
RETRIEVAL = [{"query": "what is it", "pos": ["the cat"], "neg": ["the book", "the song"]}]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    return path


def test_jsonl_decoder_records_keep_only_known_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ex.jsonl", DECODER)
    assert load_examples(path, "decoder") == [
        {"input": "review: good movie. label:", "output": "positive"},
        {"input": "a", "output": "b"},
    ]


def test_json_list_and_blank_jsonl_lines(tmp_path: Path) -> None:
    listed = tmp_path / "ex.json"
    listed.write_text(json.dumps(RETRIEVAL, indent=2))
    spaced = tmp_path / "ex.jsonl"
    spaced.write_text("\n" + json.dumps(RETRIEVAL[0]) + "\n\n")
    assert load_examples(listed, "encoder") == RETRIEVAL
    assert load_examples(str(spaced), "reranker") == RETRIEVAL


def test_records_in_memory_and_empty_negatives() -> None:
    records = [{"query": "q", "pos": ["p"], "neg": []}]
    assert load_examples(records, "encoder") == records


@pytest.mark.parametrize(
    ("records", "model_type", "message"),
    [
        (
            [{"input": "x"}],
            "decoder",
            "record 0 (line 1): the field 'output' is missing (decoder examples need it)",
        ),
        (
            [DECODER[1], {"input": 3, "output": "y"}],
            "decoder",
            "record 1 (line 2): the field 'input' must be a string, got a number",
        ),
        (
            [{"query": "q", "pos": "p", "neg": []}],
            "encoder",
            "record 0 (line 1): the field 'pos' must be a list of strings, got a string",
        ),
        (
            [{"query": "q", "pos": ["p"], "neg": ["n", 4]}],
            "reranker",
            "record 0 (line 1): the field 'neg' must be a list of strings, got a list holding a number",
        ),
        (
            [{"query": "q", "pos": [], "neg": []}],
            "encoder",
            "record 0 (line 1): the field 'pos' is empty: give at least one positive passage",
        ),
        (
            [DECODER[1], {"input": "x", "output": ""}],
            "decoder",
            "record 1 (line 2): the field 'output' is empty: an example without text says nothing about the task",
        ),
        (
            [{"input": "  ", "output": "y"}],
            "decoder",
            "record 0 (line 1): the field 'input' is empty: an example without text says nothing about the task",
        ),
        (
            [{"query": "", "pos": ["p"], "neg": []}],
            "encoder",
            "record 0 (line 1): the field 'query' is empty: an example without text says nothing about the task",
        ),
        (
            [{"query": "q", "pos": ["p"], "neg": ["n", ""]}],
            "reranker",
            "record 0 (line 1): neg[1] is an empty string: give the passage's text",
        ),
        (
            [5],
            "decoder",
            "record 0 (line 1): expected a JSON object with the fields 'input', 'output' for a decoder, "
            "got a number",
        ),
        (
            [DECODER[0]],
            "encoder",
            "record 0 (line 1): the field 'query' is missing (encoder examples need it)",
        ),
    ],
)
def test_bad_jsonl_record_names_file_index_line_and_field(
    tmp_path: Path, records, model_type, message
) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(CocktailError) as caught:
        load_examples(path, model_type)
    assert str(caught.value) == f"{path}: {message}"


def test_bad_record_in_json_list_has_no_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([RETRIEVAL[0], {"query": None, "pos": ["p"], "neg": []}]))
    with pytest.raises(CocktailError) as caught:
        load_examples(path, "encoder")
    assert str(caught.value) == f"{path}: record 1: the field 'query' must be a string, got null"


def test_bad_record_in_memory() -> None:
    with pytest.raises(CocktailError) as caught:
        load_examples([{"input": "x", "output": True}], "decoder")
    assert str(caught.value) == "example data: record 0: the field 'output' must be a string, got a boolean"


def test_unparseable_files(tmp_path: Path) -> None:
    jsonl = tmp_path / "broken.jsonl"
    jsonl.write_text(json.dumps(DECODER[0]) + "\n{'input': 'x'}\n")
    listed = tmp_path / "broken.json"
    listed.write_text('[{"input": "x",\n "output": }]')
    with pytest.raises(CocktailError) as caught:
        load_examples(jsonl, "decoder")
    assert str(caught.value) == (
        f"{jsonl}: line 2 is not valid JSON (column 2): Expecting property name enclosed in double quotes; "
        "example files are a JSON list or one JSON object per line"
    )
    with pytest.raises(CocktailError) as caught:
        load_examples(listed, "decoder")
    assert str(caught.value) == f"{listed}: not valid JSON (line 2, column 12): Expecting value"


def test_missing_and_empty_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(CocktailError) as caught:
        load_examples(tmp_path / "nope.jsonl", "decoder")
    assert str(caught.value) == f"{tmp_path / 'nope.jsonl'}: no such example file: check the path"
    with pytest.raises(CocktailError) as caught:
        load_examples(empty, "decoder")
    assert str(caught.value) == f"{empty}: no examples: give at least one record"


def test_unknown_model_type() -> None:
    with pytest.raises(CocktailError, match="unknown model type 'vision'"):
        load_examples(DECODER, "vision")
