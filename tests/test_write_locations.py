"""Read-only and full locations: one message naming the path, exit 1, checked before any work, nothing left.

The read-only bind mounts and size-limited tmpfs live in a private mount namespace (tests/mounts.py); the tests
skip where namespaces are refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cocktail_bot.manifest import load_manifest
from cocktail_bot.plan import build_plan
from cocktail_bot.preflight import WAYS_OUT
from cocktail_bot.sizes import format_size as fmt_size
from tests.mounts import cocktail, require_mounts, run_mounted


@pytest.fixture(autouse=True)
def _mounts() -> None:
    require_mounts()


@pytest.fixture
def recipe(llama_recipe) -> Path:
    return llama_recipe("ro-cocktail", "weights: uniform\noutput: {license: mit}\n")


def mix_args(models: list[Path], out: Path) -> list[str]:
    return cocktail(
        "mix", *map(str, models), "--weights", "0.5", "0.5", "--type", "decoder", "--out", str(out)
    )


def test_run_into_a_read_only_folder(recipe: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    done = run_mounted(cocktail("run", str(recipe), "--out", str(locked / "out")), read_only=[locked])
    assert (done.returncode, done.stderr) == (
        1,
        f"error: cannot write the model to {locked}: Read-only file system ({locked}); "
        "choose a writable location\n",
    )
    assert list(locked.iterdir()) == [] and not (recipe.parent / "cocktail.lock").exists()


def test_run_with_the_manifest_on_a_read_only_mount_fails_before_any_work(
    recipe: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = run_mounted(cocktail("run", str(recipe), "--out", str(out)), read_only=[recipe.parent])
    assert (done.returncode, done.stderr) == (
        1,
        f"error: cannot write the lock cocktail.lock to {recipe.parent}: Read-only file system "
        f"({recipe.parent}); choose a writable location\n",
    )
    assert not out.exists() and sorted(path.name for path in tmp_path.iterdir()) == ["repo"]


def test_run_with_another_lock_path_on_a_read_only_mount(recipe: Path, tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir()
    args = cocktail("run", str(recipe), "--out", str(tmp_path / "out"), "--lock", str(locks / "x.lock"))
    done = run_mounted(args, read_only=[locks])
    assert done.returncode == 1 and done.stderr.startswith(
        f"error: cannot write the lock x.lock to {locks}: "
    )
    assert not (tmp_path / "out").exists()


def test_run_on_a_full_disk(recipe: Path, tmp_path: Path) -> None:
    """`cocktail run` measures first: the preflight refuses a filesystem smaller than the output (exit 2)."""
    full = tmp_path / "full"
    full.mkdir()
    done = run_mounted(cocktail("run", str(recipe), "--out", str(full / "out")), tmpfs={full: "64k"})
    output = fmt_size(build_plan(load_manifest(recipe)).output_bytes)
    assert (done.returncode, done.stderr) == (
        2,
        f"error: this run does not fit this machine: disk on {full} (output): needs ~{output}, 65.5 kB free. "
        f"Ways out: {WAYS_OUT['disk']}.\n",
    )
    assert list(full.iterdir()) == [] and not (recipe.parent / "cocktail.lock").exists()


def test_mix_into_a_read_only_folder(tiny_llamas: list[Path], tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    done = run_mounted(mix_args(tiny_llamas[:2], locked / "sub" / "out"), read_only=[locked])
    assert (done.returncode, done.stderr) == (
        1,
        f"error: cannot write the merged model to {locked / 'sub'}: Read-only file system ({locked}); "
        "choose a writable location\n",
    )


def test_mix_on_a_full_disk(tiny_llamas: list[Path], tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    done = run_mounted(mix_args(tiny_llamas[:2], full / "out"), tmpfs={full: "64k"})
    assert (done.returncode, done.stderr) == (
        1,
        f"error: could not write the merged model to {full / 'out'}: No space left on device; "
        "nothing was written there\n",
    )
    assert list(full.iterdir()) == []


def test_mix_models_into_a_read_only_folder(tiny_llamas: list[Path], tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "notes.txt").write_text("mine")
    script = (
        "import sys\nfrom cocktail_bot import mix_models\nfrom cocktail_bot.errors import CocktailError\n"
        "try:\n    mix_models(sys.argv[1:3], 'decoder', [0.5, 0.5], output_path=sys.argv[3])\n"
        "except CocktailError as error:\n    print(error)\n"
    )
    args = [sys.executable, "-c", script, *map(str, tiny_llamas[:2]), str(locked)]
    done = run_mounted(args, read_only=[locked])
    assert done.stdout == (
        f"cannot write the merged model to {locked}: Read-only file system ({locked}); "
        "choose a writable location\n"
    )
    assert [path.name for path in locked.iterdir()] == ["notes.txt"]


def test_a_file_too_big_for_the_disk_fails_before_its_bytes_are_written(tmp_path: Path) -> None:
    """``preallocate`` reserves a shard's blocks when its first bytes come: a disk without room fails there
    (the engine then reports it as in test_mix_on_a_full_disk), not after filling the disk with a partial file."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (
        "import os, sys\n"
        "from cocktail_bot.writable import preallocate\n"
        "fits, too_big = (os.open(os.path.join(sys.argv[1], name), os.O_WRONLY | os.O_CREAT) for name in 'ab')\n"
        "preallocate(fits, 2**19)\n"
        "print(os.fstat(fits).st_size, os.fstat(fits).st_blocks * 512 >= 2**19)\n"
        "try:\n"
        "    preallocate(too_big, 2**21)\n"
        "except OSError as error:\n"
        "    print(error.strerror, os.fstat(too_big).st_size)\n"
    )
    done = run_mounted([sys.executable, "-c", script, str(disk)], tmpfs={disk: "1m"})
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"{2**19} True\nNo space left on device 0\n",
        "",
    )
