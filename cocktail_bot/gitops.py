"""Plain git for the update bot: commit a changed file on top of the checkout's HEAD and push it to a branch.

The commit is made with a temporary index (``GIT_INDEX_FILE``), so the checkout's working tree, index and HEAD
stay as they are. The token travels in an HTTP header set through git's environment (``GIT_CONFIG_*``): never
in the command line, the remote URL or a config file, so neither ``ps`` nor the log shows it. A local folder as
``origin`` (what the tests use) needs no token.
"""

from __future__ import annotations

import base64
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from cocktail_bot.errors import CocktailError, RemoteError

# The identity GitHub shows for commits made with the workflow's GITHUB_TOKEN.
BOT_NAME = "github-actions[bot]"
BOT_EMAIL = "41898282+github-actions[bot]@users.noreply.github.com"


def _run(
    folder: Path, args: list[str], *, env: Mapping[str, str] | None = None, data: bytes | None = None
) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args],
            input=data,
            capture_output=True,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})},
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CocktailError(f"git {args[0]} failed in {folder} ({error}): is git installed?") from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
        raise CocktailError(f"git {args[0]} failed in {folder}: {'; '.join(lines) or done.returncode}")
    return done.stdout.decode().strip()


def toplevel(folder: Path) -> Path:
    """The root of the git checkout that holds ``folder``."""
    return Path(_run(folder, ["rev-parse", "--show-toplevel"]))


def head_commit(folder: Path) -> str:
    return _run(folder, ["rev-parse", "HEAD"])


def commit_files(root: Path, files: Mapping[str, bytes], message: str, *, parent: str = "HEAD") -> str:
    """A commit of ``parent``'s tree with ``files`` (paths relative to ``root``) replaced; its sha.

    Nothing in the checkout changes: the commit exists only as an object until it is pushed.
    """
    parent_sha = _run(root, ["rev-parse", "--verify", f"{parent}^{{commit}}"])
    identity = {
        "GIT_AUTHOR_NAME": BOT_NAME,
        "GIT_AUTHOR_EMAIL": BOT_EMAIL,
        "GIT_COMMITTER_NAME": BOT_NAME,
        "GIT_COMMITTER_EMAIL": BOT_EMAIL,
    }
    with tempfile.TemporaryDirectory(prefix="cocktail-git-") as scratch:
        env = {**identity, "GIT_INDEX_FILE": str(Path(scratch) / "index")}
        _run(root, ["read-tree", parent_sha], env=env)
        for path, data in files.items():
            blob = _run(root, ["hash-object", "-w", "--stdin"], data=data)
            _run(root, ["update-index", "--add", "--cacheinfo", f"100644,{blob},{path}"], env=env)
        tree = _run(root, ["write-tree"], env=env)
    return _run(root, ["commit-tree", tree, "-p", parent_sha, "-m", message], env=identity)


def auth_env(token: str | None) -> dict[str, str]:
    """git's environment for an HTTPS remote on GitHub: the token as ``x-access-token`` basic auth."""
    if not token:
        return {}
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraheader",
        "GIT_CONFIG_VALUE_0": f"AUTHORIZATION: basic {basic}",
    }


def push_branch(root: Path, commit: str, branch: str, *, token: str | None, remote: str = "origin") -> None:
    """Point ``branch`` on ``remote`` at ``commit``, replacing what was there: the branch is the bot's own,
    rebuilt from the default branch on every run, as Dependabot's are."""
    try:
        _run(root, ["push", "--force", remote, f"{commit}:refs/heads/{branch}"], env=auth_env(token))
    except CocktailError as error:
        message = str(error).replace(token, "***") if token else str(error)
        raise RemoteError(
            f"{message}: the workflow needs 'permissions: contents: write' (and a checkout with the "
            "repository as origin) to push the update branch"
        ) from None
