"""Every source of a manifest pinned: `run` downloads them (a `--locked` run pins to the lock's commits and checks
the files), `plan` only asks the Hub's metadata."""

from __future__ import annotations

from cocktail_bot.errors import CocktailError
from cocktail_bot.lock import Lock, compare_files
from cocktail_bot.recipe import Manifest
from cocktail_bot.sources import ResolvedSource, resolve_source


def resolve_sources(
    manifest: Manifest,
    lock: Lock | None,
    *,
    token: str | None,
    endpoint: str | None,
    download: bool = True,
    stream: bool = False,
) -> dict[str, ResolvedSource]:
    """Pin every Hub and local source (a `--locked` run pins to the lock's commits and checks the files);
    ``stream``: leave Hub weights on the Hub (see ``sources.resolve_source``)."""
    resolved = {}
    for spec in manifest.external_sources():
        revision = spec.revision
        pinned = lock.source(spec.label) if lock is not None else None
        if lock is not None and pinned is None:
            raise CocktailError(f"{spec.label} is not in the lock: run without --locked to update the lock")
        if pinned is not None and pinned.resolved_revision:
            revision = pinned.resolved_revision
        source = resolve_source(
            spec.ref,
            revision,
            token=token,
            endpoint=endpoint,
            download=download,
            stream=stream,
            folder=manifest.path.parent,
        )
        if pinned is not None and download:
            differences = compare_files(pinned.files, source.files)
            if differences:
                raise CocktailError(
                    f"source {spec.label} differs from the lock:\n  "
                    + "\n  ".join(differences)
                    + "\nrun without --locked to update the lock",
                    exit_code=1,
                )
        # the manifest's label and revision, also when `--locked` asked the Hub for the lock's commit
        resolved[spec.label] = source.model_copy(
            update={"label": spec.label, "requested_revision": spec.revision}
        )
    return resolved
