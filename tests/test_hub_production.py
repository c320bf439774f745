"""The Hub client as it behaves in production, against tests/hub_server.py with the real huggingface_hub client:
rate limits and Retry-After, trusted-publishing tokens that expire mid-run or are refused, a branch pinned
only by the Hub's own answer, hf_xet's errors, and files read once to upload them."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import hf_xet
import pytest
from huggingface_hub import constants, lfs
from huggingface_hub.utils import _auth

from cocktail_bot import hub_access
from cocktail_bot.errors import CocktailError, RemoteError
from cocktail_bot.hub import publish_folder
from cocktail_bot.sources import resolve_source

REPO = "cocktail/merged"
SOURCE = "cocktail/tiny-llama"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_access, "RETRY_DELAYS", (0.0, 0.0, 0.0))


@pytest.fixture
def model(tmp_path: Path, tiny_llamas) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_llamas[0], folder)
    return folder


def publish(folder: Path, hub_server, **kwargs):
    kwargs.setdefault("token", hub_server.write_token)
    return publish_folder(
        folder, REPO, commit_message="cocktail-bot: test", endpoint=hub_server.endpoint, **kwargs
    )


# --- rate limits --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Retry-After": "1"},
        {"RateLimit": '"api";r=0;t=1', "RateLimit-Policy": '"fixed window";"api";q=500;w=300'},
    ],
    ids=["retry-after", "ratelimit"],
)
def test_retries_wait_as_long_as_the_hub_asks(hub_server, model, headers, caplog):
    """The fixed backoff is zero here: the one-second wait can only come from the Hub's headers."""
    hub_server.create_repo(REPO)
    hub_server.fail("commit", 429, times=1, headers=headers)
    started = time.monotonic()
    assert publish(model, hub_server).changed
    assert time.monotonic() - started >= 1.0
    assert "publishing to cocktail/merged failed (429); retrying in 1s [1/3]" in caplog.messages


def test_a_wait_longer_than_we_sit_out_fails_at_once_naming_it(hub_server, model):
    hub_server.create_repo(REPO)
    hub_server.fail("commit", 429, times=1, headers={"Retry-After": "3600"})
    started = time.monotonic()
    with pytest.raises(RemoteError) as error:
        publish(model, hub_server)
    assert time.monotonic() - started < 30
    assert str(error.value) == (
        "the Hub is rate-limiting publishing to cocktail/merged (HTTP 429) and asks to wait 3600 s, longer than "
        "cocktail-bot waits (300 s): try again later"
    )
    assert len(hub_server.seen("commit")) == 1


def test_requested_wait_reads_http_dates_and_ignores_remaining_quota():
    class Answer:
        def __init__(self, headers):
            self.response = type("Response", (), {"headers": headers})()

    soon = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    assert 100 < hub_access.requested_wait(Answer({"Retry-After": soon})) <= 120
    quota_left = {"RateLimit": '"api";r=10;t=50', "RateLimit-Policy": '"fixed window";"api";q=500;w=300'}
    assert hub_access.requested_wait(Answer(quota_left)) is None
    assert hub_access.requested_wait(Answer({})) is None


# --- trusted publishing -------------------------------------------------------------------------------------


@pytest.fixture
def trusted_publishing(hub_server, monkeypatch):
    monkeypatch.setattr(_auth, "_OIDC_TOKEN_CACHE", None)
    monkeypatch.setenv("HF_OIDC_RESOURCE", REPO)
    monkeypatch.setenv("HF_OIDC_ID_TOKEN", "github-id-token")
    hub_server.oidc_subject_tokens["github-id-token"] = REPO
    hub_server.create_repo(REPO)


def test_an_oidc_token_that_expires_mid_publish_is_exchanged_again(hub_server, model, trusted_publishing):
    """The exchanged token lives 2 s; the Hub makes the commit wait 3 s: the retried commit needs a new token,
    which the client exchanges because no token was fixed for the whole run."""
    hub_server.oidc_expires_in = 2
    hub_server.fail("commit", 503, times=1, headers={"Retry-After": "3"})
    report = publish(model, hub_server, token=None)
    assert report.changed
    assert len(hub_server.seen("oauth_token")) >= 2
    first, last = hub_server.seen("commit")[0].token, hub_server.seen("commit")[-1].token
    assert first != last and last.startswith("hf_oidc_")


def test_a_refused_exchange_names_the_claims_to_check(hub_server, model, trusted_publishing, monkeypatch):
    monkeypatch.setenv("HF_OIDC_ID_TOKEN", "id-token-of-another-workflow")
    with pytest.raises(RemoteError) as error:
        publish(model, hub_server, token=None)
    message = str(error.value)
    assert message.startswith(
        "the Hub refused to exchange this job's OIDC token for a token for cocktail/merged (invalid_grant: no "
        "trusted publisher of this resource matches the token's claims)"
    )
    for claim in ("repository", "workflow", "environment", "ref", "docs/action.md"):
        assert claim in message
    assert len(hub_server.seen("oauth_token")) == 1  # a refusal is not retried


# --- pinning ------------------------------------------------------------------------------------------------


def test_a_hub_error_never_pins_a_branch_to_a_cached_commit(hub_server, tiny_llamas):
    """With the Hugging Face cache restored (actions/cache), main is cached at an old commit; the Hub has moved
    on and errors: resolving fails clearly instead of writing the old commit into the lock."""
    old = hub_server.commit_folder(SOURCE, tiny_llamas[0])
    assert resolve_source(SOURCE, download=False).resolved_revision == old
    new = hub_server.commit(SOURCE, {"model.safetensors": tiny_llamas[1] / "model.safetensors"})
    hub_server.fail("model_info", 503, times=1 + len(hub_access.RETRY_DELAYS))
    with pytest.raises(RemoteError, match=r"HTTP 503"):
        resolve_source(SOURCE, download=False)
    assert resolve_source(SOURCE, download=False).resolved_revision == new


def test_offline_mode_still_uses_the_cached_ref(hub_server, tiny_llamas, monkeypatch):
    sha = hub_server.commit_folder(SOURCE, tiny_llamas[0])
    assert resolve_source(SOURCE).resolved_revision == sha
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_source(SOURCE).resolved_revision == sha


# --- hf_xet -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "transient", "message"),
    [
        (
            hf_xet.XetAuthenticationError("token expired"),
            False,
            "the Hub's Xet storage refused the token for cocktail/merged (XetAuthenticationError): use a token "
            "that may write to it (HF_TOKEN, or trusted publishing with HF_OIDC_RESOURCE)",
        ),
        (
            hf_xet.XetObjectNotFoundError("xorb 1234"),
            False,
            "the Hub's Xet storage has no data for a file of cocktail/merged@main (XetObjectNotFoundError): the "
            "repo changed while it was read; run again",
        ),
    ],
    ids=["auth", "not-found"],
)
def test_hf_xet_errors_get_the_http_paths_messages_and_retry_classes(error, transient, message):
    assert hub_access.is_transient(error) is transient
    with pytest.raises(RemoteError) as raised, hub_access.hub_errors(REPO, "main", reading=False):
        raise error
    assert str(raised.value) == message


# --- one read per file --------------------------------------------------------------------------------------


def test_each_file_is_read_once_to_hash_it(hub_server, model, monkeypatch):
    """local_files hashes every file; the upload is handed that sha256 instead of hashing the file again."""
    hashed = []
    real = lfs.sha_fileobj
    monkeypatch.setattr(
        lfs, "sha_fileobj", lambda fileobj, *a, **k: hashed.append(fileobj) or real(fileobj, *a, **k)
    )
    hub_server.create_repo(REPO)
    assert publish(model, hub_server).changed
    assert hashed == []
    assert "model.safetensors" in hub_server.files(REPO)


def test_no_token_at_all_is_refused_before_any_call(hub_server, model):
    with pytest.raises(CocktailError, match=r"^no Hugging Face token to publish cocktail/merged"):
        publish(model, hub_server, token=None)
    assert hub_server.seen("commit") == []
