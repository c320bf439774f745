"""``cocktail publish`` end to end against the local Hub test server: output, exit codes, no token shown."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cocktail_bot import hub_access
from cocktail_bot.cli import main


@pytest.fixture
def model(tmp_path: Path, tiny_llamas) -> Path:
    folder = tmp_path / "llama-cocktail"
    shutil.copytree(tiny_llamas[0], folder)
    return folder


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_access, "RETRY_DELAYS", (0.0,))


def test_publish_prints_the_commit_url_then_reports_no_change(hub_server, model, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", hub_server.write_token)
    assert main(["publish", str(model), "--repo", "cocktail/llama-cocktail", "--private"]) == 0
    sha = hub_server.head("cocktail/llama-cocktail")
    out, err = capsys.readouterr()
    assert out == f"{hub_server.endpoint}/cocktail/llama-cocktail/commit/{sha}\n"
    assert hub_server.repos["cocktail/llama-cocktail"].private
    assert (
        hub_server.repos["cocktail/llama-cocktail"].commits[sha].title
        == "Publish llama-cocktail with cocktail-bot"
    )
    assert main(["publish", str(model), "--repo", "cocktail/llama-cocktail"]) == 0
    out, err = capsys.readouterr()
    assert out == (
        f"unchanged: cocktail/llama-cocktail@main already has these files: "
        f"{hub_server.endpoint}/cocktail/llama-cocktail/commit/{sha}\n"
    )
    assert hub_server.write_token not in out + err


def test_publish_in_a_subprocess_logs_what_it_does_not_each_request_nor_the_token(hub_server, model):
    """huggingface_hub talks through httpx2, whose INFO log has one line per request: the CLI keeps it out."""
    done = subprocess.run(
        [sys.executable, "-m", "cocktail_bot", "publish", str(model), "--repo", "cocktail/llama-cocktail"],
        env={**os.environ, "HF_TOKEN": hub_server.write_token},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "publishing 5 changed files" in done.stderr
    assert "HTTP Request:" not in done.stderr
    assert hub_server.write_token not in done.stdout + done.stderr


def test_the_run_reports_beside_a_built_model_are_not_published(hub_server, model, monkeypatch, capsys):
    """As with `cocktail run --publish`: report.json holds this machine's paths, and the card has the rest."""
    (model / "report.json").write_text('{"path": "/home/someone/models/llama"}')
    (model / "report.md").write_text("# the run\n")
    (model / "docs").mkdir()
    (model / "docs" / "report.md").write_text("a file of the model's own\n")
    monkeypatch.setenv("HF_TOKEN", hub_server.write_token)
    assert main(["publish", str(model), "--repo", "cocktail/llama-cocktail"]) == 0
    remote = hub_server.files("cocktail/llama-cocktail")
    assert "report.json" not in remote and "report.md" not in remote
    assert "docs/report.md" in remote and "model.safetensors" in remote


def test_publish_as_a_hub_pull_request_with_a_message(hub_server, model, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", hub_server.write_token)
    hub_server.create_repo("cocktail/llama-cocktail")
    assert (
        main(
            [
                "publish",
                str(model),
                "--repo",
                "cocktail/llama-cocktail",
                "--create-pr",
                "--message",
                "Merge from PR #7",
            ]
        )
        == 0
    )
    pr = hub_server.repos["cocktail/llama-cocktail"].pull_requests[1]
    assert capsys.readouterr().out == (
        f"opened {hub_server.endpoint}/cocktail/llama-cocktail/discussions/1 "
        f"(refs/pr/1): {hub_server.endpoint}/cocktail/llama-cocktail/commit/{pr.head}\n"
    )
    assert pr.title == "Merge from PR #7"


def test_publish_to_a_branch(hub_server, model, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", hub_server.write_token)
    assert main(["publish", str(model), "--repo", "cocktail/llama-cocktail", "--revision", "candidate"]) == 0
    assert capsys.readouterr().out.endswith(
        f"/commit/{hub_server.head('cocktail/llama-cocktail', 'candidate')}\n"
    )


def test_a_read_only_token_exits_1_with_one_message_and_no_token(hub_server, model, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", hub_server.read_token)
    assert main(["publish", str(model), "--repo", "cocktail/llama-cocktail"]) == 1
    out, err = capsys.readouterr()
    assert err == (
        "error: the token may not write to cocktail/llama-cocktail (403 Forbidden): use a token with the "
        "'write' role, or a fine-grained token with 'Write access to contents/settings of all repos' "
        "under the 'cocktail' namespace\n"
    )
    assert out == "" and hub_server.read_token not in err


def test_a_missing_folder_exits_2(hub_server, tmp_path, capsys):
    assert main(["publish", str(tmp_path / "nope"), "--repo", "cocktail/x"]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'nope'} is not a folder: publish a model folder built by cocktail-bot\n"
    )


@pytest.mark.parametrize("repo", ["not a repo", "org/name/extra", "org//name"])
def test_a_malformed_repo_id_exits_2_with_one_message(hub_server, model, monkeypatch, capsys, repo):
    monkeypatch.setenv("HF_TOKEN", hub_server.write_token)
    assert main(["publish", str(model), "--repo", repo]) == 2
    assert capsys.readouterr().err == (
        f"error: --repo {repo!r} is not a Hub repo id: write org/name (letters, digits, '-', '_' and '.')\n"
    )
    assert hub_server.repos == {}


def test_revision_and_create_pr_exclude_each_other(model, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["publish", str(model), "--repo", "cocktail/x", "--revision", "dev", "--create-pr"])
    assert exit_.value.code == 2
    assert "argument --create-pr: not allowed with argument --revision" in capsys.readouterr().err


def test_publish_with_a_pr_title_updates_one_hub_pull_request(hub_server, model, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", hub_server.write_token)
    argv = ["publish", str(model), "--repo", "cocktail/llama-cocktail", "--pr-title", "nightly preview"]
    assert main(argv) == 0
    (model / "README.md").write_text("# changed\n")
    assert main(argv) == 0
    repo = hub_server.repos["cocktail/llama-cocktail"]
    assert list(repo.pull_requests) == [1] and repo.pull_requests[1].title == "nightly preview"
    head = repo.pull_requests[1].head
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"published to {hub_server.endpoint}/cocktail/llama-cocktail/discussions/1 "
        f"(refs/pr/1): {hub_server.endpoint}/cocktail/llama-cocktail/commit/{head}"
    )
    assert hub_server.files("cocktail/llama-cocktail", "refs/pr/1")["README.md"] == b"# changed\n"
