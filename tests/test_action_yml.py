"""action.yml, the example workflows and CI: valid, composite, every input wired to the entry through `env:`,
and no `${{ }}` expression inside any `run:` script (the script-injection rule). The run step is also executed
as the runner would, with its `env:` evaluated, against the local GitHub server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cocktail_bot import action, github
from tests.conftest import GITHUB_REPOSITORY, GITHUB_TOKEN

ROOT = Path(__file__).resolve().parents[1]
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())
WORKFLOWS = sorted(
    [*(ROOT / "examples" / "workflows").glob("*.yml"), ROOT / ".github" / "workflows" / "ci.yml"]
)
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
INPUTS = {
    "manifest",
    "mode",
    "hf-token",
    "github-token",
    "python-version",
    "extra-pip",
    "comment",
    "work-dir",
    "runner",
    "hf-jobs-token",
}
OUTPUTS = {"repo", "revision", "commit-url", "report-path", "status"}


def steps_of(document: dict) -> list[dict]:
    if "runs" in document:
        return document["runs"]["steps"]
    return [step for job in document["jobs"].values() for step in job.get("steps", [])]


def run_step() -> dict:
    [step] = [s for s in ACTION["runs"]["steps"] if s.get("id") == "run"]
    return step


def test_action_is_a_composite_with_the_documented_interface():
    assert ACTION["runs"]["using"] == "composite"
    assert set(ACTION["inputs"]) == INPUTS and set(ACTION["outputs"]) == OUTPUTS
    defaults = {name: spec.get("default") for name, spec in ACTION["inputs"].items()}
    assert (
        defaults["manifest"] == "cocktail.yml"
        and defaults["mode"] == "auto"
        and defaults["comment"] == "true"
        and defaults["runner"] == "local"
    )
    assert defaults["github-token"] == "${{ github.token }}"
    for name, spec in ACTION["outputs"].items():
        assert spec["value"] == f"${{{{ steps.run.outputs.{name} }}}}" and spec["description"]
    for step in ACTION["runs"]["steps"]:
        assert "uses" in step or step.get("shell") == "bash"


def test_own_python_and_caches():
    uses = {step["uses"].split("@")[0]: step for step in ACTION["runs"]["steps"] if "uses" in step}
    setup = uses["actions/setup-python"]["with"]
    assert setup["update-environment"] is False and setup["python-version"] == "${{ inputs.python-version }}"
    cached = [
        step["with"]["path"]
        for step in ACTION["runs"]["steps"]
        if step.get("uses", "").startswith("actions/cache@")
    ]
    assert cached == ["~/.cache/pip"]  # never model weights: a repo's cache quota is 10 GB, a 7B model 13.5


def test_every_entry_input_reaches_the_run_step_through_env():
    env = run_step()["env"]
    assert set(action.INPUT_VARIABLES) | {"python-version", "extra-pip"} == INPUTS
    for name, variable in action.INPUT_VARIABLES.items():
        assert env[variable] == f"${{{{ inputs.{name} }}}}"
    install = next(step for step in ACTION["runs"]["steps"] if step.get("name") == "Install cocktail-bot")
    assert install["env"]["EXTRA_PIP"] == "${{ inputs.extra-pip }}"


def injectable_scripts(document: dict) -> list[str]:
    """`run:` scripts with an expression inside: its value would be pasted into the shell before it runs."""
    return [step["run"] for step in steps_of(document) if "run" in step and "${{" in step["run"]]


def test_the_injection_check_finds_an_expression_in_a_script():
    bad = {
        "jobs": {
            "j": {"steps": [{"run": "echo ok"}, {"run": 'echo "${{ github.event.pull_request.title }}"'}]}
        }
    }
    assert injectable_scripts(bad) == ['echo "${{ github.event.pull_request.title }}"']


@pytest.mark.parametrize("path", [ROOT / "action.yml", *WORKFLOWS], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_expression_inside_a_run_script(path: Path):
    document = yaml.safe_load(path.read_text())
    assert injectable_scripts(document) == [], f"{path}: move the expression into env:"
    for step in steps_of(document):
        if "run" in step:
            subprocess.run(["bash", "-n", "-c", step["run"]], check=True)


@pytest.mark.parametrize(
    "path", sorted((ROOT / "examples" / "workflows").glob("*.yml")), ids=lambda p: p.name
)
def test_examples_use_only_real_inputs(path: Path):
    document = yaml.safe_load(path.read_text())
    ours = [s for s in steps_of(document) if s.get("uses", "").startswith("cocktail-bot/cocktail-bot@")]
    assert ours
    for step in ours:
        assert set(step.get("with", {})) <= INPUTS


def test_ci_tests_the_supported_pythons_as_the_readme_installs():
    ci = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    test = ci["jobs"]["test"]
    assert test["runs-on"] == "ubuntu-latest"
    assert test["strategy"]["matrix"]["python-version"] == ["3.10", "3.11", "3.12"]
    script = "\n".join(step.get("run", "") for step in test["steps"])
    assert script.index("download.pytorch.org/whl/cpu") < script.index("pip install -e '.[test]'")
    lint = "\n".join(step.get("run", "") for step in ci["jobs"]["lint"]["steps"])
    assert "pytest" in script and "ruff check ." in lint and "ruff format --check ." in lint
    assert "mypy" in lint.splitlines()


def test_the_ci_script_lints_and_type_checks_before_the_tests():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    order = [lines.index(command) for command in ("ruff check .", "ruff format --check .", "mypy", "pytest")]
    assert order == sorted(order)


def evaluate(value: str, context: dict[str, str]) -> str:
    """The `${{ }}` expressions action.yml uses in `env:`: plain context lookups."""
    return EXPRESSION.sub(lambda match: context[match.group(1)], value)


def test_run_step_runs_the_entry_with_every_input(tmp_path, github_server):
    """The run step's script, with its env evaluated as the runner does, against the local GitHub server."""
    github_server.add_pull(GITHUB_REPOSITORY, 3, head_sha="5" * 40)
    runner_temp = tmp_path / "runner-temp"
    (runner_temp / "cocktail-bot-venv" / "bin").mkdir(parents=True)
    (runner_temp / "cocktail-bot-venv" / "bin" / "cocktail").symlink_to(
        Path(sys.executable).parent / "cocktail"
    )
    event = tmp_path / "event.json"
    event.write_text(
        '{"pull_request": {"number": 3, "head": {"sha": "' + "5" * 40 + '", "repo": {"full_name": '
        f'"{GITHUB_REPOSITORY}"}}}}, "base": {{"repo": {{"full_name": "{GITHUB_REPOSITORY}"}}}}}}}}'
    )
    inputs = {
        "manifest": "recipes/missing.yml",
        "mode": "plan",
        "hf-token": "hf_secret_token_value",
        "github-token": GITHUB_TOKEN,
        "comment": "true",
        "work-dir": str(tmp_path / "work"),
        "runner": "hf-jobs",
        "hf-jobs-token": "hf_jobs_secret_token_value",
    }
    context = {f"inputs.{name}": value for name, value in inputs.items()} | {"runner.temp": str(runner_temp)}
    step = run_step()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "INPUT_", "HF_TOKEN"))}
    env |= {name: evaluate(str(value), context) for name, value in step["env"].items()}
    env |= {
        "GITHUB_ACTIONS": "true",
        "GITHUB_EVENT_NAME": "pull_request",
        "GITHUB_EVENT_PATH": str(event),
        "GITHUB_REPOSITORY": GITHUB_REPOSITORY,
        "GITHUB_API_URL": github_server.url,
        "GITHUB_RUN_ID": "77",
        "GITHUB_OUTPUT": str(tmp_path / "output"),
    }

    done = subprocess.run(
        ["bash", "-e", "-c", step["run"]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 2, done.stderr
    assert done.stdout.splitlines()[0] == "::add-mask::hf_secret_token_value"
    assert "::add-mask::hf_jobs_secret_token_value" in done.stdout.splitlines()
    [comment] = github_server.state.comments_on(GITHUB_REPOSITORY, 3)
    assert comment.body.startswith(github.comment_marker("recipes/missing.yml"))
    assert "mode `plan`" in comment.body and "recipes/missing.yml not found" in comment.body
    assert f"report-path={tmp_path / 'work' / 'report.md'}" in (tmp_path / "output").read_text()
