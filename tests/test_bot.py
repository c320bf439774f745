"""The bot as a runner runs it: `cocktail action` in a subprocess with `mode: update` on a schedule, and with
`/cocktail` comments (`issue_comment`), against the local GitHub and Hub servers and a local bare git repository
as `origin`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cocktail_bot import update_bot
from cocktail_bot.lock import Lock
from tests.conftest import GITHUB_REPOSITORY, GITHUB_TOKEN
from tests.github_server import parse_outputs

MOVING = "cocktail/tiny-moving"
HUB_REPO = "cocktail-tester/tiny-update"
BRANCH = "cocktail/update/tiny-update"
MANIFEST = f"""\
version: 1
name: tiny-update
type: decoder
models:
  - {MOVING}
  - ./models/local
weights: {{examples: examples/train.jsonl, temperature: 2.0}}
eval:
  - {{name: train, examples: examples/train.jsonl}}
output: {{repo: {HUB_REPO}, license: apache-2.0}}
"""


def git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "-C", str(folder), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def run_action(checkout: Path, github_server, run_dir: Path, event_name: str, event: dict, **inputs: str):
    """`cocktail action` with a fresh runner environment, as action.yml runs it."""
    run_dir.mkdir(parents=True)
    (run_dir / "event.json").write_text(json.dumps(event))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "INPUT_", "RUNNER_"))}
    env.update(
        {
            "GITHUB_ACTIONS": "true",
            "GITHUB_EVENT_NAME": event_name,
            "GITHUB_EVENT_PATH": str(run_dir / "event.json"),
            "GITHUB_REPOSITORY": GITHUB_REPOSITORY,
            "GITHUB_SHA": git(checkout, "rev-parse", "HEAD"),
            "GITHUB_REF": "refs/heads/main",
            "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_API_URL": github_server.url,
            "GITHUB_RUN_ID": "4242",
            "GITHUB_OUTPUT": str(run_dir / "output"),
            "GITHUB_STEP_SUMMARY": str(run_dir / "summary.md"),
            "RUNNER_TEMP": str(run_dir / "temp"),
            "INPUT_MANIFEST": "cocktail.yml",
            "INPUT_GITHUB_TOKEN": GITHUB_TOKEN,
            "INPUT_WORK_DIR": str(run_dir / "work"),
        }
    )
    env.update({f"INPUT_{name.upper()}": value for name, value in inputs.items()})
    done = subprocess.run(
        [sys.executable, "-m", "cocktail_bot", "action"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = run_dir / "output"
    done.outputs = parse_outputs(output.read_text()) if output.exists() else {}  # type: ignore[attr-defined]
    return done


def write_examples(root: Path) -> None:
    (root / "examples").mkdir()
    records = [{"input": f"what is the {w}?", "output": f"the {w} is good"} for w in ("cat", "dog", "tree")]
    (root / "examples" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def retrain(hub_server, source: Path, factor: float) -> str:
    """A new commit of the moving source on main: its weights scaled (a retrained fine-tune)."""
    from safetensors.torch import load_file, save_file

    tensors = {name: tensor * factor for name, tensor in load_file(source / "model.safetensors").items()}
    path = source.parent / f"{source.name}-x{factor}.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    return hub_server.commit(MOVING, {"model.safetensors": path}, message=f"retrain x{factor}")


class Repo:
    """A GitHub repository: a bare `origin`, the checkout a scheduled workflow makes, and the API server."""

    def __init__(self, tmp_path: Path, github_server, hub_server, tiny_llamas) -> None:
        from cocktail_bot.cli import main

        self.tmp_path, self.github_server, self.hub_server = tmp_path, github_server, hub_server
        self.source = tiny_llamas[0]
        self.origin = tmp_path / "origin.git"
        git(tmp_path, "init", "--bare", "-b", "main", str(self.origin))
        github_server.add_repo(GITHUB_REPOSITORY, git_dir=str(self.origin))
        hub_server.commit_folder(MOVING, self.source)
        hub_server.create_repo(HUB_REPO)
        author = tmp_path / "author"
        git(tmp_path, "clone", "-q", str(self.origin), str(author))
        shutil.copytree(tiny_llamas[1], author / "models" / "local")
        write_examples(author)
        (author / "cocktail.yml").write_text(MANIFEST)
        assert main(["-q", "run", str(author / "cocktail.yml"), "--out", str(tmp_path / "first")]) == 0
        git(author, "add", "-A")
        git(author, "commit", "-qm", "recipe and its lock")
        git(author, "push", "-q", "origin", "main")
        self.runs = 0

    def update(self, **inputs: str):
        """One scheduled run in a fresh checkout of main, as actions/checkout makes it."""
        self.runs += 1
        checkout = self.tmp_path / f"checkout-{self.runs}"
        git(self.tmp_path, "clone", "-q", str(self.origin), str(checkout))
        inputs = {"mode": "update", "hf_token": self.hub_server.write_token, **inputs}
        return run_action(
            checkout, self.github_server, self.tmp_path / f"run-{self.runs}", "schedule", {}, **inputs
        )

    def branch_lock(self) -> Lock:
        return Lock.model_validate_json(git(self.origin, "show", f"{BRANCH}:cocktail.lock"))

    def main_lock(self) -> Lock:
        return Lock.model_validate_json(git(self.origin, "show", "main:cocktail.lock"))

    def pulls(self):
        return self.github_server.pulls_of(GITHUB_REPOSITORY)


@pytest.fixture
def repo(tmp_path, github_server, hub_server, tiny_llamas) -> Repo:
    return Repo(tmp_path, github_server, hub_server, tiny_llamas)


# --- mode: update ------------------------------------------------------------------------------------------


def test_nothing_moved_means_no_branch_and_no_pull_request(repo: Repo) -> None:
    done = repo.update()
    assert done.returncode == 0, done.stderr
    assert done.outputs["status"] == "unchanged" and done.outputs["pull-request"] == ""
    assert "no source moved" in done.stdout
    assert git(repo.origin, "branch", "--list") == "* main"
    assert repo.pulls() == []


def test_a_moved_source_gives_one_pull_request_which_later_runs_update_and_a_close_declines(
    repo: Repo, hub_server
) -> None:
    old_commit = repo.main_lock().source(MOVING).resolved_revision
    main_head = git(repo.origin, "rev-parse", "main")
    new_commit = retrain(hub_server, repo.source, 0.5)

    first = repo.update()
    assert first.returncode == 0, first.stderr
    assert first.outputs["status"] == "updated"
    # the branch: one commit on main with the new lock and nothing else
    assert git(repo.origin, "rev-parse", f"{BRANCH}^") == main_head
    assert git(repo.origin, "diff", "--name-only", "main", BRANCH) == "cocktail.lock"
    lock = repo.branch_lock()
    assert lock.source(MOVING).resolved_revision == new_commit
    assert git(repo.origin, "log", "-1", "--format=%an", BRANCH) == "github-actions[bot]"
    # the pull request: to the default branch, its body showing the move, weights and evals before and after
    (pull,) = repo.pulls()
    assert (pull.head_ref, pull.base_ref, pull.state) == (BRANCH, "main", "open")
    assert first.outputs["pull-request"] == f"https://github.com/{GITHUB_REPOSITORY}/pull/{pull.number}"
    assert new_commit[:7] in pull.title
    body, hub, old = pull.body, hub_server.endpoint, repo.main_lock()
    assert f"[`{old_commit[:12]}`]({hub}/{MOVING}/commit/{old_commit})" in body
    assert f"[`{new_commit[:12]}`]({hub}/{MOVING}/commit/{new_commit})" in body
    for before, after in zip(old.steps[0].weights, lock.steps[0].weights, strict=True):
        assert f"| {before:.4f} | {after:.4f} |" in body
    assert old.evals[-1].model == lock.evals[-1].model == "merged"
    assert old.evals[-1].loss != lock.evals[-1].loss
    assert f"| **merged** | {old.evals[-1].loss:.4f} | {lock.evals[-1].loss:.4f} |" in body
    # its Hub preview, like any pull request's
    (preview,) = hub_server.repos[HUB_REPO].pull_requests.values()
    assert preview.title == update_bot.preview_title(GITHUB_REPOSITORY, BRANCH, "cocktail.yml")
    assert f"{hub}/{HUB_REPO}/discussions/{preview.num}" in body
    assert update_bot.read_proposed(body) == {MOVING: new_commit}

    # the source moves again: the same branch and pull request are updated, with the same Hub preview
    newer = retrain(hub_server, repo.source, 0.25)
    second = repo.update()
    assert second.returncode == 0, second.stderr
    (pull,) = repo.pulls()
    assert pull.state == "open" and update_bot.read_proposed(pull.body) == {MOVING: newer}
    assert f"[`{old_commit[:12]}`]" in pull.body and f"[`{newer[:12]}`]" in pull.body
    assert repo.branch_lock().source(MOVING).resolved_revision == newer
    assert git(repo.origin, "rev-parse", f"{BRANCH}^") == main_head
    assert len(hub_server.repos[HUB_REPO].pull_requests) == 1
    assert repo.main_lock() == old  # main is the reviewer's to change

    # a maintainer closes it without merging: the same commits are not proposed again ...
    pull.state = "closed"
    again = repo.update()
    assert again.returncode == 0, again.stderr
    assert again.outputs["status"] == "declined" and "closed without merging" in again.stdout
    assert [p.state for p in repo.pulls()] == ["closed"]
    # ... a newer commit is
    newest = retrain(hub_server, repo.source, 0.125)
    proposed = repo.update()
    assert proposed.returncode == 0, proposed.stderr
    closed, reopened = repo.pulls()
    assert (closed.state, reopened.state) == ("closed", "open") and reopened.number != closed.number
    assert update_bot.read_proposed(reopened.body) == {MOVING: newest}


def test_without_write_permission_the_push_fails_clearly(repo: Repo, hub_server) -> None:
    retrain(hub_server, repo.source, 0.5)
    hook = repo.origin / "hooks" / "pre-receive"  # the remote refuses the push, as without contents: write
    hook.write_text(
        "#!/bin/sh\necho 'Permission to acme/recipes.git denied to github-actions[bot].' >&2\nexit 1\n"
    )
    hook.chmod(0o755)
    done = repo.update()
    assert done.returncode == 1 and done.outputs["status"] == "failure"
    assert "contents: write" in done.stderr and "Traceback" not in done.stderr
    assert "Permission to acme/recipes.git denied" in done.stderr  # the remote's own words
    assert GITHUB_TOKEN not in done.stdout.replace(f"::add-mask::{GITHUB_TOKEN}", "") + done.stderr
    assert repo.pulls() == []


# --- pure parts ---------------------------------------------------------------------------------------------


def test_branch_names_and_the_proposed_line_round_trip() -> None:
    assert update_bot.update_branch("llama2 agnews/cocktail") == "cocktail/update/llama2-agnews-cocktail"
    commits = {"org/a@v1-->x": "a" * 40, "org/b": "b" * 40}
    line = update_bot.proposed_line(commits)
    assert "-->" not in line[: -len(" -->")]
    assert update_bot.read_proposed(f"text\n{line}\nmore") == commits
    assert update_bot.read_proposed("no marker") is None


# --- /cocktail commands -------------------------------------------------------------------------------------

PR_REPO = "cocktail-tester/tiny-pr"
PR_MANIFEST = f"""\
version: 1
name: tiny-pr
type: decoder
models:
  - {{id: ./models/a, weight: 0.7}}
  - {{id: ./models/b, weight: 0.3}}
output: {{repo: {PR_REPO}, license: apache-2.0}}
"""
MAINTAINER, PASSERBY = "maintainer", "passerby"


class PullRequest:
    """PR #7 checked out at its head (refs/pull/7/head), as the example issue_comment workflow does."""

    def __init__(self, tmp_path: Path, github_server, hub_server, tiny_llamas, *, fork: bool = False) -> None:
        self.tmp_path, self.github_server, self.hub_server = tmp_path, github_server, hub_server
        self.checkout = tmp_path / "pr"
        git(tmp_path, "init", "-q", "-b", "tune", str(self.checkout))
        for name, model in zip("ab", tiny_llamas, strict=False):
            shutil.copytree(model, self.checkout / "models" / name)
        (self.checkout / "cocktail.yml").write_text(PR_MANIFEST)
        git(self.checkout, "add", "-A")
        git(self.checkout, "commit", "-qm", "tune the weights")
        head_repo = "stranger/recipes" if fork else GITHUB_REPOSITORY
        github_server.add_pull(
            GITHUB_REPOSITORY, 7, head_sha=git(self.checkout, "rev-parse", "HEAD"), head_repo=head_repo
        )
        github_server.set_permission(GITHUB_REPOSITORY, MAINTAINER, "write")
        hub_server.create_repo(PR_REPO)
        self.runs = 0

    def comment(self, login: str, body: str):
        """``login`` comments ``body`` on PR #7; the workflow runs for it."""
        self.runs += 1
        comment = self.github_server.add_comment(GITHUB_REPOSITORY, 7, login, body)
        event = {
            "action": "created",
            "issue": {"number": 7, "pull_request": {"url": f"{self.github_server.url}/repos/x/pulls/7"}},
            "comment": {"id": comment.id, "body": body, "user": {"login": login}},
            "repository": {"full_name": GITHUB_REPOSITORY, "default_branch": "main"},
        }
        run_dir = self.tmp_path / f"comment-run-{self.runs}"
        done = run_action(
            self.checkout,
            self.github_server,
            run_dir,
            "issue_comment",
            event,
            hf_token=self.hub_server.write_token,
        )
        done.comment_id = comment.id  # type: ignore[attr-defined]
        return done

    def bot_comments(self):
        return [
            c for c in self.github_server.state.comments_on(GITHUB_REPOSITORY, 7) if c.login == "cocktail-bot"
        ]

    def reactions(self, comment_id: int) -> list[str]:
        return [content for _, cid, _, content in self.github_server.state.reactions if cid == comment_id]

    def previews(self):
        return list(self.hub_server.repos[PR_REPO].pull_requests.values())


@pytest.fixture
def pull(tmp_path, github_server, hub_server, tiny_llamas) -> PullRequest:
    return PullRequest(tmp_path, github_server, hub_server, tiny_llamas)


@pytest.fixture
def fork_pull(tmp_path, github_server, hub_server, tiny_llamas) -> PullRequest:
    return PullRequest(tmp_path, github_server, hub_server, tiny_llamas, fork=True)


def test_rebuild_from_a_collaborator_rebuilds_and_publishes_the_preview(pull: PullRequest) -> None:
    from cocktail_bot import github

    done = pull.comment(MAINTAINER, "/cocktail rebuild\nplease")
    assert done.returncode == 0, done.stderr
    assert pull.reactions(done.comment_id) == ["eyes"]
    (report,) = pull.bot_comments()
    assert (
        report.body.startswith(github.comment_marker("cocktail.yml")) and "preview published" in report.body
    )
    (preview,) = pull.previews()
    assert preview.title == f"cocktail-bot preview: {GITHUB_REPOSITORY}#7 (cocktail.yml)"
    assert done.outputs["status"] == "success" and done.outputs["revision"] == f"refs/pr/{preview.num}"


def test_plan_from_a_collaborator_posts_the_plan(pull: PullRequest) -> None:
    done = pull.comment(MAINTAINER, "/cocktail plan")
    assert done.returncode == 0, done.stderr
    (report,) = pull.bot_comments()
    assert "planned (not built)" in report.body and pull.previews() == []


def test_anyone_without_write_permission_is_told_who_may(pull: PullRequest, github_server) -> None:
    done = pull.comment(PASSERBY, "/cocktail rebuild")
    assert done.returncode == 0, done.stderr
    assert pull.reactions(done.comment_id) == ["-1"]
    (reply,) = pull.bot_comments()
    assert reply.body.startswith(f"@{PASSERBY} ") and "write permission on acme/recipes" in reply.body
    assert "(yours is read)" in reply.body
    assert pull.previews() == [] and done.outputs == {}
    # the permission was asked of the API, for the commenter
    assert ("GET", f"/repos/{GITHUB_REPOSITORY}/collaborators/{PASSERBY}/permission", "cocktail-bot") in (
        github_server.state.requests
    )


def test_a_forks_rebuild_is_refused_and_its_plan_accepted(fork_pull: PullRequest) -> None:
    refused = fork_pull.comment(MAINTAINER, "/cocktail rebuild")
    assert refused.returncode == 0, refused.stderr
    (reply,) = fork_pull.bot_comments()
    assert "comes from a fork, so only `/cocktail plan` is accepted" in reply.body
    assert fork_pull.reactions(refused.comment_id) == ["-1"] and fork_pull.previews() == []

    planned = fork_pull.comment(MAINTAINER, "/cocktail plan")
    assert planned.returncode == 0, planned.stderr
    assert fork_pull.reactions(planned.comment_id) == ["eyes"]
    assert "planned (not built)" in fork_pull.bot_comments()[-1].body and fork_pull.previews() == []


def test_a_checkout_that_is_not_the_pull_requests_head_is_not_built(pull: PullRequest) -> None:
    (pull.checkout / "extra.txt").write_text("pushed after the comment")
    git(pull.checkout, "add", "-A")
    git(pull.checkout, "commit", "-qm", "a later push")
    done = pull.comment(MAINTAINER, "/cocktail rebuild")
    assert done.returncode == 2 and "head is" in done.stderr and pull.previews() == []


def test_comments_that_are_not_commands_do_nothing(pull: PullRequest, github_server) -> None:
    done = pull.comment(PASSERBY, "looks good, but what about /cocktail?")
    assert done.returncode == 0, done.stderr
    assert pull.bot_comments() == [] and github_server.state.reactions == []


def test_parse_command() -> None:
    from cocktail_bot.pr_commands import parse_command

    assert parse_command("/cocktail rebuild") == "rebuild"
    assert parse_command("thanks!\n  /cocktail PLAN now") == "plan"
    assert parse_command("/cocktail") == ""
    assert parse_command("see /cocktail rebuild") is None and parse_command(None) is None
