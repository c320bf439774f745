"""cocktail.lock: round trip, clear errors on bad locks, and verification of a model folder."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from cocktail_bot.errors import CocktailError
from cocktail_bot.lock import (
    Lock,
    LockedSource,
    LockedStep,
    default_lock_path,
    hash_folder,
    lock_text,
    read_lock,
    verify_folder,
    write_lock,
)


def make_lock(folder: Path) -> Lock:
    return Lock(
        tool_version="0.1.0",
        manifest="cocktail.yml",
        manifest_sha256="ab" * 32,
        sources=[
            LockedSource(
                label="org/a@v1",
                repo_id="org/a",
                requested_revision="v1",
                resolved_revision="c" * 40,
                files={"model.safetensors": "d" * 64},
            )
        ],
        steps=[
            LockedStep(
                name="merge",
                models=["org/a@v1"],
                weights_mode="examples",
                weights=[1.0],
                losses=[2.5],
                method="linear",
                output_files=hash_folder(folder),
            )
        ],
        output=hash_folder(folder),
    )


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "config.json").write_text("{}")
    (folder / "1_Pooling" / "config.json").write_text('{"mean": true}')
    (folder / "README.md").write_text("card: not hashed, it carries timings and provenance")
    return folder


def test_round_trip_is_stable_and_sorted(model_folder: Path, tmp_path: Path) -> None:
    lock = make_lock(model_folder)
    path = tmp_path / "cocktail.lock"
    write_lock(path, lock)
    assert read_lock(path) == lock
    assert path.read_text() == lock_text(lock)
    assert list(json.loads(path.read_text())) == sorted(json.loads(path.read_text()))
    assert sorted(lock.output) == ["1_Pooling/config.json", "config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_the_lock_gets_the_usual_file_mode_not_a_temporary_files(model_folder: Path, tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_lock(tmp_path / "cocktail.lock", make_lock(model_folder))
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "cocktail.lock").stat().st_mode) == 0o644


def test_default_lock_path_is_beside_the_manifest() -> None:
    assert default_lock_path(Path("/r/cocktail.yml")) == Path("/r/cocktail.lock")
    assert default_lock_path(Path("/r/recipes/x.yaml")) == Path("/r/recipes/x.lock")


def test_verify_reports_each_difference(model_folder: Path) -> None:
    lock = make_lock(model_folder)
    assert verify_folder(model_folder, lock) == []
    (model_folder / "model.safetensors").write_bytes(b"tampered")
    (model_folder / "config.json").unlink()
    (model_folder / "extra.bin").write_bytes(b"x")
    (model_folder / "README.md").write_text("a new card is not a difference")
    expected_old = lock.output["model.safetensors"][:12]
    assert verify_folder(model_folder, lock) == [
        "missing: config.json",
        "unexpected: extra.bin (not in the lock)",
        f"changed: model.safetensors (lock sha256 {expected_old}..., now "
        f"{hash_folder(model_folder)['model.safetensors'][:12]}...)",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "lock file {path} not found: run `cocktail run` without --locked to create it"),
        (
            "{not json",
            "lock file {path} cannot be read (Expecting property name enclosed in double quotes: line 1 "
            "column 2 (char 1)); recreate it with `cocktail run`",
        ),
        (
            '{"lock_version": 9}',
            "lock file {path} has lock_version 9; this cocktail-bot reads version 1: upgrade "
            "cocktail-bot or recreate the lock",
        ),
        (
            '{"lock_version": 1}',
            "lock file {path} is not a cocktail.lock (tool_version: Field required); recreate it "
            "with `cocktail run`",
        ),
    ],
)
def test_bad_lock_files(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "cocktail.lock"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CocktailError) as caught:
        read_lock(path)
    assert str(caught.value) == message.format(path=path)
