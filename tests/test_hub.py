"""Publishing with the real huggingface_hub client to the local Hub test server over 127.0.0.1."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, snapshot_download
from huggingface_hub.utils import _auth

from cocktail_bot import hub_access
from cocktail_bot.errors import CocktailError, RemoteError
from cocktail_bot.hub import create_repo_if_missing, delete_created_repo, local_files, publish_folder

REPO = "cocktail/merged"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_access, "RETRY_DELAYS", (0.0, 0.0, 0.0))


@pytest.fixture
def model(tmp_path: Path, tiny_llamas) -> Path:
    """A model folder as the pipeline leaves it: weights, configs, tokenizer and a card."""
    folder = tmp_path / "out"
    shutil.copytree(tiny_llamas[0], folder)
    (folder / "README.md").write_text("---\nlicense: mit\ntags: [merge]\n---\n# merged\n")
    return folder


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {name: file.path.read_bytes() for name, file in local_files(folder).items()}


def publish(folder: Path, hub_server, **kwargs):
    kwargs.setdefault("token", hub_server.write_token)
    return publish_folder(folder, REPO, commit_message="Publish merged (cocktail.yml)", **kwargs)


def test_first_publish_creates_the_repo_with_regular_and_lfs_files(hub_server, model):
    report = publish(model, hub_server, private=True)
    repo = hub_server.repos[REPO]
    assert repo.private
    assert report.changed and report.revision == "main" and report.commit_sha == hub_server.head(REPO)
    assert report.commit_url == f"{hub_server.endpoint}/{REPO}/commit/{report.commit_sha}"
    assert report.repo_url == f"{hub_server.endpoint}/{REPO}" and report.pr_url is None
    entries = repo.commits[report.commit_sha].files
    assert (
        entries["model.safetensors"].lfs and not entries["config.json"].lfs and not entries["README.md"].lfs
    )
    assert [r.path for r in hub_server.seen("lfs_upload")] == [None]  # one LFS object: the weights
    assert len(hub_server.seen("commit")) == 1
    assert repo.commits[report.commit_sha].title == "Publish merged (cocktail.yml)"
    assert {n: d for n, d in hub_server.files(REPO).items() if n != ".gitattributes"} == folder_bytes(model)


def test_files_downloaded_back_equal_what_was_built(hub_server, model):
    report = publish(model, hub_server)
    downloaded = Path(snapshot_download(REPO, revision=report.commit_sha, token=hub_server.write_token))
    assert {n: d for n, d in folder_bytes(downloaded).items() if n != ".gitattributes"} == folder_bytes(model)


def test_republishing_identical_files_makes_no_commit(hub_server, model):
    first = publish(model, hub_server)
    again = publish(model, hub_server)
    assert not again.changed and again.commit_sha == first.commit_sha
    assert len(hub_server.seen("commit")) == 1 and len(hub_server.seen("lfs_batch")) == 1


def test_a_changed_model_replaces_the_files_and_drops_stale_ones(hub_server, model, tiny_llamas):
    first = publish(model, hub_server)
    shutil.copyfile(tiny_llamas[1] / "model.safetensors", model / "model.safetensors")
    (model / "generation_config.json").unlink()
    second = publish(model, hub_server)
    assert second.changed and second.commit_sha != first.commit_sha
    assert hub_server.repos[REPO].commits[second.commit_sha].parent == first.commit_sha
    files = hub_server.files(REPO)
    assert "generation_config.json" not in files and ".gitattributes" in files
    assert files["model.safetensors"] == (tiny_llamas[1] / "model.safetensors").read_bytes()
    assert hub_server.files(REPO, first.commit_sha)[
        "generation_config.json"
    ]  # history keeps the old revision


def test_create_pr_proposes_the_change_and_leaves_main_alone(hub_server, model, tiny_llamas):
    main = publish(model, hub_server)
    shutil.copyfile(tiny_llamas[1] / "model.safetensors", model / "model.safetensors")
    preview = publish(model, hub_server, create_pr=True)
    assert preview.changed and preview.revision == "refs/pr/1"
    assert preview.pr_url == f"{hub_server.endpoint}/{REPO}/discussions/1"
    assert hub_server.head(REPO) == main.commit_sha
    assert hub_server.head(REPO, "refs/pr/1") == preview.commit_sha
    assert (
        hub_server.files(REPO, "refs/pr/1")["model.safetensors"] == (model / "model.safetensors").read_bytes()
    )
    assert hub_server.repos[REPO].pull_requests[1].base == "main"


# --- one preview pull request per key (pr_title) ------------------------------------------------------------

KEY = "cocktail-bot preview: acme/recipes#7 (cocktail.yml)"


def pr_commits(hub_server, num: int) -> list[str]:
    """The commits the Hub shows on a pull request's page, read back with the real client."""
    details = HfApi().get_discussion_details(REPO, num, token=hub_server.write_token)
    return [event.oid for event in details.events if event.type == "commit"]


def test_a_keyed_preview_updates_its_one_hub_pull_request(hub_server, model, tiny_llamas):
    main = publish(model, hub_server)
    shutil.copyfile(tiny_llamas[1] / "model.safetensors", model / "model.safetensors")
    first = publish(model, hub_server, pr_title=KEY)
    pr_url = f"{hub_server.endpoint}/{REPO}/discussions/1"
    assert first.changed and first.revision == "refs/pr/1" and first.pr_url == pr_url
    (model / "README.md").write_text("# merged, second push\n")
    second = publish(model, hub_server, pr_title=KEY)
    assert second.changed and second.revision == "refs/pr/1" and second.pr_url == pr_url
    again = publish(model, hub_server, pr_title=KEY)  # identical to the PR's head: no commit
    assert not again.changed and again.commit_sha == second.commit_sha
    assert again.revision == "refs/pr/1" and again.pr_url == pr_url

    repo = hub_server.repos[REPO]
    assert list(repo.pull_requests) == [1]
    pr = repo.pull_requests[1]
    assert (pr.title, pr.author, pr.status, pr.base) == (KEY, "cocktail-tester", "open", "main")
    assert pr_commits(hub_server, 1) == [first.commit_sha, second.commit_sha]
    assert repo.commits[second.commit_sha].parent == first.commit_sha
    assert repo.commits[second.commit_sha].title == "Publish merged (cocktail.yml)"
    assert len(hub_server.seen("commit")) == 3  # main, then the two pushes to refs/pr/1
    assert hub_server.head(REPO) == main.commit_sha  # main untouched
    assert {n: d for n, d in hub_server.files(REPO, "refs/pr/1").items() if n != ".gitattributes"} == (
        folder_bytes(model)
    )
    description = HfApi().get_discussion_details(REPO, 1, token=hub_server.write_token).events[0].content
    assert description == "Publish merged (cocktail.yml)"  # the title is the key, the message describes it


def test_another_key_opens_its_own_pull_request_and_paging_finds_the_first(hub_server, model):
    hub_server.discussions_per_page = 1  # newest first: PR 1 is on the last page
    first = publish(model, hub_server, pr_title=KEY)
    other = publish(model, hub_server, pr_title="cocktail-bot preview: acme/recipes#8 (cocktail.yml)")
    third = publish(model, hub_server, pr_title="cocktail-bot preview: acme/recipes#9 (cocktail.yml)")
    assert [first.revision, other.revision, third.revision] == ["refs/pr/1", "refs/pr/2", "refs/pr/3"]
    hub_server.requests.clear()
    (model / "README.md").write_text("# merged, second push\n")
    again = publish(model, hub_server, pr_title=KEY)
    assert again.changed and again.revision == "refs/pr/1"
    assert len(hub_server.seen("discussions")) == 3 and len(hub_server.repos[REPO].pull_requests) == 3
    assert pr_commits(hub_server, 2) == [other.commit_sha]


def test_a_closed_preview_pull_request_is_not_reused(hub_server, model):
    first = publish(model, hub_server, pr_title=KEY)
    HfApi().change_discussion_status(REPO, 1, "closed", token=hub_server.write_token)
    second = publish(model, hub_server, pr_title=KEY)
    assert second.changed and second.revision == "refs/pr/2"
    assert second.pr_url == f"{hub_server.endpoint}/{REPO}/discussions/2"
    assert hub_server.head(REPO, "refs/pr/1") == first.commit_sha
    assert pr_commits(hub_server, 1) == [first.commit_sha]


def test_someone_elses_pull_request_with_the_same_title_is_not_reused(hub_server, model):
    from tests.hub_server import OTHER_TOKEN

    hub_server.create_repo(REPO)
    theirs = HfApi().create_commit(
        REPO, [CommitOperationAdd("notes.md", b"mine")], commit_message=KEY, create_pr=True, token=OTHER_TOKEN
    )
    assert hub_server.repos[REPO].pull_requests[1].author == "someone-else"
    report = publish(model, hub_server, pr_title=KEY)
    assert (
        report.revision == "refs/pr/2" and hub_server.repos[REPO].pull_requests[2].author == "cocktail-tester"
    )
    assert hub_server.head(REPO, "refs/pr/1") == theirs.oid


def test_a_pull_request_against_another_branch_is_not_reused(hub_server, model):
    hub_server.create_repo(REPO)
    hub_server.branch(REPO, "dev")
    on_dev = publish(model, hub_server, revision="dev", pr_title=KEY)
    on_main = publish(model, hub_server, pr_title=KEY)
    assert (on_dev.revision, on_main.revision) == ("refs/pr/1", "refs/pr/2")
    assert hub_server.repos[REPO].pull_requests[1].base == "dev"


def test_a_keyed_preview_identical_to_the_branch_opens_no_pull_request(hub_server, model):
    main = publish(model, hub_server)
    report = publish(model, hub_server, pr_title=KEY)
    assert not report.changed and report.revision == "main" and report.pr_url is None
    assert report.commit_sha == main.commit_sha and hub_server.repos[REPO].pull_requests == {}


def test_a_new_branch_is_created_from_main(hub_server, model):
    main = publish(model, hub_server)
    (model / "README.md").write_text("# preview\n")
    report = publish(model, hub_server, revision="preview")
    assert report.revision == "preview" and hub_server.head(REPO) == main.commit_sha
    assert hub_server.files(REPO, "preview")["README.md"] == b"# preview\n"


@pytest.mark.parametrize(("route", "status"), [("commit", 500), ("create_repo", 0), ("model_info", 429)])
def test_transient_failures_are_retried(hub_server, model, route, status, caplog):
    hub_server.fail(route, status, times=1)
    with caplog.at_level(logging.WARNING, logger="cocktail_bot.hub"):
        report = publish(model, hub_server)
    assert (
        report.changed
        and hub_server.files(REPO)["model.safetensors"] == (model / "model.safetensors").read_bytes()
    )
    assert len(hub_server.seen(route)) >= 2
    assert len(hub_server.repos[REPO].commits) == 2  # the initial commit and exactly one publish
    assert "retrying" in caplog.text


def test_a_connection_that_keeps_dropping_gives_up_with_one_message(hub_server, model):
    hub_server.fail("create_repo", 0, times=1 + len(hub_access.RETRY_DELAYS))
    with pytest.raises(RemoteError) as error:
        publish(model, hub_server)
    assert str(error.value) == (
        "could not reach the Hub for cocktail/merged@main (RemoteProtocolError): check the network or "
        "HF_ENDPOINT and try again"
    )
    assert REPO not in hub_server.repos


def test_a_read_only_token_gets_one_message_naming_the_scope(hub_server, model):
    with pytest.raises(RemoteError) as error:
        publish(model, hub_server, token=hub_server.read_token)
    assert str(error.value) == (
        "the token may not write to cocktail/merged (403 Forbidden): use a token with the 'write' role, or a "
        "fine-grained token with 'Write access to contents/settings of all repos' under the 'cocktail' "
        "namespace"
    )
    assert REPO not in hub_server.repos


def test_a_bad_token_and_no_token(hub_server, model):
    with pytest.raises(RemoteError) as error:
        publish(model, hub_server, token="hf_revoked")
    assert str(error.value) == (
        "the Hub rejected the token for cocktail/merged (401 Unauthorized): set HF_TOKEN to "
        "a valid token (or configure trusted publishing with HF_OIDC_RESOURCE)"
    )
    with pytest.raises(CocktailError) as error:
        publish(model, hub_server, token=None)
    assert str(error.value) == (
        "no Hugging Face token to publish cocktail/merged: set HF_TOKEN to a token with write access, or use "
        "trusted publishing (HF_OIDC_RESOURCE=cocktail/merged in a GitHub Actions job with 'permissions: "
        "id-token: write')"
    )
    assert hub_server.requests == [] or all(r.token == "hf_revoked" for r in hub_server.requests)


def test_an_upload_failing_halfway_leaves_the_target_revision_unchanged(
    hub_server, model, tiny_llama_sharded
):
    before = publish(model, hub_server)
    sharded = model.parent / "sharded"
    shutil.copytree(tiny_llama_sharded, sharded)
    assert sum(name.endswith(".safetensors") for name in local_files(sharded)) > 2
    hub_server.fail("lfs_upload", 400, times=1)  # one shard is refused after the others went up
    with pytest.raises(
        RemoteError,
        match=r"^the Hub failed on cocktail/merged@main \(uploading model-0000\d-of-0000\d.safetensors\) "
        r"\(HTTP 400\): injected failure on lfs_upload; try again later$",
    ):
        publish(sharded, hub_server)
    assert len(hub_server.seen("lfs_upload")) > 1
    assert hub_server.head(REPO) == before.commit_sha
    hub_server.fail(
        "commit", 500, times=1 + len(hub_access.RETRY_DELAYS)
    )  # every shard is up, every commit attempt fails
    with pytest.raises(RemoteError, match=r"^the Hub failed on cocktail/merged@main \(HTTP 500\)"):
        publish(sharded, hub_server)
    assert hub_server.head(REPO) == before.commit_sha
    assert {n: d for n, d in hub_server.files(REPO).items() if n != ".gitattributes"} == folder_bytes(model)
    assert publish(sharded, hub_server).changed  # and a later run completes it in one commit


def test_a_failed_first_publish_leaves_no_empty_repo_behind(hub_server, model):
    hub_server.fail("commit", 500, times=1 + len(hub_access.RETRY_DELAYS))
    with pytest.raises(RemoteError, match=r"^the Hub failed on cocktail/merged@main \(HTTP 500\)"):
        publish(model, hub_server)
    assert hub_server.seen("create_repo") and hub_server.seen("lfs_upload")  # created, weights uploaded
    assert REPO not in hub_server.repos
    assert publish(model, hub_server).changed  # the next run creates it again


def test_a_repo_created_by_someone_else_after_the_lookup_is_not_counted_as_ours(hub_server):
    """The lookup says missing, then the repo turns out to exist: it is not ours, so a failure keeps it."""
    api, token = HfApi(endpoint=hub_server.endpoint), hub_server.write_token
    hub_server.create_repo(REPO)
    hub_server.fail("model_info", 404, code="RepoNotFound")  # the lookup raced with someone else's create
    assert create_repo_if_missing(api, REPO, private=False, token=token) is None
    assert REPO in hub_server.repos


def test_only_a_repo_the_run_created_and_nobody_committed_to_is_deleted(hub_server, caplog):
    api, token = HfApi(endpoint=hub_server.endpoint), hub_server.write_token
    head = create_repo_if_missing(api, REPO, private=False, token=token)
    assert head is not None and head == hub_server.head(REPO)
    assert create_repo_if_missing(api, REPO, private=False, token=token) is None  # it exists now
    hub_server.commit(REPO, {"README.md": "# someone else's\n"})
    with caplog.at_level(logging.WARNING, logger="cocktail_bot.hub"):
        delete_created_repo(api, REPO, head, token=token)
    assert REPO in hub_server.repos and "kept cocktail/merged" in caplog.text
    delete_created_repo(api, REPO, hub_server.head(REPO), token=token)
    assert REPO not in hub_server.repos


def test_trusted_publishing_exchanges_an_oidc_token_and_never_shows_it(
    hub_server, model, monkeypatch, caplog, capsys
):
    monkeypatch.setattr(_auth, "_OIDC_TOKEN_CACHE", None)
    monkeypatch.setenv("HF_OIDC_RESOURCE", REPO)
    monkeypatch.setenv("HF_OIDC_ID_TOKEN", "github-id-token")
    hub_server.oidc_subject_tokens["github-id-token"] = REPO
    hub_server.create_repo(REPO)
    with caplog.at_level(logging.DEBUG):
        report = publish(model, hub_server, token=None)
    assert report.changed and len(hub_server.seen("oauth_token")) == 1
    minted = hub_server.seen("commit")[0].token
    assert minted.startswith("hf_oidc_")
    assert hub_server.repos[REPO].commits[report.commit_sha].author == "oidc-cocktail"
    shown = caplog.text + report.model_dump_json() + "".join(capsys.readouterr())
    assert minted not in shown and "github-id-token" not in shown


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(
        CocktailError, match=r"out is not a folder: publish a model folder built by cocktail-bot$"
    ):
        publish_folder(tmp_path / "out", REPO, commit_message="x", token="t")
