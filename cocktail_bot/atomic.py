"""Staging folders and atomic replacement: what the user sees at a path is the old thing or the new, never half.

A staging folder is made beside its target (same file system, so the final ``os.replace`` is a rename), and a
replaced folder is moved aside before it is deleted, so a crash never leaves the target missing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path


def umask() -> int:
    """The process's umask (reading it means setting it: it is put back at once)."""
    current = os.umask(0)
    os.umask(current)
    return current


def staging_folder(beside: Path | None, prefix: str, suffix: str = "", *, private: bool = False) -> Path:
    """A fresh folder in ``beside`` (None: the system's temporary folder). ``mkdtemp`` makes it private (0700); unless ``private``, it gets the mode a
    plain mkdir would give, so what becomes the user's folder is as readable as any other they create."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=beside))
    if not private:
        folder.chmod(0o777 & ~umask())
    return folder


def replace_folder(new: Path, target: Path, *, trash: Path | None = None) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is first moved into ``trash`` (a folder the caller
    deletes later) or, without one, into a fresh folder beside it that is deleted here."""
    if not target.exists():
        os.replace(new, target)
        return
    if trash is not None:
        os.replace(target, trash / "replaced")
        os.replace(new, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, aside / target.name)
    os.replace(new, target)
    shutil.rmtree(aside)


def move_files_into(staging: Path, target: Path, files: Sequence[str]) -> None:
    """Move each file (relative POSIX names) from ``staging`` into the existing ``target``, each replaced
    atomically; files of ``target`` not listed stay as they are (as LM_Cocktail's ``save_pretrained`` leaves
    them). ``staging`` is deleted."""
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, target / name)
    shutil.rmtree(staging)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader never sees half of it and a failed write leaves the old file;
    the file gets the mode a plain ``open`` would give (mkstemp's is private)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
