"""Model references as manifests, the CLI, the API and locks write them: the one grammar.

A reference is a local folder (``./path``, ``../path``, ``/abs/path``), a Hub repo id (``org/name`` or a
legacy ``name``) optionally pinned with ``@revision``, or, inside a manifest, an earlier step's output
(``step:NAME``). The JSON Schema's pattern is generated from the same pieces (:data:`REFERENCE_PATTERN`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LOCAL_PREFIXES = ("./", "../", "/")  # a reference starting with one of these is a local folder
STEP_PREFIX = "step:"  # how a source that is an earlier step's output is labelled
MAX_REPO_ID = 96  # huggingface_hub's validate_repo_id

_NAME = r"[A-Za-z0-9][\w.-]*"
_HUB_ID = rf"{_NAME}(?:/[\w.-]+)?"
_REVISION = r"[^@\s]+"
HUB_REFERENCE = re.compile(rf"(?P<repo>{_HUB_ID})(?:@(?P<revision>{_REVISION}))?")
# For editors: a local path, or a Hub id with an optional revision (the validators below say more).
REFERENCE_PATTERN = rf"^(\.{{0,2}}/.*|{_HUB_ID}(@\S+)?)$"
REPO_ID_PATTERN = rf"^{_HUB_ID}$"


@dataclass(frozen=True)
class HubReference:
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def is_local(reference: str) -> bool:
    """Written as a local folder (``./``, ``../`` or ``/``)."""
    return reference.startswith(LOCAL_PREFIXES)


def is_repo_id(text: str) -> bool:
    """A valid Hub repo id, by huggingface_hub's ``validate_repo_id`` rules (checked without importing it)."""
    parts = text.split("/")
    return (
        re.fullmatch(_HUB_ID, text) is not None
        and len(parts[-1]) <= MAX_REPO_ID
        and all(not part.startswith(("-", ".")) and not part.endswith(("-", ".")) for part in parts)
        and "--" not in text
        and ".." not in text
        and not text.endswith(".git")
    )


def parse_hub_reference(reference: str) -> HubReference | None:
    """``org/name`` or ``org/name@revision`` split, or None if ``reference`` is not one."""
    match = HUB_REFERENCE.fullmatch(reference)
    if match is None or not is_repo_id(match.group("repo")):
        return None
    return HubReference(match.group("repo"), match.group("revision"))


def split_revision(reference: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``); a local path or a reference without ``@`` keeps None."""
    if is_local(reference) or "@" not in reference:
        return reference, None
    repo_id, _, revision = reference.partition("@")
    return repo_id, revision


def looks_like_path(reference: str) -> bool:
    """Cannot be a Hub id and reads as a path (``.x``, ``~/x``, ``a/b/c``, ``a\\b``): a missing folder, not a
    Hub repo to look up."""
    return reference.startswith((".", "/", "~")) or "\\" in reference or reference.count("/") > 1


def check_reference(value: str, *, allow_revision: bool = True) -> str:
    """``value`` if it is a local path or a valid Hub id (with ``@revision`` where allowed); ValueError saying
    what to write otherwise. ``step:NAME`` is refused with how to name a step's output."""
    if is_local(value):
        return value
    if value.startswith(STEP_PREFIX):
        raise ValueError(
            f"{value!r}: a step's output cannot be named here; list {{step: {value.removeprefix(STEP_PREFIX)}, weight: ...}} first "
            "among the models (the first model is the default base)"
        )
    repo_id, at, revision = value.partition("@")
    if at and not allow_revision:
        raise ValueError(f"{value!r}: put the revision in 'revision:', not after '@'")
    if at and not revision.strip():
        raise ValueError(
            f"{value!r}: nothing after '@'; write org/name@revision (a branch, tag or commit sha)"
        )
    if not is_repo_id(repo_id):
        raise ValueError(
            f"{value!r} is not a model reference: use a Hub id 'org/name', 'org/name@revision', "
            "or a local folder starting with './'"
        )
    return value
