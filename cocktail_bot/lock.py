"""`cocktail.lock`: what a run resolved and produced, so that `--locked` rebuilds it byte for byte.

The lock is JSON, written with sorted keys and no timestamps: the same run gives the same lock, and a diff of
the lock in a pull request shows exactly which revision, weight or output file changed.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ConfigDict, Field, ValidationError

from cocktail_bot.atomic import write_text_atomic
from cocktail_bot.errors import CocktailError
from cocktail_bot.model_files import file_sha256
from cocktail_bot.records import MergedStep, PinnedSource, Record
from cocktail_bot.references import split_revision
from cocktail_bot.report import EvalResult

LOCK_VERSION = 1
LOCK_SUFFIX = ".lock"
LOCK_NAME = "cocktail.lock"  # the copy of the lock that a run writes into the model folder
# Files a run writes beside the model that describe the run rather than the model (timings, provenance): they
# are not hashed, so that a `--locked` rebuild and `cocktail verify` compare the model itself.
RUN_FILES = frozenset({"README.md", "report.json", "report.md", LOCK_NAME})


class _Strict(Record):
    model_config = ConfigDict(extra="forbid")


class LockedSource(PinnedSource, _Strict):
    """A source as the lock pins it: nothing beyond :class:`PinnedSource`, and nothing unknown."""


class LockedStep(MergedStep, _Strict):
    method: str  # required in a lock
    output_files: dict[str, str] = Field(
        default_factory=dict, description="the step's output: name -> sha256"
    )


class Lock(_Strict):
    lock_version: int = LOCK_VERSION
    tool_version: str
    manifest: str = Field(description="the manifest's path, relative to its repository")
    manifest_sha256: str
    sources: list[LockedSource]
    steps: list[LockedStep]
    output: dict[str, str] = Field(description="the final model's files: name -> sha256")
    evals: list[EvalResult] = Field(
        default_factory=list,
        description="the eval results of this build, so that `cocktail update` shows them before and after",
    )

    def source(self, label: str) -> LockedSource | None:
        return next((source for source in self.sources if source.label == label), None)

    def step(self, name: str) -> LockedStep | None:
        return next((step for step in self.steps if step.name == name), None)


def default_lock_path(manifest_path: Path) -> Path:
    """`cocktail.yml` -> `cocktail.lock` beside it (`recipes/x.yml` -> `recipes/x.lock`)."""
    return manifest_path.with_suffix(LOCK_SUFFIX)


def hash_folder(folder: Path, *, skip: frozenset[str] = RUN_FILES) -> dict[str, str]:
    """sha256 of every file under ``folder`` (POSIX relative names, sorted), except the run files."""
    folder = Path(folder)
    return {
        path.relative_to(folder).as_posix(): file_sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() not in skip
    }


def lock_text(lock: Lock) -> str:
    return json.dumps(lock.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def write_lock(path: str | Path, lock: Lock) -> None:
    """Write atomically: a reader never sees half a lock, and a failed write leaves the old one."""
    write_text_atomic(Path(path), lock_text(lock))


def read_lock(path: str | Path) -> Lock:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CocktailError(
            f"lock file {path} not found: run `cocktail run` without --locked to create it"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CocktailError(
            f"lock file {path} cannot be read ({error}); recreate it with `cocktail run`"
        ) from None
    if isinstance(data, dict) and data.get("lock_version") not in (None, LOCK_VERSION):
        raise CocktailError(
            f"lock file {path} has lock_version {data.get('lock_version')!r}; "
            "this cocktail-bot reads version "
            f"{LOCK_VERSION}: upgrade cocktail-bot or recreate the lock"
        )
    try:
        return Lock.model_validate(data)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise CocktailError(
            f"lock file {path} is not a cocktail.lock ({where}: {first['msg']}); "
            "recreate it with `cocktail run`"
        ) from None


def compare_files(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Each difference between two name -> sha256 maps, one line each, sorted by file name."""
    differences = []
    for name in sorted(expected.keys() | actual.keys()):
        if name not in actual:
            differences.append(f"missing: {name}")
        elif name not in expected:
            differences.append(f"unexpected: {name} (not in the lock)")
        elif expected[name] != actual[name]:
            differences.append(
                f"changed: {name} (lock sha256 {expected[name][:12]}..., now {actual[name][:12]}...)"
            )
    return differences


def verify_folder(folder: str | Path, lock: Lock) -> list[str]:
    """Recompute the hashes of a model folder; every difference from the lock's output (empty: identical)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CocktailError(
            f"{folder} is not a folder: give the model folder that `cocktail run --out` wrote"
        )
    return compare_files(lock.output, hash_folder(folder))


def verify_hub_repo(
    reference: str, lock: Lock, *, token: str | None = None, endpoint: str | None = None
) -> list[str]:
    """The same check for a published model, ``org/name`` or ``org/name@revision``.

    LFS files are compared by the sha256 the Hub stores for them (nothing is downloaded); the small non-LFS
    files (config, tokenizer) are downloaded and hashed, since the Hub only keeps their git blob ids.
    """
    from huggingface_hub import HfApi, hf_hub_download

    from cocktail_bot.hub_access import hub_errors

    repo_id, revision = split_revision(reference)
    api = HfApi(endpoint=endpoint, token=token)
    actual: dict[str, str] = {}
    with hub_errors(repo_id, revision, reading=True, token=token):
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        for sibling in info.siblings or []:
            name = sibling.rfilename
            if name in RUN_FILES or name == ".gitattributes":
                continue
            if sibling.lfs is not None:
                actual[name] = sibling.lfs.sha256
            else:
                path = hf_hub_download(repo_id, name, revision=info.sha, token=token, endpoint=endpoint)
                actual[name] = file_sha256(Path(path))
    return compare_files(lock.output, actual)
