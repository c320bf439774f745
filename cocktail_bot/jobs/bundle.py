"""The one file a Hugging Face job starts from: the running cocktail-bot, its requirements, the run's inputs and
settings, as a deterministic zip (the same run gives the same bytes, so its sha256 names it).

* ``lib/cocktail_bot/...``: this process's own package files, shipped as they are, so the job runs exactly
  the caller's version (a release, a commit of the action or a local checkout) without cocktail-bot on PyPI.
* ``requirements.txt``: cocktail-bot's dependencies pinned to the caller's installed versions (torch excepted:
  the job's image brings the build that matches its GPU), so the pipeline computes the same way.
* ``inputs/``: the manifest's repository as far as the run reads it (manifest, example and eval files, card
  template, and the lock for ``--locked``), at the same relative paths.
* ``job.json``: what the job does (:class:`JobSpec`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from pydantic import BaseModel

from cocktail_bot.errors import CocktailError
from cocktail_bot.lock import default_lock_path
from cocktail_bot.recipe import Manifest
from cocktail_bot.report import Provenance

DISTRIBUTION = "cocktail-bot"
LIB = "lib"
INPUTS = "inputs"
SPEC = "job.json"
REQUIREMENTS = "requirements.txt"
# Left to the job's image, which carries the build for its accelerator.
IMAGE_PROVIDED = frozenset({"torch"})
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class JobSpec(BaseModel):
    """The run the job repeats: the caller's ``cocktail run`` arguments, with paths inside ``inputs/``."""

    manifest: str
    locked: bool = False
    create_pr: bool = False
    pr_title: str | None = None
    device: str | None = None
    provenance: Provenance = Provenance()


@dataclass(frozen=True)
class Bundle:
    data: bytes
    sha256: str


def build_bundle(manifest: Manifest, spec: JobSpec, lock_file: Path | None) -> Bundle:
    """Zip the package, requirements, inputs (and ``lock_file`` for a locked run) and ``spec``."""
    members: dict[str, bytes] = {f"{LIB}/{name}": data for name, data in package_files().items()}
    members[REQUIREMENTS] = requirements().encode()
    for name, path in input_files(manifest).items():
        members[f"{INPUTS}/{name}"] = path.read_bytes()
    if spec.locked:
        assert lock_file is not None
        lock_name = default_lock_path(manifest.path).relative_to(manifest.root).as_posix()
        members[f"{INPUTS}/{lock_name}"] = lock_file.read_bytes()
    members[SPEC] = spec.model_dump_json(indent=2).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, members[name])
    data = buffer.getvalue()
    return Bundle(data, hashlib.sha256(data).hexdigest())


def package_files() -> dict[str, bytes]:
    """``cocktail_bot/...`` -> bytes for every file of the running package (templates included, wherever an
    editable install keeps them), without caches."""
    import cocktail_bot

    files: dict[str, bytes] = {}
    roots = [
        ("cocktail_bot", Path(cocktail_bot.__file__).parent),
        ("cocktail_bot/templates", Path(str(importlib.resources.files("cocktail_bot.templates")))),
    ]
    for prefix, root in roots:
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if path.is_file() and "__pycache__" not in relative.parts and path.suffix != ".pyc":
                files.setdefault(f"{prefix}/{relative.as_posix()}", path.read_bytes())
    return files


def requirements() -> str:
    """cocktail-bot's dependencies as ``name==version`` of what this process runs with, one per line."""
    lines = []
    for text in importlib.metadata.requires(DISTRIBUTION) or []:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            version = None
        if version is None or requirement.name.lower() in IMAGE_PROVIDED:
            lines.append(str(requirement))
        else:
            lines.append(f"{requirement.name}=={version.split('+')[0]}")
    return "\n".join(sorted(lines, key=str.lower)) + "\n"


def input_files(manifest: Manifest) -> dict[str, Path]:
    """Repository-relative name -> path of every file the run reads; local model folders cannot be sent."""
    local = [s.label for s in manifest.external_sources() if s.kind == "local"]
    if local:
        raise CocktailError(
            f"{manifest.relative_path} merges local folders ({', '.join(local)}), which a Hugging Face job "
            "cannot read: upload them to the Hub and name the repos in the manifest, or run locally"
        )
    paths = [manifest.path, *manifest.eval_sets.values()]
    paths += [step.examples_path for step in manifest.steps if step.examples_path is not None]
    if manifest.card_template is not None:
        paths.append(manifest.card_template)
    return {path.relative_to(manifest.root).as_posix(): path for path in paths}
