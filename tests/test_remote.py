"""Hub weights read in place: range requests through the real client against the local Hub, sha256 checked,
dropped connections resumed, and a streamed merge byte-identical to a local one."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from cocktail_bot import engine, hub_access, remote
from cocktail_bot.checkpoint import Checkpoint, open_checkpoint
from cocktail_bot.errors import CocktailError, RemoteError
from cocktail_bot.sources import resolve_source


@pytest.fixture(autouse=True)
def no_retry_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_access, "RETRY_DELAYS", (0.0, 0.0, 0.0))


def publish(hub_server, repo_id: str, folder: Path) -> None:
    hub_server.commit_folder(repo_id, folder)


def streamed(repo_id: str) -> remote.HubModel:
    source = resolve_source(repo_id, stream=True)
    assert source.streamed is not None
    return source.streamed


def test_only_small_files_are_downloaded_and_tensors_read_by_range(
    hub_server, tiny_llama_sharded: Path, monkeypatch: pytest.MonkeyPatch
):
    publish(hub_server, "cocktail/sharded", tiny_llama_sharded)
    monkeypatch.chdir(tiny_llama_sharded)  # files named as the repo's: a Hub file must never map one of them
    model = streamed("cocktail/sharded")
    weight_files = {p.name for p in tiny_llama_sharded.glob("*.safetensors")}
    assert len(weight_files) > 1 and set(model.weights) == weight_files
    assert not list(model.folder.rglob("*.safetensors"))  # only config, tokenizer and the index
    assert (model.folder / "model.safetensors.index.json").is_file()
    assert not hub_server.seen("cdn")  # nothing read yet
    with Checkpoint(tiny_llama_sharded) as local, open_checkpoint(model) as read:
        assert read.names == local.names
        for name in local.names:  # name order interleaves the shards, as the engine reads them
            assert read.info(name) == local.info(name)
            assert torch.equal(read.read(name), local.read(name))
            assert read.map_flat(name, 0, 1) is None  # read over HTTP, never mapped
        read.verify()
    ranged = hub_server.seen("cdn")
    # one streamed request per file, plus the header read of each
    assert len(ranged) <= 2 * len(weight_files)


def test_reads_behind_the_stream_and_chunks_are_exact(hub_server, tiny_llamas: list[Path]):
    publish(hub_server, "cocktail/one", tiny_llamas[0])
    with Checkpoint(tiny_llamas[0]) as local, open_checkpoint(streamed("cocktail/one")) as read:
        names = list(reversed(local.names))  # against file order: every read but the first is behind
        for name in names:
            numel = local.info(name).numel
            half = numel // 2
            assert torch.equal(
                read.read_flat(name, half, numel - half), local.read_flat(name, half, numel - half)
            )
            assert torch.equal(read.read_flat(name, 0, half), local.read_flat(name, 0, half))
        read.verify()


def test_a_connection_dropped_mid_range_resumes_where_it_stopped(hub_server, tiny_llamas: list[Path]):
    publish(hub_server, "cocktail/one", tiny_llamas[0])
    model = streamed("cocktail/one")
    with Checkpoint(tiny_llamas[0]) as local, open_checkpoint(model) as read:
        hub_server.cut("cdn", at=5000, times=2)  # the stream, then its first resumption
        for name in local.names:
            assert torch.equal(read.read(name), local.read(name))
        read.verify()
    reads = hub_server.seen("cdn")[1:]  # after the header's read
    assert len(reads) == 3


def test_a_connection_that_keeps_dropping_fails_with_a_clear_message(hub_server, tiny_llamas: list[Path]):
    publish(hub_server, "cocktail/one", tiny_llamas[0])
    model = streamed("cocktail/one")
    with open_checkpoint(model) as read:
        hub_server.cut("cdn", at=100, times=20)
        with pytest.raises(RemoteError, match=r"cocktail/one@.*model.safetensors.*failed at byte 100 "):
            for name in read.names:
                read.read(name)


def test_bytes_that_do_not_match_the_pinned_sha256_fail_verification(hub_server, tiny_llamas: list[Path]):
    publish(hub_server, "cocktail/one", tiny_llamas[0])
    model = streamed("cocktail/one")
    size, sha256 = model.weights["model.safetensors"]
    data = bytearray(hub_server.lfs_objects[sha256])
    data[-1] ^= 0xFF  # the last byte of the last tensor: the header still parses
    hub_server.lfs_objects[sha256] = bytes(data)
    with (
        open_checkpoint(model) as read,
        pytest.raises(CocktailError, match="does not match its pinned sha256"),
    ):
        for name in read.names:
            read.read(name)
        read.verify()


def test_a_streamed_merge_equals_a_local_merge_byte_for_byte(hub_server, tmp_path: Path, tiny_llamas):
    for index, folder in enumerate(tiny_llamas):
        publish(hub_server, f"cocktail/llama-{index}", folder)
    models = [streamed(f"cocktail/llama-{index}") for index in range(3)]
    shards: list[tuple[str, str]] = []
    remote_result = engine.merge(
        models,
        [0.5, 0.3, 0.2],
        tmp_path / "streamed",
        model_type="decoder",
        shard_size="40KB",
        progress=False,
        on_shard=lambda name, path, sha: shards.append((name, sha)),
    )
    local_result = engine.merge(
        tiny_llamas,
        [0.5, 0.3, 0.2],
        tmp_path / "local",
        model_type="decoder",
        shard_size="40KB",
        progress=False,
    )
    assert remote_result.files == local_result.files
    assert len(shards) > 1 and dict(shards) == {
        name: sha for name, sha in remote_result.files.items() if name.endswith(".safetensors")
    }
    for name, sha in remote_result.files.items():
        assert hashlib.sha256((tmp_path / "streamed" / name).read_bytes()).hexdigest() == sha


HUB_RECIPE = """\
version: 1
name: streamed
type: decoder
models:
  - {id: cocktail/llama-0, weight: 0.5}
  - {id: cocktail/llama-1, weight: 0.3}
  - {id: ./models/llama-2, weight: 0.2}
merge: {shard_size: 40KB}
output: {license: apache-2.0}
"""


def hub_recipe(hub_server, root: Path, tiny_llamas: list[Path]) -> Path:
    """HUB_RECIPE in ``root``: llama-0 and llama-1 published to the Hub, llama-2 a local folder beside it."""
    for index in (0, 1):
        publish(hub_server, f"cocktail/llama-{index}", tiny_llamas[index])
    (root / "models").mkdir(parents=True)
    shutil.copytree(tiny_llamas[2], root / "models" / "llama-2")
    (root / "cocktail.yml").write_text(HUB_RECIPE)
    return root / "cocktail.yml"


def assert_equals_the_local_merge(report, tiny_llamas: list[Path], folder: Path) -> None:
    local = engine.merge(
        tiny_llamas, [0.5, 0.3, 0.2], folder, model_type="decoder", shard_size="40KB", progress=False
    )
    assert report.output is not None
    assert {k: v for k, v in report.output.files.items() if k in local.files} == local.files


def test_cocktail_run_reads_hub_sources_in_place(hub_server, tmp_path: Path, tiny_llamas: list[Path]):
    from huggingface_hub import constants

    from cocktail_bot.pipeline import run_manifest

    manifest = hub_recipe(hub_server, tmp_path / "recipe", tiny_llamas)
    report = run_manifest(manifest, tmp_path / "out", progress=False)
    assert_equals_the_local_merge(report, tiny_llamas, tmp_path / "local")
    assert not list(Path(constants.HF_HUB_CACHE).rglob("*.safetensors"))  # weights never downloaded
    assert [s.resolved_revision for s in report.sources][:2] == [
        hub_server.head(f"cocktail/llama-{i}") for i in (0, 1)
    ]


def test_run_merges_the_commits_its_preflight_measured(
    hub_server, tmp_path: Path, tiny_llamas: list[Path], monkeypatch: pytest.MonkeyPatch
):
    """A branch that moves between the plan (preflight) and the merge does not change what is merged."""
    from cocktail_bot import pipeline

    manifest = hub_recipe(hub_server, tmp_path / "recipe", tiny_llamas)
    planned = hub_server.head("cocktail/llama-0")
    build_plan = pipeline.build_plan

    def plan_then_move_main(*args, **kwargs):
        plan = build_plan(*args, **kwargs)
        publish(hub_server, "cocktail/llama-0", tiny_llamas[2])  # main moves on, right after the plan
        return plan

    monkeypatch.setattr(pipeline, "build_plan", plan_then_move_main)
    report = pipeline.run_manifest(manifest, tmp_path / "out", progress=False)
    assert hub_server.head("cocktail/llama-0") != planned
    assert report.sources[0].resolved_revision == planned
    assert_equals_the_local_merge(report, tiny_llamas, tmp_path / "local")


def test_a_run_refused_by_its_plan_does_not_wait_for_torch(
    hub_server, tmp_path: Path, tiny_llamas: list[Path], monkeypatch: pytest.MonkeyPatch
):
    """torch is imported on a thread once the plan has passed: a missing repo fails in a fraction of a second
    instead of after torch's 2-3 s import, which the process waits for before it exits."""
    from cocktail_bot import pipeline, preload

    started: list[bool] = []
    monkeypatch.setattr(preload, "start", lambda: started.append(True))
    manifest = hub_recipe(hub_server, tmp_path / "recipe", tiny_llamas)
    missing = manifest.with_name("missing.yml")
    missing.write_text(manifest.read_text().replace("cocktail/llama-1", "cocktail/no-such-model"))
    with pytest.raises(CocktailError, match="cocktail/no-such-model"):
        pipeline.run_manifest(missing, tmp_path / "refused", progress=False)
    assert not started
    pipeline.run_manifest(manifest, tmp_path / "out", progress=False)
    assert started == [True]
