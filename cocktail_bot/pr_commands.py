"""``/cocktail rebuild`` and ``/cocktail plan`` in a pull request comment (the ``issue_comment`` event).

Only users with write permission on the repository (asked of the API, not taken from the payload) may run
them; anyone else gets a short reply saying who may. A fork's pull request only gets ``/cocktail plan``: a
rebuild would publish with the base repository's secrets. An accepted command becomes the ``pull_request``
run it asks for (``prepare`` returns that environment), and checks first that the checkout is the pull
request's head commit, so the comment's author gets what they saw.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cocktail_bot.errors import CocktailError

if TYPE_CHECKING:
    from cocktail_bot.action import ActionEnv

logger = logging.getLogger(__name__)

COMMANDS = ("rebuild", "plan")
COMMAND_LINE = re.compile(r"^\s*/cocktail(?:\s+(\S+))?", re.MULTILINE)
ACCEPTED, REFUSED = "eyes", "-1"


def parse_command(body: str | None) -> str | None:
    """The word after ``/cocktail`` at the start of a line ("" for a bare ``/cocktail``), or None."""
    match = COMMAND_LINE.search(body or "")
    if match is None:
        return None
    return (match.group(1) or "").lower()


def prepare(env: ActionEnv) -> ActionEnv | None:
    """The pull request run a ``/cocktail`` comment asks for, or None when it was refused (with a reply) or is
    not a command on a pull request."""
    from cocktail_bot import github, github_api

    issue, comment = env.event.get("issue") or {}, env.event.get("comment") or {}
    command = parse_command(comment.get("body"))
    if env.event.get("action", "created") != "created" or command is None or "pull_request" not in issue:
        logger.info("not a new /cocktail comment on a pull request: nothing to do")
        return None
    if not env.github_token or not env.repository:
        raise CocktailError("/cocktail commands need the github-token input and GITHUB_REPOSITORY")
    number, login = int(issue["number"]), (comment.get("user") or {}).get("login", "")
    with github_api.github_errors(f"read {env.repository}", "contents: read"):
        repo = github.connect(env.github_token, env.api_url).get_repo(env.repository)

    def refuse(message: str) -> None:
        github_api.react(repo, number, comment["id"], REFUSED)
        github_api.reply(repo, number, f"@{login} {message}")
        logger.info("refused /cocktail %s from %s: %s", command, login, message)

    if command not in COMMANDS:
        refuse("unknown command: use `/cocktail rebuild` (build and preview again) or `/cocktail plan`.")
        return None
    permission = github_api.permission_of(repo, login)
    if permission not in github_api.WRITE_PERMISSIONS:
        refuse(
            f"`/cocktail {command}` can only be run by users with write permission on {env.repository} "
            f"(yours is {permission}); a maintainer can comment it for you."
        )
        return None
    with github_api.github_errors(f"read pull request #{number}", "pull-requests: read"):
        pull = repo.get_pull(number)
        payload: dict[str, Any] = pull.raw_data
    if pull.state != "open":
        refuse(f"#{number} is {pull.state}: commands run on open pull requests only.")
        return None
    if command == "rebuild" and github.is_fork(payload):
        refuse(
            "this pull request comes from a fork, so only `/cocktail plan` is accepted: a rebuild would "
            "publish with this repository's secrets. Use the fork-safe workflow pair to build it."
        )
        return None
    _check_checkout(env, payload["head"]["sha"], number)
    github_api.react(repo, number, comment["id"], ACCEPTED)
    return dataclasses.replace(
        env,
        event_name="pull_request",
        event={
            "action": "synchronize",
            "number": number,
            "pull_request": payload,
            "repository": payload["base"]["repo"],
        },
        mode="plan" if command == "plan" else env.mode,
    )


def _check_checkout(env: ActionEnv, head_sha: str, number: int) -> None:
    """The workflow checked out ``refs/pull/N/head``; a push since the comment must not be built unseen."""
    from cocktail_bot import gitops

    checked_out = gitops.head_commit(Path(env.manifest).resolve().parent)
    if checked_out != head_sha:
        raise CocktailError(
            f"the checkout is at {checked_out[:12]} but pull request #{number}'s head is {head_sha[:12]}: "
            "check out refs/pull/N/head in the workflow (see docs/bot.md), or comment again after a push"
        )
