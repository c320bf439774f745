"""GitHub edges of the Action: the one PR comment, the job summary, step outputs and secret masking.

The comment is found by a hidden marker AND by its author being the token's own identity, so the bot never edits
a comment someone else wrote (even one that quotes the marker). The identity is GraphQL's ``viewer``, which answers
for every kind of token (a personal token's user, ``github-actions[bot]`` for the workflow's token, ``SLUG[bot]``
for another App's installation token), unlike ``GET /user``, which installation tokens may not call. Everything here is either a pure function over
text or a thin call through PyGithub; rendering the report lives in :mod:`cocktail_bot.comment`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cocktail_bot.errors import RemoteError

logger = logging.getLogger(__name__)

MAX_COMMENT_CHARS = 65536  # GitHub rejects longer issue comment bodies with 422
MAX_SUMMARY_BYTES = 1024 * 1024  # GitHub's limit for one step's job summary


class CommentForbidden(RemoteError):
    """The token may not comment (403): a fork pull request's read-only token, or missing permissions."""


def comment_marker(manifest_path: str) -> str:
    """The hidden first line tying a comment to one manifest, so two manifests in a repo get two comments."""
    return f"<!-- cocktail-bot:{manifest_path} -->"


def fit_comment(full: str, without_card: str, *, summary_url: str, limit: int = MAX_COMMENT_CHARS) -> str:
    """The longest form of the comment GitHub accepts: as is, else without the card, else cut with a link.

    The marker is at the top, so cutting from the end keeps the comment findable.
    """
    if len(full) <= limit:
        return full
    if len(without_card) <= limit:
        return without_card
    notice = (
        "\n\n---\n**Truncated**: the comment exceeded GitHub's limit; the full report is in the "
        f"[job summary]({summary_url}).\n"
    )
    cut = without_card[: limit - len(notice) - 8]
    cut = cut[: cut.rfind("\n")] if "\n" in cut else cut
    if cut.count("```") % 2:  # do not leave the notice inside an open code block
        cut += "\n```"
    return cut + notice


def fit_summary(markdown: str, *, limit: int = MAX_SUMMARY_BYTES) -> str:
    """Job summaries over 1 MiB are refused by the runner; keep the head and say so."""
    data = markdown.encode()
    if len(data) <= limit:
        return markdown
    notice = (
        "\n\n**Truncated**: the report exceeded the 1 MiB job summary limit; `report-path` has all of it.\n"
    )
    return data[: limit - len(notice.encode()) - 8].decode(errors="ignore") + notice


def mask_command(secret: str) -> str:
    """The workflow command that makes the runner hide ``secret`` in logs (escaped as the toolkit does)."""
    escaped = secret.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return f"::add-mask::{escaped}"


def mask_secrets(secrets: list[str | None], stream: IO[str]) -> None:
    """Ask the runner to mask every non-empty secret: the mask command is where alone a token is printed."""
    for secret in secrets:
        if secret:
            print(mask_command(secret), file=stream, flush=True)


def write_summary(path: str | Path, markdown: str) -> None:
    """Append to ``GITHUB_STEP_SUMMARY`` (several steps share the file, so never truncate it)."""
    with open(path, "a", encoding="utf-8") as summary:
        summary.write(fit_summary(markdown))
        summary.write("\n")


def format_outputs(outputs: Mapping[str, str]) -> str:
    """``GITHUB_OUTPUT`` lines: ``name=value``, or the heredoc form with a random delimiter if multi-line."""
    lines = []
    for name, value in outputs.items():
        if "\n" in value or "\r" in value:
            delimiter = f"ghadelimiter_{uuid.uuid4()}"
            lines.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
        else:
            lines.append(f"{name}={value}\n")
    return "".join(lines)


def write_outputs(path: str | Path, outputs: Mapping[str, str]) -> None:
    with open(path, "a", encoding="utf-8") as output_file:
        output_file.write(format_outputs(outputs))


@dataclass(frozen=True)
class CommentResult:
    id: int
    url: str
    created: bool


def connect(token: str, api_url: str):
    """A PyGithub client for ``GITHUB_API_URL`` (github.com, GHES, or a test server)."""
    from github import Auth, Github

    return Github(auth=Auth.Token(token), base_url=api_url.rstrip("/"), timeout=30)


def token_login(client) -> str:
    """The login the token comments as, from GraphQL's ``viewer`` (no ``GET /user``: App tokens get 403)."""
    from github import GithubException

    try:
        _, data = client.requester.graphql_query("query { viewer { login } }", {})
        return data["data"]["viewer"]["login"]
    except (GithubException, KeyError, TypeError) as error:
        status = getattr(error, "status", None)
        raise RemoteError(
            f"GitHub did not say who the github-token is (GraphQL viewer, {status or 'no login'}): check "
            "the github-token input, or name the comment's author with the comment-author input"
        ) from None


def upsert_comment(
    client, repository: str, number: int, body: str, marker: str, *, author: str | None = None
) -> CommentResult:
    """Edit our own comment carrying ``marker`` on PR ``number``, or create it; nobody else's.

    ``author`` (the ``comment-author`` input) names our login; otherwise the token says who it is.
    """
    from github import GithubException

    login = author or token_login(client)
    try:
        issue = client.get_repo(repository).get_issue(number)
        for comment in issue.get_comments():
            if comment.user.login == login and marker in (comment.body or ""):
                comment.edit(body)
                logger.info("updated comment %s", comment.html_url)
                return CommentResult(comment.id, comment.html_url, created=False)
        comment = issue.create_comment(body)
    except GithubException as error:
        message = error.data.get("message") if isinstance(error.data, dict) else error.data
        kind = CommentForbidden if error.status == 403 else RemoteError
        raise kind(
            f"GitHub refused to comment on {repository}#{number} ({error.status}: {message}): give the "
            "workflow 'permissions: pull-requests: write', or pass a github-token that may comment"
        ) from None
    logger.info("created comment %s", comment.html_url)
    return CommentResult(comment.id, comment.html_url, created=True)


def pull_head_sha(client, repository: str, number: int) -> str:
    """The PR's current head commit: a run (or a saved report) for any other commit is superseded."""
    from github import GithubException

    try:
        return client.get_repo(repository).get_pull(number).head.sha
    except GithubException as error:
        raise RemoteError(
            f"GitHub could not find pull request {repository}#{number} ({error.status})"
        ) from None


def is_behind(client, repository: str, commit: str, other: str) -> bool:
    """Whether ``commit`` is an ancestor of ``other`` (``other`` is newer history of the same line). A commit
    GitHub does not know (history rewritten since) is not newer."""
    from github import GithubException

    try:
        return client.get_repo(repository).compare(other, commit).status == "behind"
    except GithubException as error:
        if error.status == 404:
            return False
        raise RemoteError(
            f"GitHub could not compare {commit[:12]} with {other[:12]} in {repository} ({error.status})"
        ) from None


def is_fork(pull_request: Mapping[str, Any]) -> bool:
    """A PR whose head lives in another repository (or a deleted fork) runs without the base's secrets."""
    head_repo = (pull_request.get("head") or {}).get("repo") or {}
    base_repo = (pull_request.get("base") or {}).get("repo") or {}
    return not head_repo or head_repo.get("full_name") != base_repo.get("full_name")
