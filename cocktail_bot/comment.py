"""What one ``cocktail action`` run concluded, and its text for the PR comment and the job summary.

``ActionResult`` is also the file the fork-safe workflow pair passes between its two workflows: the untrusted
``pull_request`` run saves it as an artifact, the privileged ``workflow_run`` run validates it and comments.
So the comment is always rendered here, from data, never taken as Markdown from an artifact.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from cocktail_bot import __version__
from cocktail_bot.github import comment_marker, fit_comment
from cocktail_bot.report import Report

COMMENT_TEMPLATE = "pr_comment.md.j2"

Mode = Literal["plan", "build", "publish", "close"]


class ActionResult(BaseModel):
    """The outcome of a run, with or without a pipeline report (a manifest that fails to load has none)."""

    status: Literal["success", "failure", "planned", "closed"]
    mode: Mode
    manifest_path: str
    reason: str | None = None  # why a lesser mode ran than was asked (a fork's PR, no Hub token); on close,
    # what happened to the Hub preview
    error: str | None = None
    report: Report | None = None
    repository: str | None = None
    pr_number: int | None = None
    head_sha: str | None = None
    run_url: str | None = None
    tool_version: str = __version__
    card: str | None = None  # the README.md the run wrote (and published): a custom output.card included


def _render(result: ActionResult, *, card: str | None) -> str:
    from cocktail_bot.templating import eval_table, render_builtin

    context = {
        **result.model_dump(exclude={"report"}),
        "report": result.report,
        "eval_table": eval_table(result.report.evals if result.report else []),
        "marker": comment_marker(result.manifest_path),
        "card": card,
    }
    return render_builtin(COMMENT_TEMPLATE, context)


def model_card(result: ActionResult) -> str | None:
    """The card that was (or would be) published, for the collapsed section; only a good build has one.

    The run's own README.md when the result carries it (it is shown fenced, as text); else, for a result
    without one, the built-in card of its report.
    """
    if result.status != "success" or result.report is None:
        return None
    if result.card is not None:
        return result.card
    from cocktail_bot.card import render_card

    return render_card(result.report)


def render(result: ActionResult) -> tuple[str, str]:
    """``(summary, comment)``: the summary is the whole report with the card (its 1 MiB limit is applied
    when writing); the comment is the same text if it fits GitHub's limit, else without the card, else cut."""
    card = model_card(result)
    summary = _render(result, card=card)
    without_card = _render(result, card=None) if card else summary
    return summary, fit_comment(summary, without_card, summary_url=result.run_url or "")
