"""Every source of a manifest pinned: `run` downloads them (a `--locked` run pins to the lock's commits and checks
the files), `plan` only asks the Hub's metadata."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cocktail_bot.errors import CocktailError
from cocktail_bot.lock import Lock, compare_files
from cocktail_bot.model_types import config_problems
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
    pins: Mapping[str, str] | None = None,
) -> dict[str, ResolvedSource]:
    """Pin every Hub and local source (a `--locked` run pins to the lock's commits and checks the files);
    ``stream``: leave Hub weights on the Hub (see ``sources.resolve_source``). ``pins``: the commits this run
    pinned before (label -> sha, from its plan), so that it merges what its preflight measured even if a
    branch moves meanwhile."""
    resolved = {}
    for spec in manifest.external_sources():
        revision = spec.revision
        pinned = lock.source(spec.label) if lock is not None else None
        if lock is not None and pinned is None:
            raise CocktailError(f"{spec.label} is not in the lock: run without --locked to update the lock")
        if pinned is not None and pinned.resolved_revision:
            revision = pinned.resolved_revision
        elif pins is not None and spec.label in pins:
            revision = pins[spec.label]
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
    check_configs(manifest, resolved)
    return resolved


def check_configs(manifest: Manifest, resolved: dict[str, ResolvedSource]) -> None:
    """Every source's config.json against the manifest's type and its step base's family, Hub sources
    included (`validate` could read only the local ones): one CocktailError naming each mismatch."""
    step_configs: dict[str, dict[str, Any] | None] = {}  # a step's output has its base's config
    problems: dict[str, str] = {}
    for step in manifest.steps:
        base = step.base or step.models[0]
        configs = {
            source.label: step_configs.get(source.ref)
            if source.kind == "step"
            else getattr(resolved.get(source.label), "config", None)
            for source in (*step.models, base)
        }
        problems.update(config_problems(manifest.model_type, list(configs.items()), base.label))
        step_configs[step.name] = configs[base.label]
    if problems:
        raise CocktailError("\n".join(problems.values()))
