"""`cocktail plan` and Hub sources: pinned through the local Hub test server, without downloading weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cocktail_bot.cli import main
from cocktail_bot.errors import CocktailError
from cocktail_bot.lock import read_lock
from cocktail_bot.manifest import load_manifest
from cocktail_bot.pipeline import run_manifest
from cocktail_bot.plan import (
    MemoryEstimate,
    Plan,
    PlannedSource,
    PlannedStep,
    build_plan,
    plan_manifest,
    render_plan,
)

MANIFEST = """\
version: 1
name: hub-cocktail
type: decoder
models:
  - {{id: cocktail/llama-a, revision: {revision}, weight: 0.5}}
  - {{id: cocktail/llama-b, weight: 0.5}}
output: {{repo: cocktail/merged, license: apache-2.0}}
"""


@pytest.fixture
def hub_recipe(hub_server, tmp_path: Path, tiny_llamas: list[Path]) -> tuple[Path, dict[str, str]]:
    shas = {"a-main": hub_server.commit_folder("cocktail/llama-a", tiny_llamas[0])}
    shas["a-v1"] = hub_server.tag("cocktail/llama-a", "v1")
    shas["b-main"] = hub_server.commit_folder("cocktail/llama-b", tiny_llamas[1])
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "cocktail.yml").write_text(MANIFEST.format(revision="v1"))
    return repo / "cocktail.yml", shas


def test_plan_pins_branches_and_tags_without_downloading(
    hub_recipe, hub_server, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, shas = hub_recipe
    plan = build_plan(load_manifest(manifest))
    assert [(s.label, s.resolved_revision) for s in plan.sources] == [
        ("cocktail/llama-a@v1", shas["a-v1"]),
        ("cocktail/llama-b", shas["b-main"]),
    ]
    assert (
        plan.sources[0].files["model.safetensors"]
        == hub_server.repos["cocktail/llama-a"].commits[shas["a-v1"]].files["model.safetensors"].sha256
    )
    assert 0 < plan.download_bytes < plan.output_bytes  # a merge alone reads Hub weights in place
    assert not hub_server.seen("resolve")  # metadata only: no file was downloaded
    assert main(["plan", str(manifest)]) == 0
    text = capsys.readouterr().out
    assert f"  cocktail/llama-a@v1 -> {shas['a-v1']} (" in text
    assert (
        "     weights given: 0.5, 0.5; output ~" in text and "publish to: cocktail/merged (private)" in text
    )
    assert main(["plan", "--json", str(manifest)]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["sources"][1]["resolved_revision"] == shas["b-main"]
    assert as_json["steps"][0]["weights"] == "given: 0.5, 0.5"
    report = plan_manifest(manifest)
    assert report.status == "planned" and report.sources[0].resolved_revision == shas["a-v1"]


def test_plan_text_shows_sizes_in_the_hubs_decimal_units() -> None:
    plan = Plan(
        name="sizes",
        model_type="decoder",
        manifest="cocktail.yml",
        manifest_sha256="0" * 64,
        sources=[
            PlannedSource(
                label="./a",
                repo_id=None,
                requested_revision=None,
                resolved_revision=None,
                download_bytes=0,
                weight_bytes=1500,
            )
        ],
        steps=[
            PlannedStep(name="merge", models=["./a"], method="linear", weights="given: 1", output_bytes=999)
        ],
        download_bytes=0,
        output_bytes=999,
        disk_bytes=2_500_000,
        peak_memory_bytes=3_000_000_000,
        memory=MemoryEstimate(baseline_bytes=450_000_000, merge_bytes=2_550_000_000, scoring_bytes=0),
        max_memory_bytes=1_000_000_000,
        output_repo=None,
        private=True,
    )
    assert render_plan(plan) == (
        "cocktail.yml: sizes (decoder), 1 step\n"
        "sources:\n"
        "  ./a (local, 1.5 kB of weights)\n"
        "steps:\n"
        "  1. merge: linear of ./a\n"
        "     weights given: 1; output ~999 B\n"
        "estimates: download 0 B, peak memory ~3.0 GB, disk ~2.5 MB, output ~999 B\n"
        "warning: the estimated peak memory exceeds merge.max_memory (1.0 GB)\n"
        "publish to: none\n"
    )


def test_plan_of_a_missing_repo_names_it(hub_recipe, capsys: pytest.CaptureFixture[str]) -> None:
    manifest, _ = hub_recipe
    manifest.write_text(MANIFEST.format(revision="main").replace("cocktail/llama-b", "cocktail/nope"))
    with pytest.raises(CocktailError, match="cocktail/nope"):
        build_plan(load_manifest(manifest))
    assert main(["plan", str(manifest)]) != 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_mistyped_local_path_is_named_with_the_manifests_folder(
    hub_recipe, capsys: pytest.CaptureFixture[str]
) -> None:
    """`models/nothere` (no './'): plan asks the Hub, which has no such repo, and says both, once."""
    manifest, _ = hub_recipe
    manifest.write_text(MANIFEST.format(revision="main").replace("cocktail/llama-b", "models/nothere"))
    assert main(["plan", str(manifest)]) == 2
    assert capsys.readouterr().err == (
        f"error: model 'models/nothere' not found: there is no folder {manifest.parent / 'models/nothere'}, and "
        "the Hub has no repo models/nothere (or it is private and no token was given): a local folder is "
        "written './models/nothere' (check its path); a Hub repo as org/name (check the name, or set HF_TOKEN "
        "to a token that can read it)\n"
    )


def test_hub_build_locks_commits_and_rebuilds_them_after_the_branch_moves(
    hub_recipe, hub_server, tiny_llamas: list[Path]
) -> None:
    manifest, shas = hub_recipe
    first = run_manifest(manifest, manifest.parent.parent / "out", progress=False)
    lock = read_lock(manifest.with_suffix(".lock"))
    assert [s.resolved_revision for s in lock.sources] == [shas["a-v1"], shas["b-main"]]
    assert [s.requested_revision for s in lock.sources] == ["v1", None]
    hub_server.commit_folder(
        "cocktail/llama-b", tiny_llamas[2]
    )  # main moves on; the lock keeps the old commit
    again = manifest.parent.parent / "again"
    rebuilt = run_manifest(manifest, again, locked=True, progress=False)
    assert [(s.requested_revision, s.resolved_revision) for s in rebuilt.sources] == [
        ("v1", shas["a-v1"]),
        (None, shas["b-main"]),
    ]
    for name in first.output.files:
        assert (again / name).read_bytes() == (manifest.parent.parent / "out" / name).read_bytes()


def test_plan_scales_sizes_by_the_merge_dtype(tmp_path: Path, tiny_llamas: list[Path]) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    for index, folder in enumerate(tiny_llamas[:2]):
        shutil.copytree(folder, repo / f"m{index}")
    (repo / "cocktail.yml").write_text(
        "version: 1\nname: half\ntype: decoder\n"
        "models: [{id: ./m0, weight: 0.5}, {id: ./m1, weight: 0.5}]\n"
        "merge: {dtype: float16}\n"
    )
    plan = build_plan(load_manifest(repo / "cocktail.yml"))
    weights = plan.sources[0].weight_bytes
    assert weights > 0 and plan.output_bytes == weights * 2 // 4  # float32 sources (their config) as float16
    assert plan.steps[0].output_bytes == plan.output_bytes
