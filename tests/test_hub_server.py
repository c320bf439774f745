"""The Hub test server answers as the real huggingface_hub client expects (so Hub tests mean something)."""

from __future__ import annotations

import hashlib

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

REPO = "cocktail/demo"


@pytest.fixture
def api(hub_server) -> HfApi:
    return HfApi(endpoint=hub_server.endpoint, token=hub_server.write_token)


def test_whoami_and_repo_creation(hub_server, api):
    assert api.whoami()["name"] == "cocktail-tester"
    url = api.create_repo(REPO, private=True)
    assert url == f"{hub_server.endpoint}/{REPO}" and hub_server.repos[REPO].private
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    with pytest.raises(HfHubHTTPError) as error:
        api.create_repo(REPO)
    assert error.value.response.status_code == 409


def test_commits_are_whole_trees_and_every_revision_reads_its_own_files(hub_server, api):
    api.create_repo(REPO)
    weights = bytes(range(256)) * 64
    first = api.create_commit(
        REPO,
        [CommitOperationAdd("model.safetensors", weights), CommitOperationAdd("config.json", b'{"a": 1}')],
        commit_message="one",
    )
    second = api.create_commit(REPO, [CommitOperationAdd("config.json", b'{"a": 2}')], commit_message="two")
    hub_server.tag(REPO, "v1", first.oid)
    assert hub_server.files(REPO)["model.safetensors"] == weights  # carried over from the parent
    assert hub_server.files(REPO, "v1")["config.json"] == b'{"a": 1}'
    info = api.model_info(REPO, revision="v1", files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings}
    assert (
        info.sha == first.oid
        and siblings["model.safetensors"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    )
    assert siblings["config.json"].lfs is None
    tree = {f.path: f for f in api.list_repo_tree(REPO, revision=second.oid, recursive=True)}
    assert tree["model.safetensors"].lfs.size == len(weights) and set(tree) == {
        ".gitattributes",
        "config.json",
        "model.safetensors",
    }
    meta = get_hf_file_metadata(
        hf_hub_url(REPO, "model.safetensors", revision="v1", endpoint=hub_server.endpoint)
    )
    assert (meta.commit_hash, meta.etag, meta.size) == (
        first.oid,
        hashlib.sha256(weights).hexdigest(),
        len(weights),
    )
    path = hf_hub_download(REPO, "config.json", revision="v1", endpoint=hub_server.endpoint)
    assert open(path, "rb").read() == b'{"a": 1}'


def test_refs_list_branches_tags_and_pull_requests(hub_server, api):
    api.create_repo(REPO)
    api.create_branch(REPO, branch="dev")
    pr = api.create_commit(
        REPO, [CommitOperationAdd("x.txt", b"x")], commit_message="proposal", create_pr=True
    )
    assert (pr.pr_num, pr.pr_revision) == (1, "refs/pr/1")
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [b.name for b in refs.branches] == ["dev", "main"]
    assert [(p.ref, p.target_commit) for p in refs.pull_requests] == [("refs/pr/1", pr.oid)]
    assert "x.txt" not in hub_server.files(REPO) and hub_server.files(REPO, "refs/pr/1")["x.txt"] == b"x"


def test_errors_map_to_the_client_exceptions(hub_server, api):
    hub_server.create_repo("cocktail/private", private=True)
    anonymous = HfApi(endpoint=hub_server.endpoint, token=False)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info("cocktail/private")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("cocktail/none")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("cocktail/private", revision="nope")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(
            "cocktail/private", "missing.json", endpoint=hub_server.endpoint, token=hub_server.write_token
        )
    with pytest.raises(HfHubHTTPError) as error:
        HfApi(endpoint=hub_server.endpoint, token="hf_unknown").model_info("cocktail/private")
    assert error.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as error:
        HfApi(endpoint=hub_server.endpoint, token=hub_server.read_token).create_commit(
            "cocktail/private", [CommitOperationAdd("a.txt", b"a")], commit_message="no"
        )
    assert error.value.response.status_code == 403


def test_a_commit_on_a_moved_parent_is_refused(hub_server, api):
    api.create_repo(REPO)
    start = hub_server.head(REPO)
    hub_server.commit(REPO, {"other.txt": "someone else"})
    with pytest.raises(HfHubHTTPError) as error:
        api.create_commit(
            REPO, [CommitOperationAdd("a.txt", b"a")], commit_message="late", parent_commit=start
        )
    assert error.value.response.status_code == 412


def test_injected_failures_hit_only_the_next_matching_requests(hub_server, api):
    api.create_repo(REPO)
    hub_server.fail("model_info", 503, times=1)
    with pytest.raises(HfHubHTTPError):
        api.model_info(REPO)
    assert api.model_info(REPO).sha == hub_server.head(REPO)


def test_pull_requests_are_listed_by_page_detailed_closed_and_take_commits_on_their_ref(hub_server, api):
    from tests.hub_server import OTHER_TOKEN

    api.create_repo(REPO)
    hub_server.discussions_per_page = 2
    mine = api.create_commit(
        REPO,
        [CommitOperationAdd("a.txt", b"a")],
        commit_message="mine",
        commit_description="why",
        create_pr=True,
    )
    theirs = HfApi(endpoint=hub_server.endpoint, token=OTHER_TOKEN).create_pull_request(REPO, "theirs")
    api.create_commit(REPO, [CommitOperationAdd("c.txt", b"c")], commit_message="third", create_pr=True)
    listed = list(api.get_repo_discussions(REPO, discussion_type="pull_request"))  # two pages
    assert [(d.num, d.title, d.author, d.status) for d in listed] == [
        (3, "third", "cocktail-tester", "open"),
        (2, "theirs", "someone-else", "draft"),
        (1, "mine", "cocktail-tester", "open"),
    ]
    assert (
        theirs.num == 2 and theirs.git_reference == "refs/pr/2" and theirs.target_branch == "refs/heads/main"
    )
    by_me = api.get_repo_discussions(REPO, author="cocktail-tester", discussion_status="open")
    assert [d.num for d in by_me] == [3, 1]

    update = api.create_commit(
        REPO, [CommitOperationAdd("b.txt", b"b")], commit_message="update", revision="refs/pr/1"
    )
    assert update.pr_url is None and hub_server.head(REPO, "refs/pr/1") == update.oid
    assert hub_server.files(REPO, "refs/pr/1").keys() == {".gitattributes", "a.txt", "b.txt"}
    assert "a.txt" not in hub_server.files(REPO)
    api.change_discussion_status(REPO, 1, "closed", comment="superseded")
    details = api.get_discussion_details(REPO, 1)
    assert (details.status, details.target_branch, details.url) == (
        "closed",
        "refs/heads/main",
        f"{hub_server.endpoint}/{REPO}/discussions/1",
    )
    # the comment given with the status change shows as a comment, then the change
    assert [e.type for e in details.events] == ["comment", "commit", "commit", "comment", "status-change"]
    assert details.events[3].content == "superseded"
    assert details.events[0].content == "why" and details.events[2].oid == update.oid
    assert details.diff == "diff --git a/a.txt b/a.txt\ndiff --git a/b.txt b/b.txt\n"
    assert [d.num for d in api.get_repo_discussions(REPO, discussion_status="open")] == [3]
    with pytest.raises(HfHubHTTPError) as error:  # only its author or a writer may close a pull request
        HfApi(endpoint=hub_server.endpoint, token=hub_server.read_token).change_discussion_status(
            REPO, 2, "closed"
        )
    assert error.value.response.status_code == 403
    assert mine.pr_num == 1


def test_file_reads_answer_ranges_like_the_resolve_endpoint(hub_server, api):
    """LFS files redirect to storage on another origin (no token sent there); both honour Range with 206."""
    from huggingface_hub.utils import get_session

    api.create_repo(REPO)
    data = bytes(range(256)) * 100
    api.create_commit(REPO, [CommitOperationAdd("model.safetensors", data)], commit_message="w")
    url = hf_hub_url(REPO, "model.safetensors", endpoint=hub_server.endpoint)
    session = get_session()
    redirect = session.get(url, follow_redirects=False)
    assert redirect.status_code == 302 and redirect.headers["X-Linked-Size"] == str(len(data))
    assert redirect.headers["Location"].startswith(hub_server.cdn_endpoint)
    ranged = session.get(
        url, headers={"Range": "bytes=10-19", "Authorization": f"Bearer {hub_server.read_token}"}
    )
    assert ranged.status_code == 206 and ranged.content == data[10:20]
    assert ranged.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert hub_server.seen("cdn")[-1].token is None  # the token stayed on the Hub's origin
    assert session.get(url, headers={"Range": "bytes=-5"}).content == data[-5:]
    assert session.get(url, headers={"Range": "bytes=25590-"}).content == data[25590:]
    unsatisfiable = session.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert (
        unsatisfiable.status_code == 416 and unsatisfiable.headers["Content-Range"] == f"bytes */{len(data)}"
    )
    api.create_commit(REPO, [CommitOperationAdd("config.json", b'{"a": 1}')], commit_message="c")
    small = session.get(
        hf_hub_url(REPO, "config.json", endpoint=hub_server.endpoint), headers={"Range": "bytes=1-3"}
    )
    assert small.status_code == 206 and small.content == b'"a"'
