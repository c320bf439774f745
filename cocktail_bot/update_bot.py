"""The Action's ``mode: update``: run ``cocktail update`` on a schedule and propose what moved as one pull request.

When a source moved, the new lock is committed on top of the checked-out default branch and force-pushed to
``cocktail/update/<manifest name>`` (the bot's own branch, rebuilt on every run), and the one pull request from
that branch is opened or updated. Its body records the proposed commits in a hidden line, so that a pull request
closed without merging declines exactly those commits: the same commits are not proposed again, a newer one is.
Nothing moved: no branch, no pull request, exit 0.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cocktail_bot import __version__, github
from cocktail_bot.errors import CocktailError
from cocktail_bot.report import EvalResult, Provenance, Report
from cocktail_bot.update import UpdateResult

if TYPE_CHECKING:
    from cocktail_bot.action import ActionEnv

logger = logging.getLogger(__name__)

BRANCH_PREFIX = "cocktail/update/"
TEMPLATE = "update_pr.md.j2"
PROPOSED = re.compile(r"<!-- cocktail-bot:proposed (\{.*?\}) -->")
MODEL_DIR = "model"


def update_branch(name: str) -> str:
    """``cocktail/update/<name>``, with anything git refuses in a branch name replaced."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "cocktail"
    return BRANCH_PREFIX + safe


def proposed_commits(result: UpdateResult) -> dict[str, str]:
    return {source.label: source.new_commit for source in result.moved}


def proposed_line(commits: dict[str, str]) -> str:
    """The hidden line a pull request body keeps its proposed commits in (``>`` escaped: it ends comments)."""
    data = json.dumps(commits, sort_keys=True).replace(">", "\\u003e")
    return f"<!-- cocktail-bot:proposed {data} -->"


def read_proposed(body: str | None) -> dict[str, str] | None:
    match = PROPOSED.search(body or "")
    if match is None:
        return None
    try:
        commits = json.loads(match.group(1))
    except ValueError:
        return None
    return commits if isinstance(commits, dict) else None


def declined_by(pulls: Sequence[Any], commits: dict[str, str]) -> Any | None:
    """A pull request closed without merging that proposed exactly ``commits``, if any."""
    return next(
        (p for p in pulls if p.state == "closed" and not p.merged and read_proposed(p.body) == commits), None
    )


def eval_comparison(before: Sequence[EvalResult], after: Sequence[EvalResult]) -> dict[str, Any]:
    """Rows (sources in order, the merge last) by eval set, each cell the result before and after."""
    from cocktail_bot.templating import MERGED, eval_table

    table = eval_table([*before, *after])  # sets and models of both, in order
    old = {(r.model, r.eval_set): r for r in before}
    new = {(r.model, r.eval_set): r for r in after}
    rows = [
        {
            "model": row["model"],
            "merged": row["model"] == MERGED,
            "cells": [
                {"before": old.get((row["model"], s["name"])), "after": new.get((row["model"], s["name"]))}
                for s in table["sets"]
            ],
        }
        for row in table["rows"]
    ]
    return {"sets": table["sets"], "rows": rows}


def render_body(result: UpdateResult, report: Report | None, *, lock_path: str, run_url: str | None) -> str:
    from cocktail_bot.templating import render_builtin

    return render_builtin(
        TEMPLATE,
        {
            "marker": github.comment_marker(result.manifest),
            "proposed": proposed_line(proposed_commits(result)),
            "result": result,
            "report": report,
            "evals": eval_comparison(result.evals_before, result.evals_after or []),
            "lock_path": lock_path,
            "run_url": run_url,
            "tool_version": __version__,
        },
    )


def pull_title(name: str, result: UpdateResult) -> str:
    moved = ", ".join(f"{source.label} ({source.new_commit[:7]})" for source in result.moved)
    return f"cocktail: update {name}: {moved}"


def preview_title(repository: str, branch: str, manifest: str) -> str:
    """The key of the update pull request's one Hub preview, the same on every run (like the PR itself)."""
    return f"cocktail-bot preview: {repository} {branch} ({manifest})"


def run_update(env: ActionEnv) -> int:
    """The update step: its exit code is non-zero only when checking or proposing failed."""
    try:
        status, message, pull_url = _update(env)
    except CocktailError as error:
        print(f"error: {error}", file=sys.stderr)
        _finish(env, "failure", f"## ❌ cocktail-bot update failed\n\n{error}\n", "")
        return error.exit_code
    _finish(env, status, message, pull_url)
    return 0


def _update(env: ActionEnv) -> tuple[str, str, str]:
    """(status, summary, pull request URL): unchanged, declined or updated."""
    from cocktail_bot import github_api, gitops
    from cocktail_bot.lock import default_lock_path
    from cocktail_bot.manifest import load_manifest
    from cocktail_bot.update import render_text, update_manifest

    if not env.github_token or not env.repository:
        raise CocktailError(
            "mode update pushes a branch and opens a pull request: it needs the github-token input "
            "(with contents: write and pull-requests: write) and GITHUB_REPOSITORY"
        )
    manifest = load_manifest(env.manifest)
    branch = update_branch(manifest.name)
    checked, _ = update_manifest(manifest.path, plan=True, token=env.hf_token)
    if not checked.moved:
        return "unchanged", render_text(checked), ""
    repo = _repository(env)
    pulls = github_api.pulls_from(repo, branch)
    commits = proposed_commits(checked)
    if (declined := declined_by(pulls, commits)) is not None:
        return (
            "declined",
            f"{', '.join(commits)}: these commits were proposed in {declined.html_url}, which was closed "
            "without merging; they are not proposed again (a newer commit will be)\n",
            declined.html_url,
        )
    publish = bool(manifest.output.repo and (env.hf_token or env.hub_oidc))
    root = gitops.toplevel(manifest.path.parent)
    result, report = update_manifest(
        manifest.path,
        env.work_dir / MODEL_DIR,
        token=env.hf_token,
        publish=publish,
        pr_title=preview_title(env.repository, branch, manifest.relative_path),
        provenance=Provenance(
            repository=env.repository,
            commit=gitops.head_commit(root),
            ref=f"refs/heads/{branch}",
            run_url=env.run_url,
            server_url=env.server_url,
        ),
        progress=False,
    )
    if not result.moved:  # moved back between the check and the build
        return "unchanged", render_text(result), ""
    lock_file = default_lock_path(manifest.path)
    relative = lock_file.resolve().relative_to(root.resolve()).as_posix()
    commit = gitops.commit_files(
        root,
        {relative: lock_file.read_bytes()},
        f"{pull_title(manifest.name, result)}\n\n{render_text(result)}",
    )
    gitops.push_branch(root, commit, branch, token=env.github_token)
    body = render_body(result, report, lock_path=relative, run_url=env.run_url)
    open_pull = next((p for p in pulls if p.state == "open"), None)
    pull, created = github_api.open_or_update_pull(
        repo, open_pull, branch=branch, title=pull_title(manifest.name, result), body=body
    )
    logger.info("%s %s", "opened" if created else "updated", pull.html_url)
    return "updated", body, pull.html_url


def _repository(env: ActionEnv):
    from cocktail_bot.github_api import github_errors

    with github_errors(f"read {env.repository}", "contents: read"):
        return github.connect(env.github_token, env.api_url).get_repo(env.repository)  # type: ignore[arg-type]


def _finish(env: ActionEnv, status: str, summary: str, pull_url: str) -> None:
    print(summary, end="" if summary.endswith("\n") else "\n")
    if env.summary_path:
        github.write_summary(env.summary_path, summary)
    if env.output_path:
        github.write_outputs(env.output_path, {"status": status, "pull-request": pull_url})
