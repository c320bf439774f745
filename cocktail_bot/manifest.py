"""`cocktail.yml`: loading, with every problem reported at once and its YAML line.

The work is split along its four jobs, each pure over the previous one's output:

1. :mod:`cocktail_bot.yaml_lines`: the YAML text composed into a node tree (safe loader, size- and
   alias-limited) so that every field keeps the line it was written on, and the data built from that tree;
2. :mod:`cocktail_bot.manifest_schema`: the data validated against ``ManifestDocument`` (pydantic, unknown
   keys forbidden), each pydantic error mapped back to its YAML node;
3. :mod:`cocktail_bot.manifest_checks`: consistency checks that a schema cannot express, on every part that
   passed the schema;
4. :mod:`cocktail_bot.recipe`: the result, a ``Manifest`` normalised to a list of ``StepSpec``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from pydantic import ValidationError

from cocktail_bot.errors import ONCE, CocktailError
from cocktail_bot.manifest_checks import Checker, schema_message
from cocktail_bot.manifest_schema import ManifestDocument
from cocktail_bot.recipe import Manifest
from cocktail_bot.yaml_lines import NodeIndex, Problem, load

MAX_MANIFEST_BYTES = 1024 * 1024

logger = logging.getLogger(__name__)


def find_repository_root(folder: Path) -> Path:
    """The git top-level containing ``folder`` (a `.git` directory or file), else the folder itself."""
    folder = folder.resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return candidate
    return folder


def load_manifest(path: str | Path, *, outside_folders: bool = False) -> Manifest:
    """Load and check a manifest; raise CocktailError listing ``FILE:LINE: field: message`` lines.

    ``outside_folders``: local model folders may be outside the manifest's repository (``../checkpoints/x``,
    ``/data/x``), for runs on this machine; the Action and HF Jobs, which see only the repository, keep them in.
    """
    display = str(path)
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise CocktailError(f"{display} is not a file: give the path of a cocktail.yml manifest")
        if size > MAX_MANIFEST_BYTES:
            raise CocktailError(
                f"{display} is {size} bytes; a manifest may be at most {MAX_MANIFEST_BYTES} bytes"
            )
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise CocktailError(f"{display} not found: give the path of a cocktail.yml manifest") from None
    except OSError as error:
        raise CocktailError(f"cannot read {display}: {error.strerror}") from None
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CocktailError(
            f"{display}: not UTF-8 text (byte {error.start}); save the manifest as UTF-8"
        ) from None
    manifest, problems = check_manifest_text(text, path.resolve(), outside_folders=outside_folders)
    if problems:
        lines = [f"{display}:{p.line}: {p.loc}: {p.message}" for p in problems]
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise CocktailError(f"{display} has {count}:\n" + "\n".join(lines))
    assert manifest is not None
    outside = [source.label for source in manifest.outside_sources()]
    if outside:
        logger.info(
            "note: %s %s outside the repository %s: the lock records %s by path and file hashes, so it is not "
            "portable (a --locked rebuild needs the same files at the same path, and the Action cannot use it)",
            ", ".join(outside),
            "is" if len(outside) == 1 else "are",
            manifest.root,
            "it" if len(outside) == 1 else "them",
            extra={ONCE: True},
        )
    return manifest


def check_manifest_text(
    text: str, path: Path, *, outside_folders: bool = False
) -> tuple[Manifest | None, list[Problem]]:
    """Every problem of a manifest's text, sorted by line; the Manifest when there are none."""
    root_node, data, yaml_problems = load(text)
    if root_node is None:
        return None, yaml_problems
    if not isinstance(data, dict):
        return None, [
            Problem(1, "(manifest)", "the manifest must be a mapping of keys (version, name, type, ...)")
        ]
    nodes = NodeIndex(root_node)
    problems: list[Problem] = []
    document: ManifestDocument | None = None
    try:
        document = ManifestDocument.model_validate(data)
    except ValidationError as error:
        problems += [
            # an unknown key is where it is written, not on its value's line (`modles:` then a list)
            nodes.problem(e["loc"], schema_message(e), key=e["type"] == "extra_forbidden")
            for e in error.errors(include_url=False)
        ]
    root = find_repository_root(path.parent)
    checker = Checker(nodes, path.parent, root, str(data.get("type", "")), outside_folders=outside_folders)
    steps = checker.check_steps(data)
    eval_sets = checker.check_eval(data)
    card = checker.check_card(data)
    problems += checker.problems
    problems.sort(key=lambda p: p.line)
    if problems or document is None:
        return None, problems
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Manifest(path, root, text, digest, document, tuple(steps), eval_sets, card), []
