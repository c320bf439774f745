"""Preflight: does this machine have the disk, memory and GPU memory a run needs? Asked before any download.

The needs come from the plan (``plan.build_plan``): the bytes still to download into the Hugging Face cache,
every step's output in the work folder beside the output folder, and the estimated peak memory. The machine's
side: the free space of each filesystem written to (when the cache and the output share one, their needs add
up), the memory available to a new process (:func:`available_memory`), and a GPU's free memory when the run uses one, read with
``nvidia-smi`` so that planning needs no torch. A run that does not fit is refused with one message naming the
numbers and the ways out, before it downloads anything; ``cocktail plan --json`` carries the same numbers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from cocktail_bot.errors import CocktailError
from cocktail_bot.sizes import format_size as fmt_size

WAYS_OUT = {
    "disk": "publish while merging (`cocktail run FILE --publish` without --out keeps about two shards on disk;"
    " Hub sources are read in place unless example weights or eval sets need them whole), a smaller"
    " merge.shard_size, a runner with more disk, or run it on Hugging Face Jobs with `cocktail run --on hf-jobs`",
    "memory": "a runner with more memory, or run it on Hugging Face Jobs with `cocktail run --on hf-jobs`",
    "GPU memory": "merge.device: cpu, a bigger GPU, or run it on Hugging Face Jobs with "
    "`cocktail run --on hf-jobs`",
}


class Check(BaseModel):
    """One resource: what the run needs of it and what this machine has (None: could not be read)."""

    resource: str = Field(description="disk, memory or GPU memory")
    where: str = Field(description="the filesystem (a path on it) or the device")
    uses: list[str] = Field(default_factory=list, description="what the run writes there")
    need_bytes: int
    have_bytes: int | None

    @property
    def fits(self) -> bool:
        return self.have_bytes is None or self.need_bytes <= self.have_bytes

    def describe(self) -> str:
        place = f"{self.resource} on {self.where}" if self.resource == "disk" else self.resource
        if self.uses:
            place += f" ({', '.join(self.uses)})"
        have = "free" if self.resource != "memory" else "available"
        return f"{place}: needs ~{fmt_size(self.need_bytes)}, {fmt_size(self.have_bytes)} {have}"


class Preflight(BaseModel):
    checks: list[Check]
    fits: bool
    message: str | None = Field(description="why the run was refused and the ways out; None when it fits")


@dataclass(frozen=True)
class Needs:
    """What a run writes where ((label, path, bytes) each) and the memory it holds."""

    disk: Sequence[tuple[str, Path, int]]
    memory: int
    gpu: str | None = None  # the device a run puts tensors on ("cuda:0"), if any
    gpu_memory: int = 0


@dataclass(frozen=True)
class Machine:
    """What this machine has: free bytes per filesystem (keyed by any path on it), available memory and free
    GPU memory (None where unknown). Tests pass their own numbers in."""

    disk_free: Mapping[Path, int]
    memory_available: int | None
    gpu_free: int | None = None


def existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor: the filesystem a not-yet-created folder will be on."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _filesystems(disk: Sequence[tuple[str, Path, int]]) -> dict[Path, tuple[list[str], int]]:
    """The needs grouped by filesystem (``st_dev``), keyed by the first path seen on each."""
    groups: dict[int, tuple[Path, list[str], int]] = {}
    for label, path, nbytes in disk:
        device = os.stat(existing(path)).st_dev
        first, labels, total = groups.get(device, (path, [], 0))
        groups[device] = (first, [*labels, label], total + nbytes)
    return {first: (labels, total) for first, labels, total in groups.values()}


def gpu_free_bytes(device: str) -> int | None:
    """Free memory of an NVIDIA GPU (``cuda`` or ``cuda:N``), from nvidia-smi; None when it cannot be read."""
    index = device.partition(":")[2] or "0"
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        result = subprocess.run(
            ["nvidia-smi", f"--id={index}", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return int(result.stdout.strip().splitlines()[0]) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def available_memory() -> int:
    """Memory a new process can take without swapping: the kernel's MemAvailable on Linux (what psutil reports
    there, read without importing it: `cocktail plan` starts faster), psutil's number elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import psutil

    return int(psutil.virtual_memory().available)


def measure(needs: Needs) -> Machine:
    """This machine's numbers for the filesystems and devices ``needs`` names."""
    return Machine(
        disk_free={path: shutil.disk_usage(existing(path)).free for path in _filesystems(needs.disk)},
        memory_available=available_memory(),
        gpu_free=gpu_free_bytes(needs.gpu) if needs.gpu else None,
    )


def check(needs: Needs, machine: Machine) -> Preflight:
    """Compare the needs with the machine; the message lists every shortfall and its ways out."""
    checks = []
    for path, (labels, total) in _filesystems(needs.disk).items():
        free = next(
            (free for where, free in machine.disk_free.items() if _same_filesystem(where, path)),
            None,
        )
        checks.append(Check(resource="disk", where=str(path), uses=labels, need_bytes=total, have_bytes=free))
    checks.append(
        Check(resource="memory", where="RAM", need_bytes=needs.memory, have_bytes=machine.memory_available)
    )
    if needs.gpu is not None:
        checks.append(
            Check(
                resource="GPU memory",
                where=needs.gpu,
                need_bytes=needs.gpu_memory,
                have_bytes=machine.gpu_free,
            )
        )
    short = [item for item in checks if not item.fits]
    message = None
    if short:
        ways = dict.fromkeys(WAYS_OUT[item.resource] for item in short)
        message = (
            "this run does not fit this machine: "
            + "; ".join(item.describe() for item in short)
            + ". Ways out: "
            + "; or ".join(ways)
            + "."
        )
    return Preflight(checks=checks, fits=not short, message=message)


def _same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(existing(a)).st_dev == os.stat(existing(b)).st_dev


def require(preflight: Preflight) -> None:
    """Refuse (exit 2) a run that does not fit."""
    if not preflight.fits:
        raise CocktailError(preflight.message or "this run does not fit this machine")
