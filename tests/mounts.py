"""Run a command with a read-only bind mount or a size-limited tmpfs, in a private mount namespace.

``unshare -rm`` (an unprivileged user and mount namespace) makes the mounts visible to the command alone, so tests
can show what happens on a read-only or full file system without root and without touching the machine's
mounts. Where namespaces or mounting are refused (some containers, CI sandboxes), ``require_mounts`` skips.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent


def _setup(read_only: Sequence[Path], tmpfs: dict[Path, str]) -> str:
    steps = [f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(path))}" for path, size in tmpfs.items()]
    for path in read_only:
        quoted = shlex.quote(str(path))
        steps += [f"mount --bind {quoted} {quoted}", f"mount -o remount,bind,ro {quoted}"]
    return " && ".join(steps) or "true"


@cache
def _mounts_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as scratch:
        probe = Path(scratch)
        command = ["unshare", "-rm", "sh", "-c", _setup([probe], {probe: "64k"})]
        return subprocess.run(command, capture_output=True, check=False).returncode == 0


def require_mounts() -> None:
    if not _mounts_work():
        pytest.skip("mount namespaces (unshare -rm) are not available here")


def run_mounted(
    args: Sequence[str],
    *,
    read_only: Sequence[Path] = (),
    tmpfs: dict[Path, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``args`` with the folders in ``read_only`` remounted read-only and a tmpfs of the given size (``"64k"``)
    mounted on each folder of ``tmpfs``; the mounts vanish with the command."""
    require_mounts()
    script = f'{_setup(read_only, tmpfs or {})} && exec "$@"'
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=False,
        timeout=300,
    )


def cocktail(*args: str) -> list[str]:
    """The ``cocktail`` command line for ``run_mounted``, as the installed entry point runs it."""
    return [sys.executable, "-m", "cocktail_bot", "-q", *args]
