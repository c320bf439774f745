"""Packaging and the release process: every imported distribution declared with a floor the code needs, and a
release (tag vX.Y.Z, tests, wheel, PyPI trusted publishing, the moving major tag) that makes the README's
`uses:` line and the card's "reproduce" install command name something that exists."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from cocktail_bot import __version__
from cocktail_bot.report import Report
from cocktail_bot.templating import reproduce_commands

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
REQUIREMENTS = {
    Requirement(spec).name.lower().replace("_", "-"): Requirement(spec) for spec in PROJECT["dependencies"]
}
RELEASE = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())


def imported_top_level_modules() -> set[str]:
    modules = set()
    for path in (ROOT / "cocktail_bot").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"cocktail_bot", "__future__"}


def test_every_imported_distribution_is_declared():
    """httpx2 was imported without being declared: it only came in through huggingface_hub."""
    distributions = importlib.metadata.packages_distributions()
    missing = {
        module: distributions.get(module)
        for module in imported_top_level_modules()
        if not any(d.lower().replace("_", "-") in REQUIREMENTS for d in distributions.get(module, [module]))
    }
    assert missing == {}, "declare these in pyproject.toml's dependencies"


@pytest.mark.parametrize(
    ("name", "floor", "too_old"),
    [("huggingface-hub", "2.4", "2.3.2"), ("pygithub", "2.5", "2.4.0"), ("httpx2", "2", "1.9")],
)
def test_floors_are_the_versions_the_code_needs(name, floor, too_old):
    """huggingface_hub 2.4: parse_ratelimit_headers, trusted publishing; PyGithub 2.5: Github.requester."""
    specifier = REQUIREMENTS[name].specifier
    assert Version(floor) in specifier and Version(too_old) not in specifier


def test_the_installed_versions_meet_the_floors():
    for name, requirement in REQUIREMENTS.items():
        installed = importlib.metadata.version(name)
        assert Version(installed.split("+")[0]) in requirement.specifier, (name, installed)


# --- the release workflow -----------------------------------------------------------------------------------


def test_release_runs_on_version_tags_tests_builds_and_publishes_by_trusted_publishing():
    assert RELEASE[True]["push"] == {"tags": ["v[0-9]+.[0-9]+.[0-9]+"]}  # YAML 1.1 reads `on` as True
    jobs = RELEASE["jobs"]
    assert jobs["build"]["needs"] == "test" and jobs["publish"]["needs"] == "build"
    assert jobs["major-tag"]["needs"] == "publish"
    test_script = "\n".join(step.get("run", "") for step in jobs["test"]["steps"])
    assert "tools/check_release_tag.sh" in test_script and "pytest" in test_script
    assert "python -m build" in "\n".join(step.get("run", "") for step in jobs["build"]["steps"])
    publish = jobs["publish"]
    assert publish["permissions"] == {"id-token": "write"} and publish["environment"]["name"] == "pypi"
    [pypi] = [
        step for step in publish["steps"] if step.get("uses", "").startswith("pypa/gh-action-pypi-publish@")
    ]
    assert "with" not in pypi  # no password: trusted publishing
    assert jobs["major-tag"]["permissions"] == {"contents": "write"}


@pytest.mark.parametrize("tag", [f"v{__version__}", "v9.9.9", __version__])
def test_the_tag_must_be_the_package_version(tag):
    done = subprocess.run(
        ["bash", str(ROOT / "tools" / "check_release_tag.sh"), tag],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if tag == f"v{__version__}":
        assert done.returncode == 0 and done.stdout == f"releasing cocktail-bot {__version__}\n"
    else:
        assert done.returncode == 1
        assert done.stdout == (
            f"::error title=release::tag {tag} does not match cocktail_bot.__version__ {__version__}: bump the "
            f"version or tag v{__version__}\n"
        )


def test_major_tag_script_moves_v_major():
    [step] = RELEASE["jobs"]["major-tag"]["steps"]
    assert 'major="${TAG%%.*}"' in step["run"]
    done = subprocess.run(
        ["bash", "-c", 'TAG=v0.1.0; major="${TAG%%.*}"; echo "$major"'], capture_output=True, text=True
    )
    assert done.stdout == "v0\n"


def test_readme_and_card_name_what_a_release_publishes():
    """The README's `uses:` line is the moving major tag the release workflow moves; the card installs the
    exact version, which the tag check makes the released one."""
    major = f"v{Version(__version__).major}"
    for doc in ("README.md", "docs/action.md"):
        uses = re.findall(r"uses: cocktail-bot/cocktail-bot@(\S+)", (ROOT / doc).read_text())
        assert uses and set(uses) == {major}, doc
    report = Report(
        name="x",
        model_type="decoder",
        tool_version=__version__,
        manifest_path="cocktail.yml",
        manifest_sha256="0",
        manifest_text="version: 1\n",
    )
    assert reproduce_commands(report)[0] == f"pip install cocktail-bot=={__version__}"
    assert (ROOT / "docs" / "release.md").is_file()
