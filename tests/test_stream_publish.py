"""Hub to Hub: sources read in place, each shard uploaded as it is written, one commit at the end; a run on a
disk smaller than one source; failures (dropped connections, a 500 on the commit, a sha256 mismatch, SIGTERM
mid-upload) leave the target revision as it was and say what happened."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

from cocktail_bot import engine, hub_access
from cocktail_bot.errors import CocktailError, RemoteError
from cocktail_bot.lock import read_lock
from cocktail_bot.pipeline import run_manifest
from cocktail_bot.weights import compute_weights
from tests.mounts import cocktail, require_mounts, run_mounted
from tools import tiny_models, tiny_tasks

ROOT = Path(__file__).resolve().parents[1]
TARGET = "cocktail/merged"
NEW_TARGET = "cocktail/new-merged"
WEIGHTS = (0.5, 0.3, 0.2)
SHARD = "1MB"
RECIPE = f"""\
version: 1
name: streamed-publish
type: decoder
models:
  - {{id: cocktail/src-0, weight: {WEIGHTS[0]}}}
  - {{id: cocktail/src-1, weight: {WEIGHTS[1]}}}
  - {{id: cocktail/src-2, weight: {WEIGHTS[2]}}}
merge: {{shard_size: {SHARD}}}
output: {{repo: {TARGET}, license: apache-2.0}}
"""

SCORED_RECIPE = f"""\
version: 1
name: streamed-scored
type: decoder
models: [cocktail/src-0, cocktail/src-1, cocktail/src-2]
weights: {{examples: examples.json}}
merge: {{shard_size: {SHARD}}}
output: {{repo: {TARGET}, license: apache-2.0}}
"""


@pytest.fixture(scope="module")
def wide_llamas(tmp_path_factory: pytest.TempPathFactory, llama_tokenizer) -> list[Path]:
    """Three Llamas of about 4.7 MB each (hidden size 256), so that a few MB of disk is less than one source."""
    from transformers import LlamaForCausalLM

    folders = []
    for seed in range(3):
        folder = tmp_path_factory.mktemp("wide") / f"llama-{seed}"
        torch.manual_seed(seed)
        config = tiny_models.llama_config(len(llama_tokenizer), hidden_size=256, intermediate_size=512)
        LlamaForCausalLM(config).save_pretrained(folder)
        llama_tokenizer.save_pretrained(folder)
        folders.append(folder)
    return folders


@pytest.fixture
def recipe(hub_server, tmp_path: Path, wide_llamas: list[Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(hub_access, "RETRY_DELAYS", (0.0, 0.0, 0.0))
    for index, folder in enumerate(wide_llamas):
        hub_server.commit_folder(f"cocktail/src-{index}", folder)
    hub_server.create_repo(TARGET)
    hub_server.commit(TARGET, {"README.md": "# the previous model\n"})
    root = tmp_path / "recipe"
    root.mkdir()
    (root / "cocktail.yml").write_text(RECIPE)
    return root / "cocktail.yml"


@pytest.fixture(scope="module")
def local_merge(tmp_path_factory: pytest.TempPathFactory, wide_llamas: list[Path]) -> dict[str, bytes]:
    """The same merge from local folders: what the Hub must end up holding, byte for byte."""
    out = tmp_path_factory.mktemp("local") / "merged"
    result = engine.merge(wide_llamas, WEIGHTS, out, model_type="decoder", shard_size=SHARD, progress=False)
    assert sum(name.endswith(".safetensors") for name in result.files) >= 3
    return {name: (out / name).read_bytes() for name in result.files}


def published_model(hub_server) -> dict[str, bytes]:
    return {n: d for n, d in hub_server.files(TARGET).items() if n not in ("README.md", "cocktail.lock")}


def assert_unchanged(hub_server, head: str) -> None:
    assert hub_server.head(TARGET) == head
    assert set(hub_server.files(TARGET)) == {".gitattributes", "README.md"}


def test_publish_without_out_uploads_shards_as_written_then_commits_once(
    hub_server, recipe: Path, local_merge: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where the work folder goes without --out
    before = hub_server.head(TARGET)
    report = run_manifest(recipe, None, publish=True, token=hub_server.write_token, progress=False)
    repo = hub_server.repos[TARGET]
    head = repo.branches["main"]
    assert repo.commits[head].parent == before  # one commit
    published = published_model(hub_server)
    local_model = {n: d for n, d in local_merge.items()}
    assert {n: hashlib.sha256(d).hexdigest() for n, d in published.items() if n != ".gitattributes"} == {
        n: hashlib.sha256(d).hexdigest() for n, d in local_model.items()
    }
    assert "cocktail.lock" in hub_server.files(TARGET) and "report.json" not in hub_server.files(TARGET)
    # every shard reached storage before the commit, each by its own preupload
    routes = [r.route for r in hub_server.requests if r.route in ("lfs_upload", "commit")]
    shards = [n for n in local_model if n.endswith(".safetensors")]
    assert routes == ["lfs_upload"] * len(shards) + ["commit"]
    assert report.publish is not None and report.publish.commit_sha == head
    assert report.output is not None and report.output.total_bytes == sum(map(len, local_model.values()))
    assert list(temp.iterdir()) == []


def test_publish_with_out_keeps_a_local_copy(hub_server, recipe: Path, local_merge, tmp_path: Path):
    out = tmp_path / "out"
    run_manifest(recipe, out, publish=True, token=hub_server.write_token, progress=False)
    for name, data in local_merge.items():
        assert (out / name).read_bytes() == data
        assert hub_server.files(TARGET)[name] == data


@pytest.fixture
def new_target(recipe: Path) -> Path:
    """The recipe, publishing to a repo that does not exist yet."""
    recipe.write_text(RECIPE.replace(f"repo: {TARGET}", f"repo: {NEW_TARGET}"))
    return recipe


def test_a_failure_mid_merge_leaves_no_new_repo_behind(hub_server, new_target: Path):
    hub_server.cut("cdn", at=4_000_000, times=100, after="lfs_upload")  # once the first shard is uploaded
    with pytest.raises(RemoteError, match=r"failed at byte 4000000 .* after 3 retries"):
        run_manifest(new_target, None, publish=True, token=hub_server.write_token, progress=False)
    assert hub_server.seen("create_repo") and hub_server.seen("lfs_upload")
    assert NEW_TARGET not in hub_server.repos


def test_a_failed_commit_to_a_new_repo_deletes_it_and_keeps_the_local_build(
    hub_server, new_target: Path, local_merge, tmp_path: Path
):
    hub_server.fail("commit", 500, times=1 + len(hub_access.RETRY_DELAYS))
    with pytest.raises(RemoteError, match=r"HTTP 500"):
        run_manifest(new_target, tmp_path / "out", publish=True, token=hub_server.write_token, progress=False)
    assert NEW_TARGET not in hub_server.repos
    assert all((tmp_path / "out" / name).read_bytes() == data for name, data in local_merge.items())
    run_manifest(new_target, None, publish=True, token=hub_server.write_token, progress=False)
    assert hub_server.files(NEW_TARGET).items() >= local_merge.items()  # a later run creates it


def test_a_500_on_the_commit_leaves_the_target_unchanged(hub_server, recipe: Path):
    head = hub_server.head(TARGET)
    hub_server.fail("commit", 500, times=1 + len(hub_access.RETRY_DELAYS))
    with pytest.raises(RemoteError, match=r"HTTP 500"):
        run_manifest(recipe, None, publish=True, token=hub_server.write_token, progress=False)
    assert hub_server.seen("lfs_upload")  # the shards were uploaded, and no revision shows them
    assert_unchanged(hub_server, head)


def test_a_sha256_mismatch_fails_before_anything_is_published(hub_server, recipe: Path):
    head = hub_server.head(TARGET)
    sha = next(
        e.sha256
        for n, e in hub_server.repos["cocktail/src-1"]
        .commits[hub_server.head("cocktail/src-1")]
        .files.items()
        if n == "model.safetensors"
    )
    corrupted = bytearray(hub_server.lfs_objects[sha])
    corrupted[-1] ^= 0xFF
    hub_server.lfs_objects[sha] = bytes(corrupted)
    with pytest.raises(
        CocktailError, match=r"cocktail/src-1@.*model.safetensors does not match its pinned sha256"
    ):
        run_manifest(recipe, None, publish=True, token=hub_server.write_token, progress=False)
    assert not hub_server.seen("commit")
    assert_unchanged(hub_server, head)


def test_a_dropped_connection_is_resumed_and_one_that_keeps_dropping_fails(
    hub_server, recipe: Path, local_merge
):
    head = hub_server.head(TARGET)
    hub_server.cut("cdn", at=2_000_000, times=100)  # every source's stream, on every retry
    with pytest.raises(
        RemoteError, match=r"model.safetensors from the Hub failed at byte 2000000 .* after 3 retries"
    ):
        run_manifest(recipe, None, publish=True, token=hub_server.write_token, progress=False)
    assert_unchanged(hub_server, head)
    hub_server.heal()
    hub_server.cut("cdn", at=3_000_000, times=len(hub_access.RETRY_DELAYS))
    run_manifest(recipe, None, publish=True, token=hub_server.write_token, progress=False)
    assert published_model(hub_server).items() >= local_merge.items()


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cocktail(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        cwd=cwd,
    )


def child_env(hub_server, home: Path) -> dict[str, str]:
    """HOME, the Hugging Face cache and the temp folder under ``home``; the token."""
    return {
        "HF_TOKEN": hub_server.write_token,
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "HF_HUB_CACHE": str(home / "hf" / "hub"),
        "TMPDIR": str(home / "tmp"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def terminate_mid_upload(hub_server, recipe: Path, tmp_path: Path) -> str:
    """Run the recipe in a child, SIGTERM it during its first shard's upload; its stderr."""
    hub_server.bandwidth_up = 400_000  # a 1 MB shard takes 2.5 s to upload
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    child = cli(["run", str(recipe), "--publish"], env=child_env(hub_server, home), cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not hub_server.seen("lfs_batch") and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    assert hub_server.seen("lfs_batch"), child.communicate()
    time.sleep(0.5)  # inside the first upload
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "terminated" in err.lower() or "sigterm" in err.lower(), err
    assert not list((home / "tmp").iterdir())  # the work folder went with it
    return err


def test_sigterm_mid_upload_leaves_the_target_unchanged(hub_server, recipe: Path, tmp_path: Path):
    head = hub_server.head(TARGET)
    terminate_mid_upload(hub_server, recipe, tmp_path)
    assert_unchanged(hub_server, head)


def test_sigterm_mid_upload_to_a_new_repo_leaves_no_repo_behind(hub_server, new_target: Path, tmp_path: Path):
    terminate_mid_upload(hub_server, new_target, tmp_path)
    assert hub_server.seen("create_repo")
    assert NEW_TARGET not in hub_server.repos


def test_a_hub_to_hub_merge_fits_a_disk_smaller_than_one_source(
    hub_server,
    recipe: Path,
    local_merge,
    wide_llamas: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """The working directory, HOME, HF_HOME and TMPDIR on a 3 MB tmpfs; each source is 4.7 MB."""
    require_mounts()
    assert min((f / "model.safetensors").stat().st_size for f in wide_llamas) > 3 * 2**20
    disk = tmp_path / "disk"
    disk.mkdir()
    home = disk / "home"
    for variable, value in child_env(hub_server, home).items():
        monkeypatch.setenv(variable, value)
    done = run_mounted(
        ["sh", "-c", 'mkdir -p "$0/tmp" "$0/work" && cd "$0/work" && exec "$@"', str(home)]
        + cocktail("run", str(recipe), "--publish"),
        tmpfs={disk: "3m"},
    )
    assert done.returncode == 0, done.stderr
    assert published_model(hub_server).items() >= local_merge.items()


def test_example_weights_from_hub_sources_fit_a_disk_smaller_than_one_source(
    hub_server, recipe: Path, wide_llamas: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Scoring reads the sources by range too: weights from examples, then the merge, on the 3 MB tmpfs."""
    require_mounts()
    examples = tiny_tasks.make_examples("sentiment", 4, seed=3)
    (recipe.parent / "examples.json").write_text(json.dumps(examples))
    recipe.write_text(SCORED_RECIPE)
    disk = tmp_path / "disk"
    disk.mkdir()
    home = disk / "home"
    for variable, value in child_env(hub_server, home).items():
        monkeypatch.setenv(variable, value)
    done = run_mounted(
        ["sh", "-c", 'mkdir -p "$0/tmp" "$0/work" && cd "$0/work" && exec "$@"', str(home)]
        + cocktail("run", str(recipe), "--publish"),
        tmpfs={disk: "3m"},
    )
    assert done.returncode == 0, done.stderr
    (tmp_path / "cocktail.lock").write_bytes(hub_server.files(TARGET)["cocktail.lock"])
    local = compute_weights(wide_llamas, "decoder", examples, progress=False, device="cpu")
    assert read_lock(tmp_path / "cocktail.lock").steps[0].weights == local.weights


def test_no_out_needs_publish(hub_server, recipe: Path):
    with pytest.raises(CocktailError, match=r"^give --out DIR for the model, or --publish to publish it"):
        run_manifest(recipe, None, progress=False)
    assert not hub_server.seen("cdn")  # refused before reading anything
