"""`run_manifest`: a two-step recipe on tiny Llamas, its lock, an identical `--locked` rebuild, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cocktail_bot.cli import main
from cocktail_bot.errors import CocktailError
from cocktail_bot.lock import hash_folder, read_lock, verify_folder, verify_hub_repo
from cocktail_bot.pipeline import run_manifest
from cocktail_bot.report import Provenance, Report

TWO_STEP = """\
version: 1
name: tiny-two-step
type: decoder
steps:
  - name: helpers
    models: [./models/llama-0, ./models/llama-1]
    weights: {examples: examples/train.jsonl, temperature: 2.0}
  - name: final
    models: [{step: helpers, weight: 0.25}, {id: ./models/llama-2, weight: 0.75}]
eval:
  - {name: train, examples: examples/train.jsonl}
output: {license: apache-2.0}
"""


def make_repo(root: Path, llamas: list[Path], manifest: str) -> Path:
    (root / ".git").mkdir(parents=True)
    for index, folder in enumerate(llamas):
        shutil.copytree(folder, root / "models" / f"llama-{index}")
    (root / "examples").mkdir()
    records = [{"input": f"what is the {w}?", "output": f"the {w} is good"} for w in ("cat", "dog", "tree")]
    (root / "examples" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "cocktail.yml").write_text(manifest)
    return root / "cocktail.yml"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_llamas: list[Path]) -> tuple[Path, Path, Report]:
    manifest = make_repo(tmp_path_factory.mktemp("recipe") / "repo", tiny_llamas, TWO_STEP)
    out = manifest.parent.parent / "out"
    report = run_manifest(manifest, out, progress=False, provenance=Provenance(repository="acme/recipes"))
    return manifest, out, report


def test_two_step_recipe_builds_the_final_step_only(built: tuple[Path, Path, Report]) -> None:
    manifest, out, report = built
    root = manifest.parent
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "cocktail.lock",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "report.json",
        "report.md",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # work folder removed
    helpers, final = report.steps
    assert helpers.weights_mode == "examples" and len(helpers.losses) == 2
    assert helpers.loss_dtype == "float32" and final.loss_dtype is None  # the CPU computes losses in float32
    assert sum(helpers.weights) == pytest.approx(1.0)
    assert final.models == ["step:helpers", "./models/llama-2"] and final.weights == [0.25, 0.75]
    # the merge is what the recipe says: 0.25 * (w0 m0 + w1 m1) + 0.75 m2
    tensors = [load_file(root / "models" / f"llama-{i}" / "model.safetensors") for i in range(3)]
    merged = load_file(out / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    w0, w1 = helpers.weights
    expected = 0.25 * (w0 * tensors[0][name] + w1 * tensors[1][name]) + 0.75 * tensors[2][name]
    torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6)
    # evals: every source, the intermediate step and the merge
    assert {e.model for e in report.evals} == {
        "./models/llama-0",
        "./models/llama-1",
        "./models/llama-2",
        "step:helpers",
        "merged",
    }
    assert report.provenance.repository == "acme/recipes"
    assert report.peak_rss_bytes > 0 and report.seconds > 0
    assert Report.model_validate_json((out / "report.json").read_text()) == report
    assert {e.dtype for e in report.evals} == {"float32"}
    card = (out / "README.md").read_text()
    assert "helpers" in card and "final" in card and "- lm-cocktail" in card
    assert "losses computed in `float32`" in card and "held-out example set, computed in `float32`." in card


def test_lock_beside_the_manifest_and_in_the_output(built: tuple[Path, Path, Report]) -> None:
    manifest, out, report = built
    lock = read_lock(manifest.parent / "cocktail.lock")
    assert (out / "cocktail.lock").read_text() == (manifest.parent / "cocktail.lock").read_text()
    assert lock.manifest == "cocktail.yml" and lock.manifest_sha256 == report.manifest_sha256
    assert [s.label for s in lock.sources] == ["./models/llama-0", "./models/llama-1", "./models/llama-2"]
    assert lock.steps[0].losses == report.steps[0].losses and lock.steps[0].weights == report.steps[0].weights
    assert lock.steps[0].loss_dtype == report.steps[0].loss_dtype == "float32"
    assert lock.output == hash_folder(out) == report.output.files
    assert verify_folder(out, lock) == []


def test_locked_rebuild_is_byte_identical(built: tuple[Path, Path, Report]) -> None:
    manifest, out, report = built
    lock_before = (manifest.parent / "cocktail.lock").read_text()
    again = manifest.parent.parent / "locked"
    rebuilt = run_manifest(manifest, again, locked=True, progress=False)
    for name in report.output.files:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    assert rebuilt.steps[0].weights == report.steps[0].weights
    assert (manifest.parent / "cocktail.lock").read_text() == lock_before  # --locked never rewrites the lock


def test_locked_refuses_a_changed_manifest(built: tuple[Path, Path, Report]) -> None:
    manifest, _, _ = built
    changed = manifest.parent / "changed.yml"
    changed.write_text(
        manifest.read_text().replace("weight: 0.25", "weight: 0.5").replace("weight: 0.75", "weight: 0.5")
    )
    target = manifest.parent.parent / "never"
    with pytest.raises(CocktailError) as caught:
        run_manifest(
            changed, target, locked=True, lock_path=manifest.parent / "cocktail.lock", progress=False
        )
    assert str(caught.value).startswith(
        f"changed.yml changed since {manifest.parent / 'cocktail.lock'} was written"
    )
    assert str(caught.value).endswith("run without --locked to update the lock")
    assert not target.exists()


def test_out_must_be_empty_unless_forced(built: tuple[Path, Path, Report], tmp_path: Path) -> None:
    manifest, _, _ = built
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CocktailError, match=r"exists and is not empty: choose a new folder, or pass --force"):
        run_manifest(manifest, out, locked=True, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    run_manifest(manifest, out, locked=True, force=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_publish_needs_a_repo(built: tuple[Path, Path, Report], tmp_path: Path) -> None:
    manifest, _, _ = built
    with pytest.raises(CocktailError) as caught:
        run_manifest(manifest, tmp_path / "x", publish=True, progress=False)
    assert str(caught.value) == (
        "cannot publish: cocktail.yml has no output.repo; name the Hub repo there or drop --publish"
    )


def test_a_failing_merge_leaves_nothing_behind(
    tmp_path: Path, tiny_llamas: list[Path], tiny_encoders: list[Path]
) -> None:
    manifest = make_repo(tmp_path / "repo", tiny_llamas[:1], TWO_STEP)
    shutil.copytree(tiny_encoders[0], manifest.parent / "models" / "encoder")
    manifest.write_text(
        "version: 1\nname: bad\ntype: decoder\nmodels: [./models/llama-0, ./models/encoder]\n"
        "weights: uniform\n"
    )
    with pytest.raises(CocktailError):
        run_manifest(manifest, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
    assert not (manifest.parent / "cocktail.lock").exists()


PUBLISHED = """\
version: 1
name: published
type: decoder
models: [./models/llama-0, ./models/llama-1]
weights: uniform
output: {repo: cocktail/published, license: apache-2.0}
"""


def test_publish_uploads_the_model_card_and_lock_and_verify_checks_the_hub(
    hub_server,
    tmp_path: Path,
    tiny_llamas: list[Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = make_repo(tmp_path / "repo", tiny_llamas[:2], PUBLISHED)
    report = run_manifest(
        manifest, tmp_path / "out", publish=True, token=hub_server.write_token, progress=False
    )
    assert report.publish is not None and report.publish.repo_id == "cocktail/published"
    remote = hub_server.files("cocktail/published")
    assert set(report.output.files) | {"README.md", "cocktail.lock"} <= set(remote)
    assert "report.json" not in remote and "report.md" not in remote
    assert remote["model.safetensors"] == (tmp_path / "out" / "model.safetensors").read_bytes()
    assert hub_server.repos["cocktail/published"].private is True
    saved = Report.model_validate_json((tmp_path / "out" / "report.json").read_text())
    assert saved.publish == report.publish and saved.status == "success"
    lock = read_lock(manifest.parent / "cocktail.lock")
    assert verify_hub_repo("cocktail/published", lock, token=hub_server.read_token) == []
    hub_server.commit("cocktail/published", {"config.json": "{}", "extra.txt": "x"})
    monkeypatch.setenv(
        "HF_TOKEN", hub_server.read_token
    )  # the repo is private (output.private defaults to true)
    assert main(["verify", "cocktail/published", "--lock", str(manifest.parent / "cocktail.lock")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("cocktail/published: changed: config.json (lock sha256 ")
    assert lines[1:] == [
        "cocktail/published: unexpected: extra.txt (not in the lock)",
        f"2 difference(s) from {manifest.parent / 'cocktail.lock'}",
    ]
    first = report.publish.commit_sha
    assert verify_hub_repo(f"cocktail/published@{first}", lock, token=hub_server.read_token) == []


def test_a_failed_publish_keeps_the_build_and_says_why(
    hub_server, tmp_path: Path, tiny_llamas: list[Path]
) -> None:
    manifest = make_repo(tmp_path / "repo", tiny_llamas[:2], PUBLISHED)
    with pytest.raises(CocktailError) as caught:
        run_manifest(manifest, tmp_path / "out", publish=True, token=hub_server.read_token, progress=False)
    assert caught.value.exit_code == 1
    saved = Report.model_validate_json((tmp_path / "out" / "report.json").read_text())
    assert saved.status == "failure" and saved.error == str(caught.value) and saved.publish is None
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert (manifest.parent / "cocktail.lock").is_file()
    assert "cocktail/published" not in hub_server.repos or not hub_server.files("cocktail/published").get(
        "model.safetensors"
    )


def test_encoder_recipe_keeps_sentence_transformers_modules_and_reports_accuracy(
    tmp_path: Path, tiny_encoders: list[Path]
) -> None:
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    for index, folder in enumerate(tiny_encoders):
        shutil.copytree(folder, root / "models" / f"encoder-{index}")
    records = [
        {"query": "what is the cat", "pos": ["the cat is good"], "neg": ["the river is blue", "one two"]}
    ]
    (root / "heldout.json").write_text(json.dumps(records * 2))
    (root / "cocktail.yml").write_text(
        "version: 1\nname: encoders\ntype: encoder\nmodels: [./models/encoder-0, ./models/encoder-1]\n"
        "weights: uniform\neval: [{name: heldout, examples: heldout.json}]\n"
    )
    report = run_manifest(root / "cocktail.yml", tmp_path / "out", progress=False)
    assert report.library_name == "sentence-transformers"
    assert (tmp_path / "out" / "modules.json").is_file()
    assert set(report.output.files) >= {"modules.json", "model.safetensors"}
    merged = [e for e in report.evals if e.model == "merged"]
    assert len(merged) == 1 and merged[0].accuracy is not None and merged[0].examples == 2
