"""`cocktail update`: sources named by a branch or tag are checked against the lock on the (local) Hub; a move
rebuilds and rewrites the lock with the weights and evals before and after; nothing moved changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cocktail_bot.cli import main
from cocktail_bot.lock import read_lock
from cocktail_bot.manifest import load_manifest
from cocktail_bot.update import find_moved, is_commit, update_manifest

MOVING = "cocktail/tiny-moving"  # named by its main branch: may move
TAGGED = "cocktail/tiny-tagged"  # named by a tag
PINNED = "cocktail/tiny-pinned"  # named by a commit sha: never asked about

MANIFEST = """\
version: 1
name: tiny-update
type: decoder
models:
  - {moving}
  - {tagged}@v1
  - {pinned}@{pinned_sha}
weights: {{examples: examples/train.jsonl, temperature: 2.0}}
eval:
  - {{name: train, examples: examples/train.jsonl}}
output: {{license: apache-2.0}}
"""


def write_recipe(root: Path, pinned_sha: str) -> Path:
    (root / ".git").mkdir(parents=True)
    (root / "examples").mkdir()
    records = [{"input": f"what is the {w}?", "output": f"the {w} is good"} for w in ("cat", "dog", "tree")]
    (root / "examples" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    manifest = root / "cocktail.yml"
    manifest.write_text(MANIFEST.format(moving=MOVING, tagged=TAGGED, pinned=PINNED, pinned_sha=pinned_sha))
    return manifest


@pytest.fixture
def recipe(tmp_path: Path, hub_server, tiny_llamas: list[Path]) -> Path:
    """Three Hub sources (branch, tag, commit) and a manifest whose lock a first run wrote."""
    hub_server.commit_folder(MOVING, tiny_llamas[0])
    hub_server.commit_folder(TAGGED, tiny_llamas[1])
    hub_server.tag(TAGGED, "v1")
    pinned_sha = hub_server.commit_folder(PINNED, tiny_llamas[2])
    manifest = write_recipe(tmp_path / "repo", pinned_sha)
    assert main(["-q", "run", str(manifest), "--out", str(tmp_path / "first")]) == 0
    return manifest


def move(hub_server, repo_id: str, source: Path, branch: str = "main") -> str:
    """A retrained fine-tune: new weights on the branch (the old model's scaled)."""
    from safetensors.torch import load_file, save_file

    tensors = {name: tensor * 0.5 for name, tensor in load_file(source / "model.safetensors").items()}
    path = source.parent / f"{source.name}-retrained.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    return hub_server.commit(repo_id, {"model.safetensors": path}, branch=branch, message="retrain")


def test_is_commit_only_for_full_shas() -> None:
    assert is_commit("a" * 40)
    assert not is_commit(None) and not is_commit("main") and not is_commit("v1") and not is_commit("abc123")


def test_nothing_moved_says_so_and_changes_nothing(recipe: Path, hub_server, capsys) -> None:
    lock = recipe.with_suffix(".lock")
    before = lock.read_bytes()
    capsys.readouterr()
    assert main(["update", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "no source moved" in out and f"{MOVING}, {TAGGED}@v1" in out
    assert lock.read_bytes() == before
    # the pinned source is never asked about; the moving ones are asked of the Hub, not the cache
    asked = {r.repo_id for r in hub_server.seen("model_info")[-2:]}
    assert asked == {MOVING, TAGGED}


def test_a_moved_branch_is_planned_then_rebuilt_with_weights_and_evals(
    recipe: Path, hub_server, tiny_llamas, tmp_path, capsys
) -> None:
    lock_file = recipe.with_suffix(".lock")
    old = read_lock(lock_file)
    old_commit = old.source(MOVING).resolved_revision
    before = lock_file.read_bytes()
    new_commit = move(hub_server, MOVING, tiny_llamas[0])
    capsys.readouterr()

    assert main(["update", str(recipe), "--plan", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["rebuilt"] is False and planned["evals_after"] is None
    assert [(m["label"], m["old_commit"], m["new_commit"]) for m in planned["moved"]] == [
        (MOVING, old_commit, new_commit)
    ]
    assert planned["moved"][0]["new_url"].endswith(f"/{MOVING}/commit/{new_commit}")
    assert lock_file.read_bytes() == before  # --plan changes nothing

    out = tmp_path / "updated"
    assert main(["update", str(recipe), "--json", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rebuilt"] is True and result["output"] == str(out)
    assert [(m["label"], m["old_commit"], m["new_commit"]) for m in result["moved"]] == [
        (MOVING, old_commit, new_commit)
    ]
    new = read_lock(lock_file)
    assert new.source(MOVING).resolved_revision == new_commit
    assert new.source(f"{TAGGED}@v1").resolved_revision == old.source(f"{TAGGED}@v1").resolved_revision
    (weights,) = result["weights"]
    assert weights["before"] == old.steps[0].weights and weights["after"] == new.steps[0].weights
    assert weights["before"] != weights["after"]  # the retrained model scores differently on the examples
    assert result["evals_before"] == [e.model_dump() for e in old.evals] and old.evals
    assert result["evals_after"] == [e.model_dump() for e in new.evals]
    merged = lambda evals: next(e["loss"] for e in evals if e["model"] == "merged")  # noqa: E731
    assert merged(result["evals_before"]) != merged(result["evals_after"])
    assert read_lock(out / "cocktail.lock") == new

    # the next check finds nothing to do
    assert main(["update", str(recipe)]) == 0
    assert "no source moved" in capsys.readouterr().out


def test_a_moved_tag_is_found_and_the_text_shows_before_and_after(recipe, hub_server, tiny_llamas, capsys):
    sha = move(hub_server, TAGGED, tiny_llamas[1], branch="retrain")
    hub_server.tag(TAGGED, "v1", sha)
    capsys.readouterr()
    assert main(["update", str(recipe)]) == 0
    text = capsys.readouterr().out
    assert f"{TAGGED}@v1 (v1): " in text and f"-> {sha[:12]}" in text
    assert "weights (before -> after):" in text and "eval loss (before -> after):" in text
    assert "rebuilt and wrote" in text
    assert read_lock(recipe.with_suffix(".lock")).source(f"{TAGGED}@v1").resolved_revision == sha


def test_find_moved_asks_only_branch_and_tag_sources(recipe, hub_server):
    manifest = load_manifest(recipe)
    checked, moved = find_moved(manifest, read_lock(recipe.with_suffix(".lock")))
    assert checked == [MOVING, f"{TAGGED}@v1"] and moved == []


def test_update_needs_a_lock_and_an_unedited_manifest(recipe: Path, capsys) -> None:
    recipe.write_text(recipe.read_text().replace("temperature: 2.0", "temperature: 3.0"))
    capsys.readouterr()
    assert main(["update", str(recipe)]) == 2
    assert "changed since" in capsys.readouterr().err
    recipe.with_suffix(".lock").unlink()
    assert main(["update", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err


def test_an_unreachable_hub_is_an_error_not_nothing_moved(recipe: Path, hub_server, capsys, monkeypatch):
    from cocktail_bot import hub_access

    monkeypatch.setattr(hub_access, "RETRY_DELAYS", (0.0,))
    hub_server.fail("model_info", status=0, times=2)
    capsys.readouterr()
    code = main(["update", str(recipe)])
    err = capsys.readouterr().err
    assert code == 1 and "no source moved" not in err and "Traceback" not in err


def test_update_result_without_out_keeps_no_model(recipe: Path, hub_server, tiny_llamas, tmp_path):
    move(hub_server, MOVING, tiny_llamas[0])
    result, report = update_manifest(recipe, progress=False)
    assert result.rebuilt and result.output is None and report is not None
    assert not Path(report.output.path).exists()
