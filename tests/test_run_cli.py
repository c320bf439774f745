"""`cocktail run` and `cocktail verify` on the command line: build, --locked, a changed file."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from cocktail_bot.cli import main


@pytest.fixture
def recipe(llama_recipe) -> Path:
    return llama_recipe("cli-cocktail", "weights: uniform\nmerge: {dtype: float16}\n")


def test_run_locked_and_verify(recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, again = tmp_path / "out", tmp_path / "again"
    assert main(["-q", "run", str(recipe), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"built cli-cocktail in {out} (")
    assert (recipe.parent / "cocktail.lock").is_file() and (out / "cocktail.lock").is_file()
    assert main(["-q", "run", str(recipe), "--out", str(again), "--locked", "--no-publish"]) == 0
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["verify", str(again), "--lock", str(recipe.parent / "cocktail.lock")]) == 0
    assert capsys.readouterr().out.endswith(f"files match {recipe.parent / 'cocktail.lock'}\n")
    (again / "config.json").write_text("{}")
    assert main(["verify", str(again)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{again}: changed: config.json (lock sha256 ")
    assert lines[1] == f"1 difference(s) from {again / 'cocktail.lock'}"


def test_run_errors_are_one_line_without_traceback(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(recipe), "--out", str(tmp_path / "o"), "--locked"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: lock file {recipe.parent / 'cocktail.lock'} not found: run `cocktail run` without "
        "--locked to create it\n"
    )
    assert main(["run", str(recipe), "--out", str(tmp_path / "o"), "--publish"]) == 2
    assert "has no output.repo" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_manifest_weights_off_by_rounding_are_divided_by_their_sum(
    recipe: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    recipe.write_text(
        recipe.read_text().replace(
            "models: [./models/llama-0, ./models/llama-1]\nweights: uniform\n",
            "models:\n  - {id: ./models/llama-0, weight: 0.499999}\n  - {id: ./models/llama-1, weight: 0.5}\n",
        )
    )
    assert main(["validate", str(recipe)]) == 0
    assert main(["-q", "run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    lock = json.loads((recipe.parent / "cocktail.lock").read_text())
    assert lock["steps"][0]["weights"] == pytest.approx([0.499999 / 0.999999, 0.5 / 0.999999], rel=1e-15)
    assert any(
        message.startswith("note: the linear weights [0.499999, 0.5] sum to 0.999999")
        for message in caplog.messages
    )
    recipe.write_text(recipe.read_text().replace("0.499999", "0.49"))
    assert main(["validate", str(recipe)]) == 2


def test_slerp_without_weights_builds_what_it_builds_with_them(
    recipe: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """slerp uses no per-model weights: a manifest without any validates, plans and builds the same bytes as
    one that gives them, and the card says the method uses none instead of showing weights it ignored."""
    caplog.set_level("INFO")
    slerp = "base: ./models/llama-0\nmerge: {method: slerp, parameters: {t: 0.3}}\n"
    recipe.write_text(recipe.read_text().replace("weights: uniform\nmerge: {dtype: float16}\n", slerp))
    assert main(["validate", str(recipe)]) == 0
    assert main(["plan", str(recipe)]) == 0
    assert main(["-q", "run", str(recipe), "--out", str(tmp_path / "none")]) == 0
    assert (
        "step merge: ./models/llama-0, ./models/llama-1 (slerp uses no per-model weights)" in caplog.messages
    )
    card = (tmp_path / "none" / "README.md").read_text()
    assert "No per-model weights: `slerp` does not use them; its parameters set the mix." in card
    assert "| `./models/llama-0` | — |" in card
    assert json.loads((recipe.parent / "cocktail.lock").read_text())["steps"][0]["weights_mode"] == "unused"
    models = "[./models/llama-0, ./models/llama-1]"
    weighted = "[{id: ./models/llama-0, weight: 0.9}, {id: ./models/llama-1, weight: 0.1}]"
    recipe.write_text(recipe.read_text().replace(models, weighted))
    assert main(["-q", "run", str(recipe), "--out", str(tmp_path / "given")]) == 0
    given = (tmp_path / "given" / "model.safetensors").read_bytes()
    assert given == (tmp_path / "none" / "model.safetensors").read_bytes()


def test_a_model_folder_outside_the_repository_is_built_and_locked_by_path_and_hashes(
    recipe: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    checkpoint = tmp_path / "checkpoints" / "llama-1"
    shutil.move(recipe.parent / "models" / "llama-1", checkpoint)
    recipe.write_text(recipe.read_text().replace("./models/llama-1", "../checkpoints/llama-1"))
    for command in (["validate", str(recipe)], ["plan", str(recipe)]):
        assert main(command) == 0
    assert main(["-q", "run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    assert any(
        message.startswith("note: ../checkpoints/llama-1 is outside the repository")
        for message in caplog.messages
    )
    lock = json.loads((recipe.parent / "cocktail.lock").read_text())
    [source] = [source for source in lock["sources"] if source["label"] == "../checkpoints/llama-1"]
    assert (
        source["files"]["model.safetensors"]
        == hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    )
    assert main(["-q", "run", str(recipe), "--out", str(tmp_path / "again"), "--locked"]) == 0
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (
        tmp_path / "out" / "model.safetensors"
    ).read_bytes()
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert main(["-q", "run", str(recipe), "--out", str(tmp_path / "changed"), "--locked"]) == 1
