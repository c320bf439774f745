"""Where outputs go must be writable: checked before any work, and write failures turned into one message.

A read-only mount, a full disk or a missing permission would otherwise surface as an ``OSError`` traceback from
some temporary file, possibly after minutes of work. ``check_writable`` probes a folder up front (a real file is
created and removed: permission bits say nothing on read-only mounts or for root); ``writing`` names the user's
path when the disk fills up or goes read-only while the work runs. ``preallocate`` reserves a file's blocks
before it is written, so that a disk too small fails at once rather than partway through.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cocktail_bot.errors import CocktailError

# What goes wrong with a location that passed ``check_writable`` while the work runs (a permission error there
# would come from reading a source, which is not the output's fault).
WRITE_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

# Linux's fallocate(2); None elsewhere. Not os.posix_fallocate: where a filesystem cannot reserve blocks, glibc
# falls back to writing every block once before the real writes (over NFS, every byte twice on the network).
_FALLOCATE = (
    getattr(ctypes.CDLL(None, use_errno=True), "fallocate", None)
    if sys.platform.startswith("linux")
    else None
)
if _FALLOCATE is not None:
    _FALLOCATE.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (the folder a new ``path`` would be created in)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(folder: str | Path, what: str) -> None:
    """Raise a CocktailError (exit 1) naming ``folder`` unless a file can be created in it (or, if it does
    not exist yet, in the folder it would be created in). ``what`` says what goes there."""
    folder = Path(folder)
    probed = existing_ancestor(folder)
    try:
        fd, name = tempfile.mkstemp(prefix=".cocktail-write-check-", dir=probed)
    except OSError as error:
        raise CocktailError(
            f"cannot write {what} to {folder}: {error.strerror or error} ({probed}); "
            "choose a writable location",
            exit_code=1,
        ) from None
    os.close(fd)
    os.unlink(name)


def preallocate(fd: int, nbytes: int) -> None:
    """Give the file open as ``fd`` its final size, ``nbytes``, with its blocks reserved, before it is written.

    A disk without room fails here (OSError ENOSPC), before any byte is written. And the writes that follow
    land in allocated blocks: on ext4 they cost a fraction of the CPU of extending a file block by block (2 GiB
    in 1 MiB writes: 0.5 s instead of 1.5-3.4 s on the development VM, docs/benchmarks.md). Filesystems that
    cannot reserve blocks are written as they are.
    """
    if _FALLOCATE is None or nbytes <= 0 or _FALLOCATE(fd, 0, 0, nbytes) == 0:
        return
    code = ctypes.get_errno()
    if code in WRITE_ERRNOS:
        raise OSError(code, os.strerror(code))


def write_error(error: OSError, path: str | Path, what: str) -> Exception:
    """The CocktailError (exit 1) naming ``path``, the place the user chose, for an OSError of writing there
    (no space, read-only) instead of a temporary file's name; any other OSError as it is."""
    if error.errno not in WRITE_ERRNOS:
        return error
    return CocktailError(
        f"could not write {what} to {path}: {error.strerror or error}; nothing was written there",
        exit_code=1,
    )


@contextmanager
def writing(path: str | Path, what: str) -> Iterator[None]:
    """``write_error`` for the block inside."""
    try:
        yield
    except OSError as error:
        raise write_error(error, path, what) from None
