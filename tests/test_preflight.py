"""Preflight: `cocktail plan` and `cocktail run` refuse, before downloading, a run this machine cannot hold.

Two ways in: the machine's numbers passed in (exact messages for every shortfall), and a real small filesystem
(a size-limited tmpfs the test mounts; skipped where mounting is not allowed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from cocktail_bot.cli import main
from cocktail_bot.manifest import load_manifest
from cocktail_bot.plan import build_plan, can_run_here, with_preflight
from cocktail_bot.preflight import WAYS_OUT, Machine
from cocktail_bot.sizes import format_size as fmt_size

BIG = 10**15


@pytest.fixture
def recipe(llama_recipe) -> Path:
    return llama_recipe("preflight", "weights: uniform\n")


def planned(manifest: Path, out: Path, machine: Machine, device: str | None = None):
    loaded = load_manifest(manifest)
    plan = with_preflight(build_plan(loaded), loaded, out, device=device, machine=machine)
    assert plan.preflight is not None
    return plan, plan.preflight


def test_a_run_that_fits_passes_with_its_numbers(recipe: Path, tmp_path: Path) -> None:
    plan, preflight = planned(recipe, tmp_path / "out", Machine({tmp_path: BIG}, BIG))
    assert preflight.fits and preflight.message is None
    disk, memory = preflight.checks
    assert (disk.resource, disk.where, disk.uses) == ("disk", str(tmp_path), ["output"])
    assert disk.need_bytes == plan.disk_bytes == plan.output_bytes > 0
    assert (memory.need_bytes, memory.have_bytes) == (plan.peak_memory_bytes, BIG)


def test_short_disk_is_refused_with_the_numbers_and_the_ways_out(recipe: Path, tmp_path: Path) -> None:
    plan, preflight = planned(recipe, tmp_path / "out", Machine({tmp_path: 1000}, BIG))
    assert not preflight.fits
    assert preflight.message == (
        f"this run does not fit this machine: disk on {tmp_path} (output): needs "
        f"~{fmt_size(plan.output_bytes)}, 1.0 kB free. Ways out: {WAYS_OUT['disk']}."
    )


def test_short_memory_and_gpu_are_named_together(recipe: Path, tmp_path: Path) -> None:
    plan, preflight = planned(recipe, tmp_path / "out", Machine({tmp_path: BIG}, 2000, 3000), device="cuda:1")
    need = fmt_size(plan.peak_memory_bytes)
    assert preflight.message == (
        f"this run does not fit this machine: memory: needs ~{need}, 2.0 kB available; "
        f"GPU memory: needs ~{need}, 3.0 kB free. "
        f"Ways out: {WAYS_OUT['memory']}; or {WAYS_OUT['GPU memory']}."
    )
    assert [check.where for check in preflight.checks] == [str(tmp_path), "RAM", "cuda:1"]


def test_unknown_numbers_are_not_refusals(recipe: Path, tmp_path: Path) -> None:
    """A machine whose GPU or memory cannot be read: the check is reported as unknown, the run goes ahead."""
    _, preflight = planned(recipe, tmp_path / "out", Machine({tmp_path: BIG}, None, None), device="cuda")
    assert preflight.fits
    assert [check.have_bytes for check in preflight.checks] == [BIG, None, None]


def test_hub_downloads_and_the_output_on_one_filesystem_add_up(
    hub_server, tmp_path: Path, tiny_llamas: list[Path]
) -> None:
    """The cache and the output folder share tmp_path's filesystem: one check, both uses, the sum. A merge
    alone reads Hub weights in place, so only the small files are downloaded; files the cache already holds
    are not counted again."""
    hub_server.commit_folder("cocktail/llama-a", tiny_llamas[0])
    hub_server.commit_folder("cocktail/llama-b", tiny_llamas[1])
    manifest = tmp_path / "cocktail.yml"
    manifest.write_text(
        "version: 1\nname: hub\ntype: decoder\nmodels: [cocktail/llama-a, cocktail/llama-b]\nweights: uniform\n"
    )
    plan, preflight = planned(manifest, tmp_path / "out", Machine({tmp_path: BIG}, BIG))
    small_files = sum(
        path.stat().st_size
        for folder in tiny_llamas[:2]
        for path in folder.iterdir()
        if path.is_file() and path.suffix != ".safetensors"
    )
    assert plan.download_bytes == small_files
    disk = preflight.checks[0]
    assert disk.uses == ["Hugging Face cache", "output"]
    assert disk.need_bytes == plan.download_bytes + plan.output_bytes
    assert main(["-q", "run", str(manifest), "--out", str(tmp_path / "out")]) == 0
    again, _ = planned(manifest, tmp_path / "out2", Machine({tmp_path: BIG}, BIG))
    assert again.download_bytes == 0


def test_publishing_without_a_local_copy_needs_two_shards_of_temp_space(recipe: Path, tmp_path: Path) -> None:
    recipe.write_text(recipe.read_text() + "merge: {shard_size: 20kB}\noutput: {repo: cocktail/merged}\n")
    loaded = load_manifest(recipe)
    plan = with_preflight(build_plan(loaded), loaded, None, machine=Machine({tmp_path: 1000}, BIG))
    assert plan.preflight is not None and plan.output_bytes > 40_000
    disk = plan.preflight.checks[0]
    assert (disk.uses, disk.need_bytes) == (["output shards before upload"], 40_000)
    assert disk.where == tempfile.gettempdir() and disk.have_bytes == 1000  # tmp_path is on that filesystem


def test_plan_json_carries_the_numbers(recipe: Path, tmp_path: Path, capsys) -> None:
    assert main(["plan", "--json", str(recipe), "--out", str(tmp_path / "out")]) == 0
    preflight = json.loads(capsys.readouterr().out)["preflight"]
    assert preflight["fits"] is True and preflight["message"] is None
    assert [check["resource"] for check in preflight["checks"]] == ["disk", "memory"]
    assert all(check["have_bytes"] > check["need_bytes"] > 0 for check in preflight["checks"])
    fits, why = can_run_here(recipe, tmp_path / "out")
    assert fits and why.startswith(f"fits this machine: disk on {tmp_path} (output): needs ~")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 64 kB tmpfs: smaller than the merged tiny model. Skipped where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_plan_and_run_refuse_a_small_filesystem_before_writing(
    recipe: Path, small_disk: Path, capsys
) -> None:
    free = shutil.disk_usage(small_disk).free
    output = build_plan(load_manifest(recipe)).output_bytes
    expected = (
        f"error: this run does not fit this machine: disk on {small_disk} (output): needs "
        f"~{fmt_size(output)}, {fmt_size(free)} free. Ways out: {WAYS_OUT['disk']}.\n"
    )
    assert main(["plan", str(recipe), "--out", str(small_disk / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.err == expected
    assert f"  TOO SMALL: disk on {small_disk} (output): needs ~" in captured.out
    assert main(["-q", "run", str(recipe), "--out", str(small_disk / "out")]) == 2
    assert capsys.readouterr().err == expected
    assert not list(small_disk.iterdir())
