"""cocktail_bot.github: the one PR comment (PyGithub over HTTP against tests/github_server.py), outputs,
summary, masking and the comment size limit."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request

import pytest

from cocktail_bot import github
from cocktail_bot.errors import RemoteError
from tests.conftest import (
    CUSTOM_APP_BOT,
    GITHUB_APP_TOKEN,
    GITHUB_CUSTOM_APP_TOKEN,
    GITHUB_FORK_TOKEN,
    GITHUB_REPOSITORY,
    GITHUB_TOKEN,
)
from tests.github_server import parse_outputs

MARKER = github.comment_marker("cocktail.yml")


def client_for(server, token: str = GITHUB_TOKEN):
    """Like github.connect, minus PyGithub's pauses between requests (they protect github.com, not a test
    server); the subprocess tests in test_action.py go through github.connect itself."""
    from github import Auth, Github

    return Github(
        auth=Auth.Token(token), base_url=server.url, seconds_between_requests=0, seconds_between_writes=0
    )


@pytest.fixture
def pull(github_server):
    return github_server.add_pull(GITHUB_REPOSITORY, 7, head_sha="a" * 40)


def test_first_upsert_creates_then_updates_the_same_comment(github_server, pull):
    client = client_for(github_server)
    first = github.upsert_comment(client, GITHUB_REPOSITORY, 7, f"{MARKER}\nfirst", MARKER)
    second = github.upsert_comment(client, GITHUB_REPOSITORY, 7, f"{MARKER}\nsecond", MARKER)

    assert first.created and not second.created and first.id == second.id
    assert first.url == f"https://github.com/{GITHUB_REPOSITORY}/pull/7#issuecomment-{first.id}"
    [comment] = github_server.state.comments_on(GITHUB_REPOSITORY, 7)
    assert (comment.login, comment.body, comment.edits) == ("cocktail-bot", f"{MARKER}\nsecond", 1)


def test_someone_elses_comment_with_the_marker_is_left_alone(github_server, pull):
    quoted = github_server.add_comment(GITHUB_REPOSITORY, 7, "reviewer", f"> {MARKER}\n> quoting the bot")
    client = client_for(github_server)
    result = github.upsert_comment(client, GITHUB_REPOSITORY, 7, f"{MARKER}\nbot", MARKER)

    assert result.created and result.id != quoted.id
    assert quoted.body == f"> {MARKER}\n> quoting the bot" and quoted.edits == 0


def test_comment_of_another_manifest_is_not_reused(github_server, pull):
    client = client_for(github_server)
    other = github.upsert_comment(
        client,
        GITHUB_REPOSITORY,
        7,
        "<!-- cocktail-bot:other/cocktail.yml -->\nx",
        "<!-- cocktail-bot:other/cocktail.yml -->",
    )
    mine = github.upsert_comment(client, GITHUB_REPOSITORY, 7, f"{MARKER}\ny", MARKER)
    assert mine.created and mine.id != other.id


def test_bot_comment_past_the_first_page_is_found(github_server, pull):
    for index in range(45):  # GitHub pages by 30: the bot's comment is on page 2
        github_server.add_comment(GITHUB_REPOSITORY, 7, "reviewer", f"comment {index}")
    own = github_server.add_comment(GITHUB_REPOSITORY, 7, "cocktail-bot", f"{MARKER}\nold")
    client = client_for(github_server)

    result = github.upsert_comment(client, GITHUB_REPOSITORY, 7, f"{MARKER}\nnew", MARKER)

    assert (result.id, result.created, own.body) == (own.id, False, f"{MARKER}\nnew")
    pages = [path for method, path, _ in github_server.state.requests if path.endswith("/issues/7/comments")]
    assert len(pages) == 2


@pytest.mark.parametrize(
    ("token", "login"),
    [(GITHUB_APP_TOKEN, "github-actions[bot]"), (GITHUB_CUSTOM_APP_TOKEN, CUSTOM_APP_BOT)],
    ids=["workflow-token", "custom-app"],
)
def test_installation_token_finds_its_own_comment_without_get_user(github_server, pull, token, login):
    """App tokens get 403 on GET /user: the identity comes from GraphQL's viewer, so an App's bot finds the
    comment it wrote and never adds a second one; nobody else's comment is touched."""
    theirs = github_server.add_comment(GITHUB_REPOSITORY, 7, "cocktail-bot", f"{MARKER}\npersonal token's")
    client = client_for(github_server, token)
    assert github.token_login(client) == login

    first = github.upsert_comment(client, GITHUB_REPOSITORY, 7, f"{MARKER}\none", MARKER)
    second = github.upsert_comment(client, GITHUB_REPOSITORY, 7, f"{MARKER}\ntwo", MARKER)

    assert first.created and second.id == first.id and theirs.edits == 0
    logins = [c.login for c in github_server.state.comments_on(GITHUB_REPOSITORY, 7)]
    assert logins == ["cocktail-bot", login]
    assert not [r for r in github_server.state.requests if r[1] == "/user"]  # no 403 noise in the log


def test_author_input_names_the_login_without_asking(github_server, pull):
    own = github_server.add_comment(GITHUB_REPOSITORY, 7, CUSTOM_APP_BOT, f"{MARKER}\nold")
    client = client_for(github_server, GITHUB_CUSTOM_APP_TOKEN)
    result = github.upsert_comment(
        client, GITHUB_REPOSITORY, 7, f"{MARKER}\nnew", MARKER, author=CUSTOM_APP_BOT
    )
    assert (result.id, result.created, own.body) == (own.id, False, f"{MARKER}\nnew")
    assert not [r for r in github_server.state.requests if r[1] in ("/user", "/graphql")]


def test_bad_token_is_a_remote_error_naming_the_inputs(github_server, pull):
    client = client_for(github_server, "ghp_wrong")
    with pytest.raises(
        RemoteError,
        match=r"^GitHub did not say who the github-token is \(GraphQL viewer, 401\): check the github-token "
        r"input, or name the comment's author with the comment-author input$",
    ):
        github.upsert_comment(client, GITHUB_REPOSITORY, 7, "x", MARKER)


def test_read_only_token_is_refused_as_forbidden(github_server, pull):
    """A fork pull request's GITHUB_TOKEN reads but may not write: CommentForbidden, for the caller to decide."""
    client = client_for(github_server, GITHUB_FORK_TOKEN)
    with pytest.raises(github.CommentForbidden, match=r"\(403: Resource not accessible by integration\)"):
        github.upsert_comment(client, GITHUB_REPOSITORY, 7, f"{MARKER}\nx", MARKER)
    assert github_server.state.comments_on(GITHUB_REPOSITORY, 7) == []


def test_refused_comment_says_which_permission_to_grant(github_server, pull):
    client = client_for(github_server)
    with pytest.raises(RemoteError) as error:
        github.upsert_comment(client, GITHUB_REPOSITORY, 7, "x" * (github.MAX_COMMENT_CHARS + 1), MARKER)
    assert not isinstance(error.value, github.CommentForbidden)
    assert str(error.value) == (
        f"GitHub refused to comment on {GITHUB_REPOSITORY}#7 (422: Validation Failed): give the workflow "
        "'permissions: pull-requests: write', or pass a github-token that may comment"
    )
    assert github_server.state.comments_on(GITHUB_REPOSITORY, 7) == []


def test_pull_head_sha(github_server, pull):
    client = client_for(github_server)
    assert github.pull_head_sha(client, GITHUB_REPOSITORY, 7) == "a" * 40
    with pytest.raises(
        RemoteError, match=rf"^GitHub could not find pull request {GITHUB_REPOSITORY}#8 \(404\)$"
    ):
        github.pull_head_sha(client, GITHUB_REPOSITORY, 8)


def test_is_behind_compares_two_commits_of_one_line(github_server, tmp_path):
    """Older is behind newer; newer, the same commit, a side branch or a commit GitHub does not know is not."""
    origin = tmp_path / "origin"
    identity = ["-c", "user.name=Dev", "-c", "user.email=dev@example.com"]

    def git(*args: str) -> str:
        done = subprocess.run(["git", *identity, "-C", str(origin), *args], capture_output=True, text=True)
        return done.stdout.strip()

    subprocess.run(["git", "init", "-q", "-b", "main", str(origin)], check=True)
    shas = []
    for message in ("older", "newer"):
        git("commit", "-q", "--allow-empty", "-m", message)
        shas.append(git("rev-parse", "HEAD"))
    git("checkout", "-q", "-b", "side", shas[0])
    git("commit", "-q", "--allow-empty", "-m", "side")
    side = git("rev-parse", "HEAD")
    github_server.add_repo(GITHUB_REPOSITORY, git_dir=str(origin / ".git"))
    client = client_for(github_server)
    older, newer = shas
    assert github.is_behind(client, GITHUB_REPOSITORY, older, newer)
    assert github.is_behind(client, GITHUB_REPOSITORY, older, newer[:12])  # as a Hub commit title names it
    assert not github.is_behind(client, GITHUB_REPOSITORY, newer, older)
    assert not github.is_behind(client, GITHUB_REPOSITORY, newer, newer)
    assert not github.is_behind(client, GITHUB_REPOSITORY, side, newer)  # diverged
    assert not github.is_behind(client, GITHUB_REPOSITORY, newer, "0" * 40)  # rewritten history: unknown


def test_server_requires_a_token_and_pages_with_link_headers(github_server, pull):
    for index in range(3):
        github_server.add_comment(GITHUB_REPOSITORY, 7, "reviewer", f"c{index}")
    url = f"{github_server.url}/repos/{GITHUB_REPOSITORY}/issues/7/comments?per_page=2"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url)
    assert refused.value.code == 401
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {GITHUB_TOKEN}"})
    with urllib.request.urlopen(request) as response:
        page = json.load(response)
        link = response.headers["Link"]
    assert [c["body"] for c in page] == ["c0", "c1"]
    assert re.search(r'<[^>]+page=2[^>]*>; rel="next"', link)


# --- pure parts ---------------------------------------------------------------------------------------------


def test_fit_comment_keeps_a_comment_that_fits():
    assert github.fit_comment("short", "shorter", summary_url="u") == "short"


def test_fit_comment_drops_the_card_first():
    full = MARKER + "\n" + "c" * github.MAX_COMMENT_CHARS
    assert github.fit_comment(full, MARKER + "\nno card", summary_url="u") == MARKER + "\nno card"


def test_fit_comment_truncates_with_a_link_and_closes_code_blocks():
    long = MARKER + "\n```yaml\n" + "line of yaml\n" * 10_000
    fitted = github.fit_comment(long, long, summary_url="https://github.com/o/r/actions/runs/1")
    assert len(fitted) <= github.MAX_COMMENT_CHARS
    assert fitted.startswith(MARKER)
    assert fitted.count("```") % 2 == 0
    assert fitted.endswith(
        "the full report is in the [job summary](https://github.com/o/r/actions/runs/1).\n"
    )


def test_outputs_use_the_delimiter_form_for_multiline_values(tmp_path):
    path = tmp_path / "output"
    path.write_text("earlier=step\n")
    github.write_outputs(path, {"repo": "acme/model", "report": "line 1\nline 2", "empty": ""})
    text = path.read_text()
    assert re.search(r"^report<<ghadelimiter_[0-9a-f-]{36}$", text, re.M)
    assert parse_outputs(text) == {
        "earlier": "step",
        "repo": "acme/model",
        "report": "line 1\nline 2",
        "empty": "",
    }


def test_mask_command_escapes_like_the_toolkit(capsys):
    assert github.mask_command("a%b\r\nc") == "::add-mask::a%25b%0D%0Ac"
    import sys

    github.mask_secrets(["hf_secret", None, ""], sys.stdout)
    assert capsys.readouterr().out == "::add-mask::hf_secret\n"


def test_summary_is_appended_and_capped(tmp_path):
    path = tmp_path / "summary.md"
    path.write_text("# earlier step\n")
    github.write_summary(path, "x" * (2 * github.MAX_SUMMARY_BYTES))
    text = path.read_text()
    assert text.startswith("# earlier step\nxxx")
    assert len(text.encode()) <= github.MAX_SUMMARY_BYTES + len("# earlier step\n") + 1
    assert "exceeded the 1 MiB job summary limit" in text
