"""Model references resolved against the local Hub test server with the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from cocktail_bot import hub_access
from cocktail_bot.errors import CocktailError
from cocktail_bot.sources import needed_files, resolve_source

REPO = "cocktail/tiny-llama"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_access, "RETRY_DELAYS", (0.0, 0.0, 0.0))


@pytest.fixture
def llama_repo(hub_server, tiny_llamas):
    """``main`` at the second llama, tag ``v1`` and branch ``dev`` at the first; license mit."""
    first = hub_server.commit_folder(
        REPO, tiny_llamas[0], extra={"README.md": "---\nlicense: mit\n---\n# tiny\n"}
    )
    hub_server.tag(REPO, "v1")
    hub_server.branch(REPO, "dev")
    second = hub_server.commit(REPO, {"model.safetensors": tiny_llamas[1] / "model.safetensors"})
    return first, second


def test_branch_tag_and_commit_sha_resolve_to_their_own_files(hub_server, llama_repo, tiny_llamas):
    first, second = llama_repo
    main = resolve_source(REPO)
    assert (main.repo_id, main.requested_revision, main.resolved_revision) == (REPO, None, second)
    assert main.files["model.safetensors"] == sha256(tiny_llamas[1] / "model.safetensors")
    assert main.license == "mit"

    for ref, revision in ((f"{REPO}@v1", None), (REPO, "dev"), (REPO, first)):
        pinned = resolve_source(ref, revision)
        assert pinned.resolved_revision == first
        assert pinned.path.name == first
        assert (pinned.path / "model.safetensors").read_bytes() == (
            tiny_llamas[0] / "model.safetensors"
        ).read_bytes()
    assert resolve_source(f"{REPO}@v1").requested_revision == "v1"


def test_every_file_hash_is_recorded_lfs_from_the_hub_and_small_files_computed(
    hub_server, llama_repo, tiny_llamas
):
    source = resolve_source(f"{REPO}@v1")
    expected = {
        name: sha256(tiny_llamas[0] / name) for name in needed_files(p.name for p in tiny_llamas[0].iterdir())
    }
    assert source.files == expected
    assert {"config.json", "generation_config.json", "tokenizer.json", "model.safetensors"} <= set(
        source.files
    )
    report = source.to_report()
    assert report.files == expected and report.resolved_revision == source.resolved_revision


def test_only_the_files_a_merge_needs_are_downloaded(hub_server, tiny_encoders):
    encoder = tiny_encoders[0]
    hub_server.commit_folder(
        "cocktail/encoder",
        encoder,
        extra={
            "pytorch_model.bin": b"pickle that must not be fetched",
            "onnx/model.onnx": b"onnx",
            "tf_model.h5": b"tf",
            "train.py": "print('hi')",
            "README.md": "# encoder",
        },
    )
    source = resolve_source("cocktail/encoder")
    fetched = {r.path for r in hub_server.seen("resolve")}  # LFS bytes come from the redirect's storage
    assert fetched == set(source.files)
    assert not {"pytorch_model.bin", "onnx/model.onnx", "tf_model.h5", "train.py", "README.md"} & fetched
    assert {
        "model.safetensors",
        "modules.json",
        "1_Pooling/config.json",
        "config_sentence_transformers.json",
        "2_Normalize/config.json",
        "tokenizer.json",
    } <= fetched
    assert sorted(
        p.relative_to(source.path).as_posix() for p in source.path.rglob("*") if p.is_file()
    ) == sorted(fetched)


def test_pickles_are_used_when_there_are_no_safetensors():
    assert needed_files(["config.json", "pytorch_model.bin", "flax_model.msgpack", "README.md"]) == [
        "config.json",
        "pytorch_model.bin",
    ]
    sharded = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "consolidated.safetensors",
        "pytorch_model.bin",
        "2_Dense/config.json",
        "2_Dense/model.safetensors",
        "2_Dense/pytorch_model.bin",
    ]
    assert needed_files(sharded) == [
        "2_Dense/config.json",
        "2_Dense/model.safetensors",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]


def test_plan_mode_pins_without_downloading_and_reports_sizes(hub_server, llama_repo, tiny_llamas):
    _, second = llama_repo
    source = resolve_source(REPO, download=False)
    assert source.path is None and source.resolved_revision == second
    assert hub_server.seen("resolve") == []
    assert source.sizes["model.safetensors"] == (tiny_llamas[1] / "model.safetensors").stat().st_size
    assert source.files == {"model.safetensors": sha256(tiny_llamas[1] / "model.safetensors")}


def test_missing_repo(hub_server):
    with pytest.raises(CocktailError) as error:
        resolve_source("cocktail/nope@main", token=hub_server.write_token)
    assert str(error.value) == (
        "Hub repo cocktail/nope was not found, or the token cannot read it (404): check the "
        "name and that the token's account or organisation has access"
    )


def refused_endpoint() -> str:
    """An address on this machine that refuses connections: a free port, bound to find it, then closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("reference", ["models/nothere", "my-modle"])
def test_a_mistyped_local_path_is_neither_a_folder_nor_a_hub_repo(
    hub_server, tmp_path, monkeypatch, reference
):
    """Without './', a path is read as a Hub id: the message says that neither exists, and both fixes."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(CocktailError) as error:
        resolve_source(reference)
    assert error.value.exit_code == 2
    assert str(error.value) == (
        f"model {reference!r} not found: there is no folder {tmp_path / reference}, and the Hub has no repo "
        f"{reference} (or it is private and no token was given): a local folder is written './{reference}' "
        "(check its path); a Hub repo as org/name (check the name, or set HF_TOKEN to a token that can read it)"
    )
    assert [request.repo_id for request in hub_server.seen("model_info")] == [reference]  # the Hub was asked
    with pytest.raises(CocktailError) as error:
        resolve_source(reference, endpoint=refused_endpoint())
    assert error.value.exit_code == 1
    assert str(error.value) == (
        f"model {reference!r} not found: there is no folder {tmp_path / reference}, and the Hub could not be "
        f"reached to look for a repo {reference} (ConnectError: Connection refused): a local folder is written "
        f"'./{reference}' (check its path); for a Hub repo, check the network or HF_ENDPOINT"
    )


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        (refused_endpoint, "ConnectError: Connection refused"),
        (lambda: "http://cocktail-bot.invalid", "ConnectError: "),
    ],
    ids=["refused", "unknown-host"],
)
def test_a_refused_connection_or_unknown_host_fails_at_once_as_unreachable_not_offline(
    monkeypatch, caplog, endpoint, reason
):
    """Nothing listens, or the name does not resolve (.invalid never does): waiting would not help, so no
    retry; the first retry would sleep 30 s."""
    monkeypatch.setattr(hub_access, "RETRY_DELAYS", (30.0, 30.0))
    started = time.monotonic()
    with pytest.raises(CocktailError) as error:
        resolve_source("cocktail/never-cached@main", endpoint=endpoint())
    assert time.monotonic() - started < 30
    assert error.value.exit_code == 1
    message = str(error.value)
    assert message.startswith(f"could not reach the Hub for cocktail/never-cached@main ({reason}")
    assert message.endswith("): check the network or HF_ENDPOINT and try again")
    assert not [record for record in caplog.records if "retrying" in record.getMessage()]


def test_missing_revision(hub_server, llama_repo):
    with pytest.raises(CocktailError) as error:
        resolve_source(f"{REPO}@v9")
    assert str(error.value) == (
        "revision 'v9' was not found in Hub repo cocktail/tiny-llama: use an existing "
        "branch, tag or commit sha"
    )


def test_missing_weights_and_missing_config(hub_server, tiny_llamas):
    sha = hub_server.commit("cocktail/no-weights", {"config.json": (tiny_llamas[0] / "config.json")})
    with pytest.raises(CocktailError) as error:
        resolve_source("cocktail/no-weights")
    assert str(error.value) == (
        f"Hub repo cocktail/no-weights (commit {sha}) has no model weights: expected "
        "model.safetensors or pytorch_model.bin (or their shards)"
    )
    sha = hub_server.commit("cocktail/no-config", {"model.safetensors": tiny_llamas[0] / "model.safetensors"})
    with pytest.raises(CocktailError) as error:
        resolve_source("cocktail/no-config")
    assert str(error.value) == (
        f"Hub repo cocktail/no-config (commit {sha}) has no config.json: it is not a transformers model"
    )


def test_a_listed_file_the_hub_cannot_serve_is_named(hub_server, llama_repo):
    hub_server.fail("resolve", 404, method="HEAD", code="EntryNotFound")
    with pytest.raises(
        CocktailError, match=r"^file '[\w.]+' was not found in Hub repo cocktail/tiny-llama@[0-9a-f]{40}$"
    ):
        resolve_source(REPO)


def test_private_repo_needs_a_token(hub_server, tiny_llamas, monkeypatch):
    hub_server.create_repo("cocktail/secret", private=True)
    sha = hub_server.commit_folder("cocktail/secret", tiny_llamas[0])
    with pytest.raises(CocktailError) as error:
        resolve_source("cocktail/secret@main")
    assert str(error.value) == (
        "Hub repo cocktail/secret was not found, or it is private and no token was given: "
        "check the name, or set HF_TOKEN to a token that can read it"
    )
    assert resolve_source("cocktail/secret", token=hub_server.read_token).resolved_revision == sha
    monkeypatch.setenv("HF_TOKEN", hub_server.read_token)
    assert resolve_source("cocktail/secret").resolved_revision == sha
    assert all(r.token == hub_server.read_token for r in hub_server.seen("resolve"))


def test_gated_repo_without_a_token(hub_server, tiny_llamas):
    hub_server.create_repo("cocktail/gated", gated=True)
    hub_server.commit_folder("cocktail/gated", tiny_llamas[0])
    with pytest.raises(CocktailError) as error:
        resolve_source("cocktail/gated")
    assert str(error.value) == (
        "Hub repo cocktail/gated is gated: accept its conditions on the Hub with your account, then set "
        "HF_TOKEN to a token of that account"
    )
    assert resolve_source("cocktail/gated", token=hub_server.read_token).path is not None


def test_repo_with_custom_code_is_refused_before_downloading(hub_server, tiny_llamas):
    config = json.loads((tiny_llamas[0] / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"}
    sha = hub_server.commit_folder(
        "cocktail/custom",
        tiny_llamas[0],
        extra={"config.json": json.dumps(config), "modeling_tiny.py": "import os"},
    )
    with pytest.raises(CocktailError) as error:
        resolve_source("cocktail/custom")
    assert str(error.value) == (
        f"Hub repo cocktail/custom (commit {sha}) needs custom code to load (its config.json has an auto_map "
        "(AutoModelForCausalLM)); cocktail-bot never runs code from a model (no trust_remote_code): use a "
        "model that loads with the standard transformers classes"
    )
    assert hub_server.seen("resolve") == []


def test_custom_sentence_transformers_module_is_refused(hub_server, tiny_encoders, tmp_path):
    folder = tmp_path / "custom-encoder"
    shutil.copytree(tiny_encoders[0], folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules[1]["type"] = "my_package.FancyPooling"
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(CocktailError, match=r"uses custom modules \(my_package.FancyPooling\)"):
        resolve_source(str(folder))
    hub_server.commit_folder("cocktail/custom-encoder", folder)
    with pytest.raises(
        CocktailError, match=r"^Hub repo cocktail/custom-encoder \(commit [0-9a-f]{40}\) needs custom"
    ):
        resolve_source("cocktail/custom-encoder")


def test_offline_mode_uses_the_cache_and_says_what_is_missing(hub_server, llama_repo, monkeypatch):
    online = resolve_source(REPO)
    tagged = resolve_source(f"{REPO}@v1")
    requests = len(hub_server.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = resolve_source(REPO)
    assert (
        offline.license is None
    )  # the license comes from the Hub's card data, which offline mode cannot read
    assert offline == online.model_copy(update={"license": None})
    offline_tag = resolve_source(f"{REPO}@v1")
    assert (offline_tag.resolved_revision, offline_tag.files) == (tagged.resolved_revision, tagged.files)
    assert len(hub_server.requests) == requests
    with pytest.raises(CocktailError) as error:
        resolve_source(f"{REPO}@dev")
    assert str(error.value) == (
        "cocktail/tiny-llama@dev is not in the Hugging Face cache and the Hub cannot be used (HF_HUB_OFFLINE "
        "is set or the Hub is unreachable): run once online to cache it, or unset HF_HUB_OFFLINE"
    )


def test_transient_hub_errors_are_retried(hub_server, llama_repo):
    hub_server.fail("model_info", 503, times=2)
    assert resolve_source(REPO, download=False).resolved_revision == llama_repo[1]
    assert (
        len(hub_server.seen("model_info")) == 4
    )  # resolve_revision: 503, 503, 200; then model_info at the sha


def test_local_folder_without_weights(tmp_path, tiny_llamas):
    shutil.copyfile(tiny_llamas[0] / "config.json", tmp_path / "config.json")
    with pytest.raises(CocktailError) as error:
        resolve_source(str(tmp_path))
    assert str(error.value) == (
        f"model folder {tmp_path} has no model weights: expected model.safetensors or pytorch_model.bin "
        "(or their shards)"
    )


def test_local_folders_are_hashed(tiny_llamas):
    source = resolve_source(str(tiny_llamas[0]))
    assert source.repo_id is None and source.resolved_revision is None and source.path == tiny_llamas[0]
    assert source.files["model.safetensors"] == sha256(tiny_llamas[0] / "model.safetensors")
    assert source.to_report().url is None


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("./no/such/folder", "model folder ./no/such/folder does not exist (a Hub repo is named org/name)"),
        (
            "not a model",
            "model reference 'not a model' is neither an existing folder nor a Hub repo id (use org/name, "
            "org/name@revision, or a path such as ./models/x)",
        ),
    ],
)
def test_bad_references(ref, message):
    with pytest.raises(CocktailError) as error:
        resolve_source(ref)
    assert str(error.value) == message


def test_conflicting_revisions():
    with pytest.raises(
        CocktailError, match=r"^org/name@v1 names revision v1 but the revision v2 was also given"
    ):
        resolve_source("org/name@v1", "v2")
