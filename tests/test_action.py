"""`cocktail action` as a runner runs it: a subprocess with a synthetic event payload and the standard GitHub
environment, against the local GitHub server (PyGithub via GITHUB_API_URL) and the local Hub server
(HF_ENDPOINT).

Plus the pure parts: reading the environment, deciding the mode, rendering and capping the comment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cocktail_bot import action, github
from cocktail_bot.comment import ActionResult, render
from cocktail_bot.errors import CocktailError
from cocktail_bot.report import EvalResult, OutputReport, PublishReport, Report, SourceReport, StepReport
from tests.conftest import (
    CUSTOM_APP_BOT,
    GITHUB_APP_TOKEN,
    GITHUB_CUSTOM_APP_TOKEN,
    GITHUB_FORK_TOKEN,
    GITHUB_REPOSITORY,
    GITHUB_TOKEN,
)
from tests.github_server import parse_outputs

HEAD_SHA = "1f" * 20
HUB_REPO = "cocktail-tester/tiny-cocktail"
MARKER = github.comment_marker("cocktail.yml")
MANIFEST = f"""\
version: 1
name: tiny-cocktail
type: decoder
models:
  - {{id: ./models/a, weight: 0.7}}
  - {{id: ./models/b, weight: 0.3}}
output:
  repo: {HUB_REPO}
  license: apache-2.0
"""


# --- a checkout and a runner --------------------------------------------------------------------------------


@pytest.fixture
def checkout(tmp_path: Path, tiny_llamas: list[Path]) -> Path:
    """A repository as actions/checkout leaves it: the manifest and two tiny Llamas it merges."""
    root = tmp_path / "checkout"
    (root / ".git").mkdir(parents=True)
    for name, model in zip("ab", tiny_llamas, strict=False):
        shutil.copytree(model, root / "models" / name)
    (root / "cocktail.yml").write_text(MANIFEST)
    return root


def pr_event(number: int = 7, *, head_repo: str = GITHUB_REPOSITORY) -> dict:
    repo = {"full_name": GITHUB_REPOSITORY, "default_branch": "main"}
    return {
        "action": "synchronize",
        "number": number,
        "pull_request": {
            "number": number,
            "head": {"sha": HEAD_SHA, "ref": "tune-weights", "repo": {"full_name": head_repo}},
            "base": {"sha": "0" * 40, "ref": "main", "repo": repo},
        },
        "repository": repo,
    }


class Runner:
    """Runs `cocktail action` in a subprocess with a fresh runner environment per call."""

    def __init__(self, tmp_path: Path, checkout: Path, github_server) -> None:
        self.tmp_path, self.checkout, self.github_server = tmp_path, checkout, github_server
        self.calls = 0

    def __call__(
        self,
        event_name: str,
        event: dict,
        *,
        ref: str = "refs/pull/7/merge",
        sha: str = "9" * 40,
        **inputs: str,
    ):
        self.calls += 1
        run_dir = self.tmp_path / f"run-{self.calls}"
        run_dir.mkdir()
        (run_dir / "event.json").write_text(json.dumps(event))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "INPUT_", "RUNNER_"))}
        env.update(
            {
                "GITHUB_ACTIONS": "true",
                "GITHUB_EVENT_NAME": event_name,
                "GITHUB_EVENT_PATH": str(run_dir / "event.json"),
                "GITHUB_REPOSITORY": GITHUB_REPOSITORY,
                "GITHUB_SHA": sha,
                "GITHUB_REF": ref,
                "GITHUB_SERVER_URL": "https://github.com",
                "GITHUB_API_URL": self.github_server.url,
                "GITHUB_RUN_ID": str(4200 + self.calls),
                "GITHUB_OUTPUT": str(run_dir / "output"),
                "GITHUB_STEP_SUMMARY": str(run_dir / "summary.md"),
                "RUNNER_TEMP": str(run_dir / "temp"),
                "INPUT_MANIFEST": "cocktail.yml",
                "INPUT_MODE": "auto",
                "INPUT_GITHUB_TOKEN": GITHUB_TOKEN,
                "INPUT_COMMENT": "true",
                "INPUT_WORK_DIR": str(run_dir / "work"),
            }
        )
        env.update({f"INPUT_{name.upper()}": value for name, value in inputs.items()})
        done = subprocess.run(
            [sys.executable, "-m", "cocktail_bot", "action"],
            cwd=self.checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        done.run_dir = run_dir  # type: ignore[attr-defined]
        done.outputs = (
            parse_outputs((run_dir / "output").read_text()) if (run_dir / "output").exists() else {}
        )
        summary = run_dir / "summary.md"
        done.summary = summary.read_text() if summary.exists() else ""  # type: ignore[attr-defined]
        return done


@pytest.fixture
def run(tmp_path, checkout, github_server, hub_server) -> Runner:
    github_server.add_pull(GITHUB_REPOSITORY, 7, head_sha=HEAD_SHA)
    return Runner(tmp_path, checkout, github_server)


def comments(github_server):
    return github_server.state.comments_on(GITHUB_REPOSITORY, 7)


# --- end to end ---------------------------------------------------------------------------------------------


def test_pr_builds_publishes_a_preview_and_keeps_one_comment(run, github_server, hub_server):
    hub_server.create_repo(HUB_REPO)
    theirs = github_server.add_comment(GITHUB_REPOSITORY, 7, "reviewer", f"quoting the bot: {MARKER}")

    first = run("pull_request", pr_event(), hf_token=hub_server.write_token)
    assert first.returncode == 0, first.stderr
    second = run("pull_request", pr_event(), hf_token=hub_server.write_token)
    assert second.returncode == 0, second.stderr

    # one comment by the bot, created then edited; the reviewer's comment carrying the marker untouched
    mine = [c for c in comments(github_server) if c.login == "cocktail-bot"]
    assert len(mine) == 1 and mine[0].edits == 1
    assert theirs.body == f"quoting the bot: {MARKER}" and theirs.edits == 0
    body = mine[0].body
    assert body.startswith(MARKER + "\n## 🍸 cocktail-bot: tiny-cocktail preview published")
    for expected in (
        "### Sources",
        "`./models/a`",
        "| `./models/a` | 0.7000 |",
        "### Build",
        "Hub pull request:",
        "[workflow run](https://github.com/acme/recipes/actions/runs/4202)",
        "<details><summary>Model card (README.md)</summary>",
        "- lm-cocktail",  # the card's metadata, inside the collapsed section
    ):
        assert expected in body

    # the preview is ONE Hub pull request for this GitHub PR, updated by the second run, linked from the
    # one comment; main is untouched
    repo = hub_server.repos[HUB_REPO]
    assert list(repo.pull_requests) == [1]
    preview = repo.pull_requests[1]
    assert preview.title == "cocktail-bot preview: acme/recipes#7 (cocktail.yml)" and preview.status == "open"
    assert f"{hub_server.endpoint}/{HUB_REPO}/discussions/1" in body
    # the re-run (another run id, another build time) built the same files: no second Hub commit
    assert [e["type"] for e in preview.events] == ["comment", "commit"]
    assert second.outputs["commit-url"] == first.outputs["commit-url"]
    assert hub_server.files(HUB_REPO, "main").keys() == {".gitattributes"}
    assert first.outputs["revision"] == "refs/pr/1"
    outputs = second.outputs
    assert outputs["repo"] == HUB_REPO and outputs["revision"] == "refs/pr/1"
    assert outputs["commit-url"] == f"{hub_server.endpoint}/{HUB_REPO}/commit/{preview.head}"
    assert outputs["status"] == "success"
    assert Path(outputs["report-path"]).read_text() == second.summary.rstrip("\n") + "\n"
    assert second.summary.startswith(MARKER) and "- lm-cocktail" in second.summary

    # CI logs: no progress bars, no 403 noise from asking who the token is
    for done in (first, second):
        assert "%|" not in done.stderr and "it/s]" not in done.stderr, done.stderr
        assert "failed with 403" not in done.stderr and "/user" not in done.stderr
    assert not [r for r in github_server.state.requests if r[1] == "/user"]
    # tokens are only ever printed inside the mask command
    for done in (first, second):
        assert done.stdout.count(hub_server.write_token) == 1
        assert f"::add-mask::{hub_server.write_token}" in done.stdout
        assert f"::add-mask::{GITHUB_TOKEN}" in done.stdout
        assert hub_server.write_token not in done.stderr and GITHUB_TOKEN not in done.stderr


def test_push_to_default_branch_publishes_to_main(run, github_server, hub_server):
    event = {
        "ref": "refs/heads/main",
        "after": "9" * 40,
        "repository": {"full_name": GITHUB_REPOSITORY, "default_branch": "main"},
    }
    done = run("push", event, ref="refs/heads/main", hf_token=hub_server.write_token)
    assert done.returncode == 0, done.stderr
    assert done.outputs["repo"] == HUB_REPO and done.outputs["revision"] == "main"
    assert "model.safetensors" in hub_server.files(HUB_REPO, "main")
    assert comments(github_server) == []  # no PR, no comment
    assert "published" in done.summary and "### Hub" in done.summary


def test_an_older_push_finishing_last_keeps_the_newer_model_on_main(
    run, github_server, hub_server, checkout, tmp_path
):
    """Two pushes to main close together, both run (none cancelled). The newer commit's run publishes first;
    the older one, finishing last, finds main published from a descendant of its commit: a notice, exit 0,
    no Hub commit. In the usual order, each run publishes."""
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "-b", "main", str(origin)], check=True)
    commits = []
    for message in ("recipe 0.7/0.3", "recipe 0.5/0.5", "recipe 0.6/0.4"):
        identity = ["-c", "user.name=Dev", "-c", "user.email=dev@example.com"]
        subprocess.run(["git", *identity, "-C", str(origin), "commit", "-q", "--allow-empty", "-m", message])
        head = subprocess.run(["git", "-C", str(origin), "rev-parse", "HEAD"], capture_output=True, text=True)
        commits.append(head.stdout.strip())
    github_server.add_repo(GITHUB_REPOSITORY, git_dir=str(origin / ".git"))
    event = {
        "ref": "refs/heads/main",
        "repository": {"full_name": GITHUB_REPOSITORY, "default_branch": "main"},
    }

    def push(sha: str, weights: tuple[float, float]):
        (checkout / "cocktail.yml").write_text(
            MANIFEST.replace("0.7", str(weights[0])).replace("0.3", str(weights[1]))
        )
        return run("push", event, ref="refs/heads/main", sha=sha, hf_token=hub_server.write_token)

    first, second, third = commits
    for sha, weights in ((first, (0.7, 0.3)), (second, (0.5, 0.5))):  # in order: both publish
        done = push(sha, weights)
        assert done.returncode == 0, done.stderr
        assert done.outputs["status"] == "success" and "::notice::" not in done.stdout
    newest = hub_server.repos[HUB_REPO].branches["main"]
    done = push(third, (0.6, 0.4))  # the third push's run finishes before ...
    assert done.returncode == 0, done.stderr
    published = hub_server.repos[HUB_REPO].branches["main"]
    assert published != newest
    done = push(second, (0.5, 0.5))  # ... a re-run of the second push's run
    assert done.returncode == 0, done.stderr
    assert (
        f"::notice::main of {HUB_REPO} was published meanwhile from {third[:12]}, a newer commit than this "
        f"run's {second[:12]}: this run publishes nothing (the newer model stays)"
    ) in done.stdout
    assert done.outputs["status"] == "superseded"
    assert hub_server.repos[HUB_REPO].branches["main"] == published


def test_fork_pr_only_plans_and_says_why(run, github_server, hub_server):
    """A write token that may comment on a fork's PR (pull_request_target, or an App): the plan is commented."""
    done = run(
        "pull_request",
        pr_event(head_repo="stranger/recipes"),
        hf_token=hub_server.write_token,
        github_token=GITHUB_APP_TOKEN,
    )
    assert done.returncode == 0, done.stderr
    assert HUB_REPO not in hub_server.repos  # nothing published, not even the repo created
    assert not any(r.method != "GET" for r in hub_server.requests)
    [comment] = comments(github_server)
    assert comment.login == "github-actions[bot]"
    assert "planned (not built)" in comment.body and action.FORK_REASON in comment.body
    assert done.outputs["status"] == "planned" and done.outputs["repo"] == ""
    assert action.FORK_REASON in done.summary


def test_fork_pr_with_its_read_only_token_plans_and_stays_green(run, github_server, hub_server):
    """A fork's pull_request run: no secrets, a read-only GITHUB_TOKEN. The plan runs, the job summary has it,
    the comment is a notice, never a red run."""
    done = run("pull_request", pr_event(head_repo="stranger/recipes"), github_token=GITHUB_FORK_TOKEN)
    assert done.returncode == 0, done.stderr
    assert comments(github_server) == []
    assert f"::notice::{action.FORK_COMMENT_NOTICE}" in done.stdout
    assert done.outputs["status"] == "planned" and action.FORK_REASON in done.summary
    assert HUB_REPO not in hub_server.repos
    assert "Traceback" not in done.stderr and "error" not in done.stdout.lower()


def test_app_token_finds_its_own_comment(run, github_server):
    """An App installation token (actions/create-github-app-token) may not call GET /user: the bot still finds
    the comment it wrote and edits it, run after run."""
    for _ in range(2):
        done = run("pull_request", pr_event(), mode="plan", github_token=GITHUB_CUSTOM_APP_TOKEN)
        assert done.returncode == 0, done.stderr
    [comment] = comments(github_server)
    assert (comment.login, comment.edits) == (CUSTOM_APP_BOT, 1)
    assert not [r for r in github_server.state.requests if r[1] == "/user"]


def test_run_for_an_old_head_changes_neither_preview_nor_comment(run, github_server, hub_server):
    """A re-run of an older run after a newer push: a notice, exit 0, nothing published, the comment kept."""
    hub_server.create_repo(HUB_REPO)
    github_server.state.pulls[(GITHUB_REPOSITORY, 7)].head_sha = "2e" * 20  # the newer push
    current = github_server.add_comment(GITHUB_REPOSITORY, 7, "cocktail-bot", f"{MARKER}\nthe newer report")
    done = run("pull_request", pr_event(), hf_token=hub_server.write_token)
    assert done.returncode == 0, done.stderr
    assert "::notice::pull request #7 has moved on from 1f1f1f1f1f1f to 2e2e2e2e2e2e" in done.stdout
    assert done.outputs["status"] == "superseded"
    assert hub_server.repos[HUB_REPO].pull_requests == {}
    assert current.body == f"{MARKER}\nthe newer report" and current.edits == 0


def test_head_moving_during_the_build_publishes_nothing(checkout, github_server, hub_server, monkeypatch):
    """The head is asked again just before publishing: a push during a long build stops the old run there."""
    github_server.add_pull(GITHUB_REPOSITORY, 7, head_sha="2e" * 20)
    monkeypatch.chdir(checkout)
    env = env_with_event(
        "pull_request",
        pr_event(),
        GITHUB_REPOSITORY=GITHUB_REPOSITORY,
        GITHUB_API_URL=github_server.url,
        INPUT_GITHUB_TOKEN=GITHUB_TOKEN,
        INPUT_HF_TOKEN=hub_server.write_token,
        INPUT_WORK_DIR=str(checkout.parent / "work"),
    )
    decision = action.decide(env)
    with pytest.raises(action.Superseded):
        action._run_pipeline(env, decision, action.Guard(env, 7, HEAD_SHA))
    # shards may already be in the Hub's storage (streamed publishing), but nothing was committed or proposed
    repo = hub_server.repos.get(HUB_REPO)
    assert repo is None or (not repo.pull_requests and set(hub_server.files(HUB_REPO)) <= {".gitattributes"})
    assert not (checkout.parent / "work" / "model").exists()


@pytest.mark.parametrize("merged", [False, True], ids=["closed", "merged"])
def test_closing_the_pr_closes_its_hub_preview(run, github_server, hub_server, merged):
    hub_server.create_repo(HUB_REPO)
    built = run("pull_request", pr_event(), hf_token=hub_server.write_token)
    assert built.returncode == 0, built.stderr
    event = pr_event()
    event["action"], event["pull_request"]["merged"] = "closed", merged

    done = run("pull_request", event, hf_token=hub_server.write_token)

    assert done.returncode == 0, done.stderr
    preview = hub_server.repos[HUB_REPO].pull_requests[1]
    assert preview.status == "closed"
    note, status = preview.events[-2:]
    assert status["type"] == "status-change" and note["type"] == "comment"
    expected = "acme/recipes#7 was merged" if merged else "acme/recipes#7 was closed without merging"
    assert expected in note["data"]["latest"]["raw"]
    [comment] = comments(github_server)
    assert comment.body.startswith(MARKER + "\n## 🍸 cocktail-bot: cocktail.yml preview closed")
    url = f"{hub_server.endpoint}/{HUB_REPO}/discussions/1"
    assert f"its Hub preview {url} is closed" in comment.body
    assert ("published to main by the run on the default branch" in comment.body) == merged
    assert done.outputs["status"] == "closed"


def test_failure_comments_the_error_and_fails_the_step(run, github_server, checkout):
    (checkout / "cocktail.yml").write_text(MANIFEST.replace("./models/b", "./models/missing"))
    done = run("pull_request", pr_event(), hf_token="hf_unused")
    assert done.returncode == 2
    [comment] = comments(github_server)
    assert comment.body.startswith(MARKER + "\n## ❌ cocktail-bot: cocktail.yml failed")
    message = (
        "cocktail.yml has 1 problem:\n"
        "cocktail.yml:6: models[1].id: model folder './models/missing' not found "
        f"(looked at {checkout / 'models' / 'missing'})"
    )
    assert f"```text\n{message}\n```" in comment.body and "**What to do:**" in comment.body
    assert done.outputs["status"] == "failure" and done.outputs["repo"] == ""
    assert done.summary.startswith(MARKER) and message in done.summary
    # an annotation on the manifest's line, not a plain "error:" line
    problem = f"models[1].id: model folder './models/missing' not found (looked at {checkout / 'models' / 'missing'})"
    assert f"::error file=cocktail.yml,line=6::{problem}\n" in done.stdout
    assert "error: " not in done.stderr and "Traceback" not in done.stderr


def test_model_folders_outside_the_checkout_stay_refused_in_the_action(run, github_server, checkout):
    """`cocktail run` accepts model folders outside the repository; the Action reads only its checkout."""
    shutil.copytree(checkout / "models" / "b", checkout.parent / "checkpoints" / "b")
    (checkout / "cocktail.yml").write_text(MANIFEST.replace("./models/b", "../checkpoints/b"))
    done = run("pull_request", pr_event(), hf_token="hf_unused", mode="plan")
    assert done.returncode == 2, done.stderr
    problem = (
        f"models[1].id: '../checkpoints/b' resolves to {checkout.parent / 'checkpoints' / 'b'}, outside the "
        f"repository {checkout}; keep manifest paths inside the repository"
    )
    assert f"::error file=cocktail.yml,line=6::{problem}\n" in done.stdout
    [comment] = comments(github_server)
    assert problem in comment.body


def test_remote_code_model_is_refused_and_the_comment_says_so(run, github_server, checkout):
    config = checkout / "models" / "b" / "config.json"
    data = json.loads(config.read_text())
    data["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    config.write_text(json.dumps(data))
    done = run("pull_request", pr_event(), hf_token="hf_unused", mode="plan")
    assert done.returncode == 2, done.stderr
    [comment] = comments(github_server)
    assert "## ❌ cocktail-bot: cocktail.yml failed" in comment.body
    assert (
        "needs custom code to load (its config.json has an auto_map (AutoModelForCausalLM))" in comment.body
    )
    assert "never runs code from a model" in comment.body


def test_big_card_is_left_out_of_the_comment_but_kept_in_the_summary(
    run, github_server, checkout, hub_server
):
    padding = "".join(
        f"# note {i}: {'x' * 90}\n" for i in range(800)
    )  # ~80 kB of manifest, shown in the card
    (checkout / "cocktail.yml").write_text(MANIFEST.replace(f"  repo: {HUB_REPO}\n", "") + padding)
    done = run("pull_request", pr_event(), hf_token=hub_server.write_token)
    assert done.returncode == 0, done.stderr
    [comment] = comments(github_server)
    assert len(comment.body) <= github.MAX_COMMENT_CHARS
    assert "<details>" not in comment.body and "left out of this comment" in comment.body
    assert action.NO_REPO_REASON in comment.body  # auto mode without output.repo builds only
    assert "<details><summary>Model card" in done.summary and len(done.summary) > github.MAX_COMMENT_CHARS


def test_the_comment_shows_the_custom_card_the_run_wrote(run, github_server, checkout, hub_server):
    """With output.card, the collapsed card is the user's card that the run wrote (and would publish), not
    the built-in one."""
    (checkout / "card.md.j2").write_text("# Our own card\n\nMerged by the platform team.\n")
    manifest = MANIFEST.replace(f"  repo: {HUB_REPO}\n", "").replace(
        "apache-2.0\n", "apache-2.0\n  card: card.md.j2\n"
    )
    (checkout / "cocktail.yml").write_text(manifest)
    done = run("pull_request", pr_event(), hf_token=hub_server.write_token)
    assert done.returncode == 0, done.stderr
    [comment] = comments(github_server)
    written = (done.run_dir / "work" / action.MODEL_DIR / "README.md").read_text()
    assert written == "# Our own card\n\nMerged by the platform team.\n"
    card = comment.body.split("<details><summary>Model card (README.md)</summary>", 1)[1]
    assert "Merged by the platform team." in card
    assert "- lm-cocktail" not in card  # the built-in card's tags


def workflow_run_event(head_sha: str) -> dict:
    return {
        "action": "completed",
        "workflow_run": {
            "head_sha": head_sha,
            "event": "pull_request",
            "html_url": "https://github.com/acme/recipes/actions/runs/1",
        },
        "repository": {"full_name": GITHUB_REPOSITORY, "default_branch": "main"},
    }


def test_fork_safe_pair_comments_from_the_saved_result(run, github_server, hub_server):
    """pull_request (no secrets, no write token) builds and saves its result; workflow_run comments it."""
    build = run("pull_request", pr_event(head_repo="stranger/recipes"), mode="build", comment="false")
    assert build.returncode == 0, build.stderr
    assert comments(github_server) == []
    downloaded = build.run_dir.parent / "downloaded-artifact"
    downloaded.mkdir()
    shutil.copy(build.run_dir / "work" / action.RESULT_FILE, downloaded)

    done = run("workflow_run", workflow_run_event(HEAD_SHA), ref="refs/heads/main", work_dir=str(downloaded))

    assert done.returncode == 0, done.stderr
    [comment] = comments(github_server)
    assert "tiny-cocktail built" in comment.body and "### Build" in comment.body
    assert (
        "[workflow run](https://github.com/acme/recipes/actions/runs/4201)" in comment.body
    )  # the build's run


def test_saved_result_for_an_old_head_is_a_notice_not_a_comment(run, github_server, tmp_path):
    """The fork-safe pair's second run, after the PR moved on: nothing commented, exit 0."""
    result = ActionResult(
        status="success",
        mode="build",
        manifest_path="cocktail.yml",
        repository=GITHUB_REPOSITORY,
        pr_number=7,
        head_sha=HEAD_SHA,
    )
    downloaded = tmp_path / "artifact"
    downloaded.mkdir()
    (downloaded / action.RESULT_FILE).write_text(result.model_dump_json())
    github_server.state.pulls[(GITHUB_REPOSITORY, 7)].head_sha = "2e" * 20
    done = run("workflow_run", workflow_run_event(HEAD_SHA), ref="refs/heads/main", work_dir=str(downloaded))
    assert done.returncode == 0, done.stderr
    assert comments(github_server) == [] and "::notice::pull request #7 has moved on" in done.stdout


def test_saved_result_must_match_the_triggering_run(tmp_path):
    result = ActionResult(
        status="success",
        mode="build",
        manifest_path="cocktail.yml",
        repository=GITHUB_REPOSITORY,
        pr_number=7,
        head_sha=HEAD_SHA,
    )
    (tmp_path / action.RESULT_FILE).write_text(result.model_dump_json())
    env = env_with_event(
        "workflow_run",
        workflow_run_event(HEAD_SHA),
        GITHUB_REPOSITORY=GITHUB_REPOSITORY,
        INPUT_WORK_DIR=str(tmp_path),
    )
    assert action.load_saved_result(env) == result
    stale = env_with_event(
        "workflow_run",
        workflow_run_event("2e" * 20),
        GITHUB_REPOSITORY=GITHUB_REPOSITORY,
        INPUT_WORK_DIR=str(tmp_path),
    )
    with pytest.raises(
        CocktailError,
        match=rf"the saved result is for commit {HEAD_SHA}, but the triggering run "
        rf"built {'2e' * 20}: refusing to comment$",
    ):
        action.load_saved_result(stale)
    other_repo = env_with_event(
        "workflow_run",
        workflow_run_event(HEAD_SHA),
        GITHUB_REPOSITORY="evil/repo",
        INPUT_WORK_DIR=str(tmp_path),
    )
    with pytest.raises(CocktailError, match=rf"the saved result is for {GITHUB_REPOSITORY}, not evil/repo$"):
        action.load_saved_result(other_repo)
    (tmp_path / action.RESULT_FILE).write_text('{"status": "rm -rf"}')
    with pytest.raises(
        CocktailError, match=r"cocktail-result.json: not a cocktail-bot result \(\d+ problems\)$"
    ):
        action.load_saved_result(env)


# --- pure parts ---------------------------------------------------------------------------------------------


def env_with_event(event_name: str, event: dict, **extra: str) -> action.ActionEnv:
    env = action.read_env({"GITHUB_EVENT_NAME": event_name, "INPUT_HF_TOKEN": "hf_x", **extra})
    return action.ActionEnv(**{**env.__dict__, "event": event})


@pytest.mark.parametrize(
    ("event_name", "event", "extra", "expected"),
    [
        ("pull_request", pr_event(), {}, action.Decision("publish", "preview", None, 7)),
        (
            "pull_request",
            pr_event(head_repo="fork/x"),
            {},
            action.Decision("plan", None, action.FORK_REASON, 7),
        ),
        (
            "pull_request",
            pr_event(head_repo="fork/x"),
            {"INPUT_MODE": "publish"},
            action.Decision("plan", None, action.FORK_REASON, 7),
        ),
        (
            "pull_request",
            pr_event(head_repo="fork/x"),
            {"INPUT_MODE": "build"},
            action.Decision("build", None, None, 7),
        ),
        (
            "pull_request",
            pr_event(),
            {"INPUT_HF_TOKEN": ""},
            action.Decision("plan", None, action.NO_TOKEN_REASON, 7),
        ),
        (
            "pull_request",
            pr_event(),
            {"INPUT_HF_TOKEN": "", "HF_OIDC_RESOURCE": "o/m"},
            action.Decision("publish", "preview", None, 7),
        ),
        ("pull_request", pr_event(), {"INPUT_MODE": "plan"}, action.Decision("plan", None, None, 7)),
        (
            "push",
            {"repository": {"default_branch": "main"}},
            {"GITHUB_REF": "refs/heads/main"},
            action.Decision("publish", "main"),
        ),
        (
            "push",
            {"repository": {"default_branch": "main"}},
            {"GITHUB_REF": "refs/heads/dev"},
            action.Decision("build"),
        ),
        (
            "workflow_dispatch",
            {"repository": {"default_branch": "main"}},
            {"GITHUB_REF": "refs/heads/dev", "INPUT_MODE": "publish"},
            action.Decision("publish", "main"),
        ),
        ("workflow_run", {"workflow_run": {}}, {}, action.Decision("comment")),
        (
            "pull_request",
            {**pr_event(), "action": "closed"},
            {},
            action.Decision("close", None, None, 7, merged=False),
        ),
        (
            "pull_request",
            {**pr_event(), "action": "closed"},
            {"INPUT_MODE": "build"},
            action.Decision("plan", None, action.CLOSED_REASON, 7),
        ),
    ],
)
def test_decide(event_name, event, extra, expected):
    assert action.decide(env_with_event(event_name, event, **extra)) == expected


def test_read_env_defaults_and_errors(tmp_path):
    env = action.read_env({"RUNNER_TEMP": str(tmp_path)})
    assert (env.manifest, env.mode, env.comment, env.work_dir) == (
        "cocktail.yml",
        "auto",
        True,
        tmp_path / "cocktail",
    )
    assert env.api_url == "https://api.github.com" and env.run_url is None
    with pytest.raises(
        CocktailError, match=r"^input mode must be one of auto, plan, build, publish, update, not 'deploy'$"
    ):
        action.read_env({"INPUT_MODE": "deploy"})
    with pytest.raises(CocktailError, match=r"^input comment must be true or false, not 'maybe'$"):
        action.read_env({"INPUT_COMMENT": "maybe"})
    with pytest.raises(
        CocktailError, match=r"^GITHUB_EVENT_PATH .*missing\.json: cannot read the event payload"
    ):
        action.read_env({"GITHUB_EVENT_PATH": str(tmp_path / "missing.json")})


def big_report(sources: int) -> Report:
    labels = [f"org/model-{i:05d}-{'long-name-' * 8}" for i in range(sources)]
    return Report(
        name="huge",
        model_type="decoder",
        tool_version="0.1.0",
        manifest_path="cocktail.yml",
        manifest_sha256="ab" * 32,
        manifest_text="version: 1\n",
        sources=[
            SourceReport(
                label=label,
                repo_id=label,
                requested_revision="main",
                resolved_revision="c" * 40,
                path="/tmp/x",
                license="mit",
            )
            for label in labels
        ],
        steps=[
            StepReport(
                name="merge",
                models=labels,
                weights_mode="uniform",
                weights=[1 / sources] * sources,
                dtype="float32",
            )
        ],
        evals=[
            EvalResult(eval_set="general", model=m, loss=1.5, examples=5) for m in [*labels[:3], "merged"]
        ],
        output=OutputReport(
            path="/tmp/out", files={"model.safetensors": "d" * 64}, total_bytes=123_456_789, dtype="float32"
        ),
        seconds=75.2,
        peak_rss_bytes=2_500_000_000,
        publish=PublishReport(
            repo_id="org/huge",
            revision="refs/pr/3",
            commit_sha="e" * 40,
            commit_url="https://huggingface.co/org/huge/commit/" + "e" * 40,
            pr_url="https://huggingface.co/org/huge/discussions/3",
            repo_url="https://huggingface.co/org/huge",
        ),
    )


def result_for(report: Report) -> ActionResult:
    return ActionResult(
        status="success",
        mode="publish",
        manifest_path="cocktail.yml",
        report=report,
        repository=GITHUB_REPOSITORY,
        pr_number=7,
        head_sha=HEAD_SHA,
        run_url="https://github.com/acme/recipes/actions/runs/5",
    )


def test_comment_shows_every_part_of_the_report():
    summary, comment = render(result_for(big_report(3)))
    assert comment == summary
    name = f"org/model-00000-{'long-name-' * 8}"
    for expected in (
        f"| [{name}](https://huggingface.co/{name}/tree/{'c' * 40})",
        "### Evaluation: sources vs merged",
        "| **merged** | 1.5000 |",
        "123.5 MB",
        "1 min 15 s",
        "2.5 GB",
        "[https://huggingface.co/org/huge/discussions/3]",
        "Model card (README.md)",
    ):
        assert expected in comment


def test_comment_over_the_limit_is_truncated_with_a_link_to_the_summary():
    summary, comment = render(result_for(big_report(150)))
    assert len(summary) > github.MAX_COMMENT_CHARS >= len(comment)
    assert comment.startswith(MARKER) and "Model card" not in comment
    assert comment.endswith("[job summary](https://github.com/acme/recipes/actions/runs/5).\n")
