"""The GitHub REST calls of the update bot and the ``/cocktail`` commands, through PyGithub.

Pull requests by head branch (open one, or update the open one), a user's permission on the repository,
replies and reactions to a comment. Each GitHub refusal becomes one ``RemoteError`` naming the call and the
permission the workflow needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cocktail_bot.errors import RemoteError

# Permissions that may push to the repository, as `GET .../collaborators/{user}/permission` names them
# (its `permission` field reports maintain as write and triage as read).
WRITE_PERMISSIONS = frozenset({"admin", "maintain", "write"})


@contextmanager
def github_errors(what: str, permission: str) -> Iterator[None]:
    from github import GithubException

    try:
        yield
    except GithubException as error:
        message = error.data.get("message") if isinstance(error.data, dict) else error.data
        raise RemoteError(
            f"GitHub refused to {what} ({error.status}: {message}): the workflow needs "
            f"'permissions: {permission}'"
        ) from error


def pulls_from(repo, branch: str) -> list[Any]:
    """Every pull request (open or closed) whose head is ``branch`` of this repository, newest first."""
    owner = repo.full_name.split("/")[0]
    with github_errors(f"list the pull requests of {branch}", "pull-requests: read"):
        pulls = list(repo.get_pulls(state="all", head=f"{owner}:{branch}"))
    return sorted(pulls, key=lambda pull: pull.number, reverse=True)


def open_or_update_pull(repo, existing, *, branch: str, title: str, body: str) -> tuple[Any, bool]:
    """Edit ``existing`` (an open pull request from ``branch``) or open one to the default branch; (pull, created)."""
    with github_errors(f"open or update the pull request from {branch}", "pull-requests: write"):
        if existing is not None:
            existing.edit(title=title, body=body)
            return existing, False
        return repo.create_pull(base=repo.default_branch, head=branch, title=title, body=body), True


def permission_of(repo, login: str) -> str:
    """``login``'s permission on the repository: admin, write, read or none."""
    with github_errors(f"read {login}'s permission on {repo.full_name}", "contents: read"):
        return repo.get_collaborator_permission(login)


def reply(repo, number: int, body: str) -> None:
    with github_errors(f"comment on {repo.full_name}#{number}", "pull-requests: write"):
        repo.get_issue(number).create_comment(body)


def react(repo, number: int, comment_id: int, content: str) -> None:
    with github_errors(f"react to comment {comment_id}", "pull-requests: write"):
        repo.get_issue(number).get_comment(comment_id).create_reaction(content)
