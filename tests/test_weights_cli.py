"""`cocktail weights`: the table, --json, and one clear error per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cocktail_bot.cli import main
from cocktail_bot.weights import compute_weights
from tools import tiny_tasks


@pytest.fixture
def sentiment_file(tmp_path: Path) -> Path:
    path = tmp_path / "sentiment.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in tiny_tasks.make_examples("sentiment", 4, seed=41)))
    return path


def test_json_output(trained_decoders, sentiment_file, capsys) -> None:
    models = [str(trained_decoders[name]) for name in ("base", "sentiment", "topic")]
    code = main(
        [
            "weights",
            *models,
            "--type",
            "decoder",
            "--examples",
            str(sentiment_file),
            "--temperature",
            "2",
            "--max-input-length",
            "64",
            "--batch-size",
            "3",
            "--device",
            "cpu",
            "--json",
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    expected = compute_weights(
        models, "decoder", sentiment_file, temperature=2.0, max_input_length=64, batch_size=3, progress=False
    )
    assert code == 0
    assert printed == {
        "models": models,
        "losses": expected.losses,
        "weights": expected.weights,
        "dtype": "float32",
    }
    assert max(printed["weights"]) == printed["weights"][1]


def test_table_output_for_rerankers(trained_rerankers, tmp_path, capsys) -> None:
    examples = tmp_path / "animal.json"
    examples.write_text(json.dumps(tiny_tasks.make_examples("animal", 3, seed=42)))
    models = [str(trained_rerankers["animal"]), str(trained_rerankers["object"])]
    assert (
        main(["weights", *models, "--type", "reranker", "--examples", str(examples), "--neg-number", "2"])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "loss", "weight"]
    assert lines[-1] == "losses computed in float32"
    rows = [line.split() for line in lines[1:-1]]
    assert [row[0] for row in rows] == models
    assert float(rows[0][2]) > float(rows[1][2]) and float(rows[0][2]) + float(rows[1][2]) == pytest.approx(
        1, abs=1e-3
    )


def test_bad_example_file_is_one_clear_error(trained_decoders, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "x", "output": "y"}\n{"input": "x", "output": ["y"]}\n')
    code = main(["weights", str(trained_decoders["base"]), "--type", "decoder", "--examples", str(bad)])
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: {bad}: record 1 (line 2): the field 'output' must be a string, got a list\n"
    )


def test_bad_temperature_and_missing_model(trained_decoders, sentiment_file, tmp_path, capsys) -> None:
    base = str(trained_decoders["base"])
    assert (
        main(["weights", base, "--type", "decoder", "--examples", str(sentiment_file), "--temperature", "0"])
        == 2
    )
    assert capsys.readouterr().err == "error: temperature must be a positive number, got 0.0\n"
    missing = tmp_path / "no-such-model"
    assert main(["weights", base, str(missing), "--type", "decoder", "--examples", str(sentiment_file)]) == 2
    err = (
        capsys.readouterr().err
    )  # the sources module words it; here: one line naming the model, no traceback
    assert err.startswith("error: ") and str(missing) in err and err.count("\n") == 1


def test_dtype_option_computes_the_losses_in_bfloat16(trained_decoders, sentiment_file, capsys) -> None:
    models = [str(trained_decoders[name]) for name in ("sentiment", "topic")]
    args = ["weights", *models, "--type", "decoder", "--examples", str(sentiment_file), "--json"]
    assert main([*args, "--dtype", "bfloat16"]) == 0
    low = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    high = json.loads(capsys.readouterr().out)
    assert (low["dtype"], high["dtype"]) == ("bfloat16", "float32")
    assert low["losses"] == pytest.approx(high["losses"], rel=2e-2) and low["losses"] != high["losses"]
    with pytest.raises(SystemExit) as caught:
        main([*args, "--dtype", "int8"])
    assert caught.value.code == 2 and "invalid choice: 'int8'" in capsys.readouterr().err


def test_hub_references_are_scored_by_range_as_local_folders(
    hub_server, trained_decoders, sentiment_file, capsys
) -> None:
    from huggingface_hub import constants

    names = ("base", "sentiment", "topic")
    for name in names:
        hub_server.commit_folder(f"cocktail/{name}", trained_decoders[name])
    options = ["--type", "decoder", "--examples", str(sentiment_file), "--json"]
    assert main(["weights", *(f"cocktail/{name}" for name in names), *options]) == 0
    hub = json.loads(capsys.readouterr().out)
    assert main(["weights", *(str(trained_decoders[name]) for name in names), *options]) == 0
    local = json.loads(capsys.readouterr().out)
    assert (hub["losses"], hub["weights"]) == (local["losses"], local["weights"])
    assert not list(Path(constants.HF_HOME).rglob("*.safetensors"))  # never downloaded
    assert all(request.range for request in hub_server.seen("cdn"))
