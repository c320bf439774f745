"""``cocktail action``: the GitHub Action's entry. Reads the runner's environment, decides what to do, runs
the pipeline and reports to the PR comment, the job summary and the step outputs.

Inputs arrive as environment variables set by ``action.yml`` (``INPUT_MANIFEST``, ``INPUT_MODE``, ...; see
``INPUT_VARIABLES``), never interpolated into a script. Deciding is a pure function of that environment and the
event payload (:func:`decide`), so each case is tested without a runner; a new input is one entry in
``INPUT_VARIABLES`` and one field of ``ActionEnv``, a new mode one branch of ``decide`` and of ``_run``.

What a run may change is checked against GitHub at the last moment: a run whose head commit is no longer the
pull request's head (a newer push, or a re-run of an old run) publishes nothing and leaves the comment alone.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from cocktail_bot import annotate, github
from cocktail_bot.comment import ActionResult, Mode, render
from cocktail_bot.errors import CocktailError
from cocktail_bot.jobs.settings import HF_JOBS, RUNNERS
from cocktail_bot.report import Provenance, Report

logger = logging.getLogger(__name__)

MODES = ("auto", "plan", "build", "publish", "update")
# action.yml input -> the variable its run step sets for this entry (tests/test_action_yml.py checks both);
# python-version and extra-pip are used by action.yml itself, to install the package.
INPUT_VARIABLES = {
    "manifest": "INPUT_MANIFEST",
    "mode": "INPUT_MODE",
    "hf-token": "INPUT_HF_TOKEN",
    "github-token": "INPUT_GITHUB_TOKEN",
    "comment": "INPUT_COMMENT",
    "work-dir": "INPUT_WORK_DIR",
    "comment-author": "INPUT_COMMENT_AUTHOR",
    "runner": "INPUT_RUNNER",
    "hf-jobs-token": "INPUT_HF_JOBS_TOKEN",
}
PR_EVENTS = ("pull_request", "pull_request_target")
RESULT_FILE = "cocktail-result.json"
REPORT_FILE = "report.md"
MODEL_DIR = "model"

FORK_REASON = (
    "This pull request comes from a fork, so the workflow has no secrets and must not publish: only the plan "
    "ran (manifest checked, sources resolved). Use the fork-safe workflow pair (docs/action.md) to build "
    "forks' changes."
)
NO_TOKEN_REASON = (
    "No Hugging Face token was given (input hf-token), so nothing was built or published: only the plan ran. "
    "Add an HF_TOKEN repository secret and pass it as hf-token, or set up trusted publishing "
    "(HF_OIDC_RESOURCE)."
)
CLOSED_REASON = "This pull request is closed: only the plan ran."
NO_REPO_REASON = "The manifest has no output.repo, so the model was built and not published."
FORK_COMMENT_NOTICE = (
    "the workflow's token may not comment on this pull request (a fork's pull request gets a read-only "
    "token): the report is in the job summary. The fork-safe workflow pair (docs/action.md) comments it"
)
NO_COMMENT_NOTICE = (
    "the github-token may not comment on this pull request: the report is in the job summary. Give the "
    "workflow 'permissions: pull-requests: write' to get the comment"
)


class Superseded(Exception):
    """The pull request's head moved on from the commit this run is about: it must change nothing."""


@dataclass(frozen=True)
class ActionEnv:
    """The standard GitHub Actions environment plus this action's inputs, read once."""

    event_name: str
    event: dict[str, Any]
    repository: str | None
    sha: str | None
    ref: str | None
    server_url: str
    api_url: str
    run_id: str | None
    output_path: str | None
    summary_path: str | None
    manifest: str
    mode: str
    hf_token: str | None
    hub_oidc: bool  # keyless trusted publishing: huggingface_hub exchanges the job's OIDC token itself
    github_token: str | None
    comment: bool
    comment_author: str | None  # the login our comments are by, when the token cannot say (see github.py)
    work_dir: Path
    runner: str = "local"  # local | hf-jobs | auto (docs/jobs.md)
    hf_jobs_token: str | None = None  # what a Hugging Face job publishes with (default hf_token)

    @property
    def run_url(self) -> str | None:
        if self.repository and self.run_id:
            return f"{self.server_url}/{self.repository}/actions/runs/{self.run_id}"
        return None


@dataclass(frozen=True)
class Decision:
    """What this run does; ``comment`` posts a report saved by an unprivileged run (fork-safe pair), ``close``
    ends a closed pull request's preview (``merged`` says whether the publish on the default branch follows)."""

    mode: Mode | Literal["comment"]
    publish: Literal["preview", "main"] | None = None
    reason: str | None = None
    pr_number: int | None = None
    merged: bool = False


def _flag(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "1", "on", ""):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise CocktailError(f"input {name} must be true or false, not {value!r}")


def read_env(environ: Mapping[str, str]) -> ActionEnv:
    """Read and check the environment; a missing or unreadable event file names the variable to set."""
    get = lambda name: environ.get(name) or None  # noqa: E731 (empty means unset on runners)
    inputs = {name: get(variable) for name, variable in INPUT_VARIABLES.items()}
    mode = (inputs["mode"] or "auto").strip().lower()
    if mode not in MODES:
        raise CocktailError(f"input mode must be one of {', '.join(MODES)}, not {mode!r}")
    event: dict[str, Any] = {}
    if event_path := get("GITHUB_EVENT_PATH"):
        try:
            event = json.loads(Path(event_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CocktailError(
                f"GITHUB_EVENT_PATH {event_path}: cannot read the event payload ({error})"
            ) from None
    runner = (inputs["runner"] or "local").strip().lower()
    if runner not in RUNNERS:
        raise CocktailError(f"input runner must be one of {', '.join(RUNNERS)}, not {runner!r}")
    work_dir = inputs["work-dir"] or os.path.join(get("RUNNER_TEMP") or ".", "cocktail")
    return ActionEnv(
        event_name=get("GITHUB_EVENT_NAME") or "workflow_dispatch",
        event=event,
        repository=get("GITHUB_REPOSITORY"),
        sha=get("GITHUB_SHA"),
        ref=get("GITHUB_REF"),
        server_url=(get("GITHUB_SERVER_URL") or "https://github.com").rstrip("/"),
        api_url=(get("GITHUB_API_URL") or "https://api.github.com").rstrip("/"),
        run_id=get("GITHUB_RUN_ID"),
        output_path=get("GITHUB_OUTPUT"),
        summary_path=get("GITHUB_STEP_SUMMARY"),
        manifest=inputs["manifest"] or "cocktail.yml",
        mode=mode,
        hf_token=inputs["hf-token"] or get("HF_TOKEN"),
        hub_oidc=bool(get("HF_OIDC_RESOURCE")),
        github_token=inputs["github-token"] or get("GITHUB_TOKEN"),
        comment=_flag(inputs["comment"] or "", "comment"),
        comment_author=inputs["comment-author"],
        work_dir=Path(work_dir),
        runner=runner,
        hf_jobs_token=inputs["hf-jobs-token"],
    )


def decide(env: ActionEnv) -> Decision:
    """The mode to run, from the input mode, the event and whether publishing is safe and possible here."""
    pull_request = env.event.get("pull_request") if env.event_name in PR_EVENTS else None
    pr_number = pull_request.get("number") if pull_request else None
    if env.event_name == "workflow_run" and env.mode == "auto":
        return Decision("comment")
    if pull_request is not None and env.event.get("action") == "closed":
        if env.mode != "auto":
            return Decision("plan", reason=CLOSED_REASON, pr_number=pr_number)
        return Decision("close", pr_number=pr_number, merged=bool(pull_request.get("merged")))
    if pull_request is not None and github.is_fork(pull_request) and env.mode in ("auto", "publish"):
        return Decision("plan", reason=FORK_REASON, pr_number=pr_number)
    if pull_request is not None:
        if env.mode == "auto" and not (env.hf_token or env.hub_oidc):
            return Decision("plan", reason=NO_TOKEN_REASON, pr_number=pr_number)
        if env.mode in ("auto", "publish"):
            return Decision("publish", publish="preview", pr_number=pr_number)
        return Decision(env.mode, pr_number=pr_number)  # type: ignore[arg-type]
    default_branch = (env.event.get("repository") or {}).get("default_branch")
    on_default_branch = default_branch is not None and env.ref == f"refs/heads/{default_branch}"
    if env.mode == "publish" or (env.mode == "auto" and on_default_branch):
        return Decision("publish", publish="main")
    return Decision("build" if env.mode == "auto" else env.mode)  # type: ignore[arg-type]


def _head_sha(env: ActionEnv) -> str | None:
    """A PR's head commit, which (unlike the merge ref in ``GITHUB_SHA``) stays linkable after the PR."""
    pull_request = env.event.get("pull_request") or {}
    return (pull_request.get("head") or {}).get("sha")


def provenance(env: ActionEnv, decision: Decision) -> Provenance:
    """Where the model is built; on a PR its head commit."""
    return Provenance(
        repository=env.repository,
        commit=_head_sha(env) or env.sha,
        ref=env.ref,
        pr_number=decision.pr_number,
        run_url=env.run_url,
        server_url=env.server_url,
    )


@dataclass
class Guard:
    """The pull request a run is about, asked at the last moment whether its head is still ``head_sha``."""

    env: ActionEnv
    pr_number: int | None
    head_sha: str | None
    _client: Any = None

    def client(self):
        if self._client is None:
            assert self.env.github_token is not None
            self._client = github.connect(self.env.github_token, self.env.api_url)
        return self._client

    def check_current(self) -> None:
        """Raise ``Superseded`` when the PR's head is another commit (without a token, nothing is checked)."""
        if (
            self.pr_number is None
            or not self.head_sha
            or not self.env.github_token
            or not self.env.repository
        ):
            return
        current = github.pull_head_sha(self.client(), self.env.repository, self.pr_number)
        if current != self.head_sha:
            raise Superseded(
                f"pull request #{self.pr_number} has moved on from {self.head_sha[:12]} to {current[:12]}: "
                "this run changes neither the Hub preview nor the comment (the run for the new head does)"
            )

    def check_not_overtaken(self, repo_id: str) -> None:
        """A push's publish to main: raise ``Superseded`` when main of ``repo_id`` was published meanwhile from
        a newer commit of this repository (two pushes close together, the later run finished first), so the
        older model never replaces it. An older, unrelated or unknown published commit is replaced."""
        sha = self.env.sha
        if self.env.event_name != "push" or not (sha and self.env.github_token and self.env.repository):
            return
        from cocktail_bot.hub import published_from

        published = published_from(repo_id, self.env.repository, token=self.env.hf_token)
        if published is None or sha.startswith(published):
            return
        if github.is_behind(self.client(), self.env.repository, sha, published):
            raise Superseded(
                f"main of {repo_id} was published meanwhile from {published}, a newer commit than this run's "
                f"{sha[:12]}: this run publishes nothing (the newer model stays)"
            )


def _run_pipeline(env: ActionEnv, decision: Decision, guard: Guard) -> tuple[Report, Decision]:
    """Run the decided mode; in auto mode a manifest without ``output.repo`` is built, not published."""
    from cocktail_bot import pipeline
    from cocktail_bot.jobs.offload import choose_runner, run_on_hf_jobs
    from cocktail_bot.manifest import load_manifest

    origin = provenance(env, decision)
    if decision.mode == "plan":
        return pipeline.plan_manifest(env.manifest, provenance=origin, token=env.hf_token), decision
    repo_id = load_manifest(env.manifest).output.repo
    if decision.publish and env.mode == "auto" and not repo_id:
        decision = Decision("build", reason=NO_REPO_REASON, pr_number=decision.pr_number)
    preview = decision.publish == "preview"
    common: dict[str, Any] = {
        "publish": decision.publish is not None,
        "create_pr": preview,
        "pr_title": preview_pr_title(env, decision) if preview else None,
        "provenance": origin,
        "token": env.hf_token,
    }
    pull_request = env.event.get("pull_request") if env.event_name in PR_EVENTS else None
    fork = pull_request is not None and github.is_fork(pull_request)
    # publishing streams: sources read in place, shards uploaded as written, no local copy (runner disk)
    out = None if decision.publish else env.work_dir / MODEL_DIR

    def before_publish() -> None:  # the last moment before the Hub commit
        guard.check_current()
        if decision.publish == "main" and repo_id is not None:
            guard.check_not_overtaken(repo_id)

    where = choose_runner(
        env.runner, env.manifest, out, publishing=common["publish"], fork=fork, token=env.hf_token
    )
    if where == HF_JOBS:
        report = run_on_hf_jobs(env.manifest, out, job_token=env.hf_jobs_token, **common)
    else:
        report = pipeline.run_manifest(
            env.manifest, out, progress=False, before_publish=before_publish, **common
        )
    return report, decision


def _close(env: ActionEnv, decision: Decision) -> str:
    """Close the PR's Hub preview; the sentence the comment shows about it."""
    from cocktail_bot.manifest import load_manifest
    from cocktail_bot.preview import close_preview

    repo_id = load_manifest(env.manifest).output.repo
    title = preview_pr_title(env, decision)
    if repo_id is None or title is None:
        return "This pull request is closed; its manifest publishes nowhere, so there is no preview to close."
    if not (env.hf_token or env.hub_oidc):
        return (
            f"This pull request is closed. Its Hub preview on {repo_id} (if any) stays open: the run had no "
            "Hugging Face token (input hf-token) to close it."
        )
    source = f"{env.repository}#{decision.pr_number}"
    url = close_preview(repo_id, title, source=source, merged=decision.merged, token=env.hf_token)
    if url is None:
        return f"This pull request is closed; it had no open preview on {repo_id}."
    follows = " The model is published to main by the run on the default branch." if decision.merged else ""
    return f"This pull request is {'merged' if decision.merged else 'closed'}: its Hub preview {url} is closed.{follows}"


def preview_pr_title(env: ActionEnv, decision: Decision) -> str | None:
    """The key of a GitHub pull request's one Hub preview PR, updated on every push (like the one comment).

    Per manifest too, as the comment is, so two manifests publishing to one Hub repo keep apart.
    """
    if not env.repository or decision.pr_number is None:
        return None
    return f"cocktail-bot preview: {env.repository}#{decision.pr_number} ({env.manifest})"


def execute(env: ActionEnv, decision: Decision, guard: Guard) -> tuple[ActionResult, int]:
    """Run the pipeline; any error becomes a failed result carrying the message for the comment, and the exit
    code the CLI gives that error (2 for bad input, 1 for a remote or internal failure). ``Superseded`` passes."""
    common: dict[str, Any] = {
        "mode": decision.mode,
        "manifest_path": env.manifest,
        "reason": decision.reason,
        "repository": env.repository,
        "pr_number": decision.pr_number,
        "head_sha": _head_sha(env),
        "run_url": env.run_url,
    }
    try:
        if decision.mode == "close":
            return ActionResult(status="closed", **{**common, "reason": _close(env, decision)}), 0
        report, decision = _run_pipeline(env, decision, guard)
    except Superseded:
        raise
    except CocktailError as error:
        return ActionResult(status="failure", error=str(error), **common), error.exit_code
    except Exception as error:  # a bug: the PR still hears about it, the log keeps the traceback
        logger.exception("unexpected error")
        message = f"internal error ({type(error).__name__}: {error}); please report it with the workflow log"
        return ActionResult(status="failure", error=message, **common), 1
    status = (
        "failure" if report.status == "failure" else ("planned" if decision.mode == "plan" else "success")
    )
    common.update(mode=decision.mode, reason=decision.reason)
    card = env.work_dir / MODEL_DIR / "README.md"
    return (
        ActionResult(
            status=status,
            error=report.error,
            report=report,
            card=card.read_text(encoding="utf-8") if status == "success" and card.is_file() else None,
            **common,
        ),
        int(status == "failure"),
    )


def load_saved_result(env: ActionEnv) -> ActionResult:
    """A result saved by the unprivileged run, checked against the ``workflow_run`` event that triggered us.

    The artifact is untrusted: it is parsed as data, and it may only comment on the PR whose head commit is
    the one the triggering run built.
    """
    path = env.work_dir / RESULT_FILE
    try:
        result = ActionResult.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError:
        raise CocktailError(
            f"{path}: no saved result: download the artifact of the pull_request run into work-dir first"
        ) from None
    except ValidationError as error:
        raise CocktailError(f"{path}: not a cocktail-bot result ({error.error_count()} problems)") from None
    run = env.event.get("workflow_run") or {}
    if result.pr_number is None or not result.head_sha or result.head_sha != run.get("head_sha"):
        raise CocktailError(
            f"{path}: the saved result is for commit {result.head_sha}, but the triggering run built "
            f"{run.get('head_sha')}: refusing to comment"
        )
    if result.repository != env.repository:
        raise CocktailError(f"{path}: the saved result is for {result.repository}, not {env.repository}")
    return result


def _outputs(result: ActionResult, report_path: Path | None) -> dict[str, str]:
    publish = result.report.publish if result.report else None
    return {
        "repo": publish.repo_id if publish else "",
        "revision": publish.revision if publish else "",
        "commit-url": (publish.commit_url or "") if publish else "",
        "report-path": str(report_path or ""),
        "status": result.status,
    }


def _comment(env: ActionEnv, result: ActionResult, body: str, guard: Guard, *, required: bool) -> None:
    """Keep the one comment up to date; a token that may not comment (a fork's) gives a notice, unless
    commenting is the whole job (``required``: the fork-safe pair's second run)."""
    if result.pr_number is None or not env.comment:
        return
    if not env.github_token or not env.repository:
        logger.warning("no github-token or GITHUB_REPOSITORY: the pull request comment is skipped")
        return
    marker = github.comment_marker(result.manifest_path)
    try:
        github.upsert_comment(
            guard.client(), env.repository, result.pr_number, body, marker, author=env.comment_author
        )
    except github.CommentForbidden:
        if required:
            raise
        pull_request = env.event.get("pull_request") or {}
        notice = FORK_COMMENT_NOTICE if github.is_fork(pull_request) else NO_COMMENT_NOTICE
        print(annotate.command("notice", notice), flush=True)


def _quiet_for_ci() -> None:
    """No progress bars in CI logs (huggingface_hub's, and transformers' which follow them), and no Xet chunk
    cache: a runner's disk is gone after the job, so the cache would only cost space and writes."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.setdefault("HF_XET_CHUNK_CACHE_SIZE_BYTES", "0")
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()


def _superseded(env: ActionEnv, superseded: Superseded) -> int:
    print(annotate.command("notice", str(superseded)), flush=True)
    if env.summary_path:
        github.write_summary(env.summary_path, f"**cocktail-bot**: {superseded}.")
    if env.output_path:
        github.write_outputs(
            env.output_path,
            {"repo": "", "revision": "", "commit-url": "", "report-path": "", "status": "superseded"},
        )
    return 0


def run_action(environ: Mapping[str, str]) -> int:
    """The whole step; returns its exit code (non-zero when the build failed or could not be reported)."""
    env = read_env(environ)
    github.mask_secrets([env.hf_token, env.github_token, env.hf_jobs_token], sys.stdout)
    if env.hf_token:  # huggingface_hub reads it from the environment, for sources and publishing alike
        os.environ["HF_TOKEN"] = env.hf_token
    _quiet_for_ci()
    annotate.annotate_logging()
    if env.mode == "update":  # the scheduled bot: cocktail_bot.update_bot
        from cocktail_bot.update_bot import run_update

        return run_update(env)
    if env.event_name == "issue_comment":  # a /cocktail command becomes the pull request run it asks for
        from cocktail_bot.pr_commands import prepare

        command_env = prepare(env)
        if command_env is None:
            return 0
        env = command_env
    decision = decide(env)
    logger.info("event %s, mode %s: %s", env.event_name, env.mode, decision.mode)
    from_artifact = decision.mode == "comment"
    try:
        if from_artifact:
            # The commenting run of the fork-safe pair succeeds once it has commented; the build run shows
            # failures.
            result, exit_code = load_saved_result(env), 0
            guard = Guard(env, result.pr_number, result.head_sha)
        else:
            head = _head_sha(env) if decision.mode != "close" else None
            guard = Guard(env, decision.pr_number, head)
            guard.check_current()
            result, exit_code = execute(env, decision, guard)
        guard.check_current()
    except Superseded as superseded:
        return _superseded(env, superseded)

    summary, body = render(result)
    env.work_dir.mkdir(parents=True, exist_ok=True)
    report_path = env.work_dir / REPORT_FILE
    report_path.write_text(summary, encoding="utf-8")
    if not from_artifact:
        (env.work_dir / RESULT_FILE).write_text(result.model_dump_json(indent=2), encoding="utf-8")
    if env.summary_path:
        github.write_summary(env.summary_path, summary)
    if env.output_path:
        github.write_outputs(env.output_path, _outputs(result, report_path))
    _comment(env, result, body, guard, required=from_artifact)
    if result.status == "failure" and not from_artifact and result.error:
        annotate.print_error(result.error)
    return exit_code
