"""`cocktail update`: keep a merge current with sources that are named by a branch or a tag.

The lock pins every Hub source to a commit. A source the manifest names by a branch or tag (or by nothing: the
default branch) can move on the Hub; one named by a commit sha cannot. ``find_moved`` asks the Hub, never the
cache, where each movable source points now; ``update_manifest`` rebuilds with the new commits (through
``run_manifest``, which writes the new lock) and returns what moved with the weights and eval results before
and after, as data that the CLI, ``--json`` and the update pull request all render.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from cocktail_bot.errors import CocktailError
from cocktail_bot.lock import Lock, default_lock_path, read_lock
from cocktail_bot.manifest import load_manifest
from cocktail_bot.parameter_values import format_setting
from cocktail_bot.recipe import Manifest, SourceSpec
from cocktail_bot.report import EvalResult, Provenance, Report
from cocktail_bot.templating import fmt_number

COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_REVISION = "main"


class MovedSource(BaseModel):
    """A Hub source whose branch or tag points at another commit than the lock's."""

    label: str
    repo_id: str
    revision: str = Field(description="the branch or tag as the manifest names it (main when it names none)")
    old_commit: str | None = Field(description="the lock's commit; None when the source is new to the lock")
    new_commit: str
    old_url: str | None
    new_url: str


class StepWeights(BaseModel):
    """One step's weights per model, from the old lock and from the rebuild (None when not rebuilt)."""

    step: str
    models: list[str]
    before: list[float | list[Any]] | None  # a weight: a number, or a per-layer list / filtered values
    after: list[float | list[Any]] | None


class UpdateResult(BaseModel):
    """What ``cocktail update`` found and did; ``--json`` prints it and the update pull request shows it."""

    manifest: str
    lock: str
    checked: list[str] = Field(description="labels of the sources named by a branch or tag, asked for")
    moved: list[MovedSource]
    rebuilt: bool = Field(description="False when nothing moved or with --plan")
    weights: list[StepWeights] = Field(default_factory=list)
    evals_before: list[EvalResult] = Field(default_factory=list, description="as recorded in the old lock")
    evals_after: list[EvalResult] | None = Field(None, description="None when not rebuilt")
    output: str | None = Field(None, description="the rebuilt model's folder, when kept")


def is_commit(revision: str | None) -> bool:
    """A full commit sha cannot move; a branch, a tag, a PR ref or no revision at all (main) can."""
    return revision is not None and COMMIT_SHA.match(revision) is not None


def commit_url(repo_id: str, commit: str, endpoint: str | None = None) -> str:
    """The Hub page of one commit of a model repo."""
    from huggingface_hub import constants

    return f"{(endpoint or constants.ENDPOINT).rstrip('/')}/{repo_id}/commit/{commit}"


def movable_sources(manifest: Manifest) -> list[SourceSpec]:
    return [s for s in manifest.external_sources() if s.kind == "hub" and not is_commit(s.revision)]


def current_commit(repo_id: str, revision: str | None, *, token: str | None, endpoint: str | None) -> str:
    """Where ``revision`` points on the Hub now, asked of the Hub itself: a cached ref could hide a move."""
    from huggingface_hub import HfApi, constants

    from cocktail_bot.hub_access import hub_errors, with_retries

    if constants.is_offline_mode():
        raise CocktailError(
            "cocktail update asks the Hub whether sources moved, but HF_HUB_OFFLINE is set: unset it"
        )
    api = HfApi(endpoint=endpoint, token=token)
    where = f"{repo_id}@{revision or DEFAULT_REVISION}"
    with hub_errors(repo_id, revision, reading=True, token=token):
        info = with_retries(lambda: api.model_info(repo_id, revision=revision, expand=["sha"]), where)
    if not info.sha:
        raise CocktailError(f"the Hub gave no commit for {where}")
    return info.sha


def find_moved(
    manifest: Manifest, lock: Lock, *, token: str | None = None, endpoint: str | None = None
) -> tuple[list[str], list[MovedSource]]:
    """(labels checked, sources moved): every Hub source named by a branch or tag, against the lock."""
    checked, moved = [], []
    for spec in movable_sources(manifest):
        checked.append(spec.label)
        now = current_commit(spec.ref, spec.revision, token=token, endpoint=endpoint)
        pinned = lock.source(spec.label)
        old = pinned.resolved_revision if pinned is not None else None
        if old != now:
            moved.append(_moved(spec, old, now, endpoint))
    return checked, moved


def _moved(spec: SourceSpec, old: str | None, new: str, endpoint: str | None) -> MovedSource:
    return MovedSource(
        label=spec.label,
        repo_id=spec.ref,
        revision=spec.revision or DEFAULT_REVISION,
        old_commit=old,
        new_commit=new,
        old_url=commit_url(spec.ref, old, endpoint) if old else None,
        new_url=commit_url(spec.ref, new, endpoint),
    )


def built_moves(manifest: Manifest, old: Lock, new: Lock, endpoint: str | None) -> list[MovedSource]:
    """The moves as the rebuild pinned them (a branch that moved again since the check is reported as built)."""
    specs = {spec.label: spec for spec in movable_sources(manifest)}
    moves = []
    for source in new.sources:
        before = old.source(source.label)
        old_commit = before.resolved_revision if before is not None else None
        if source.label in specs and source.resolved_revision and old_commit != source.resolved_revision:
            moves.append(_moved(specs[source.label], old_commit, source.resolved_revision, endpoint))
    return moves


def compare_weights(old: Lock, new: Lock | None) -> list[StepWeights]:
    """Each step's weights before and after, by step name (a step's models are the same in both locks)."""
    steps = new.steps if new is not None else old.steps
    result = []
    for step in steps:
        before = old.step(step.name)
        result.append(
            StepWeights(
                step=step.name,
                models=step.models,
                before=list(before.weights) if before is not None else None,
                after=list(step.weights) if new is not None else None,
            )
        )
    return result


def check_lock_current(manifest: Manifest, lock: Lock, lock_file: Path) -> None:
    """An update moves sources only: a manifest edited since the lock goes through a normal run (and review)."""
    if lock.manifest_sha256 != manifest.sha256:
        raise CocktailError(
            f"{manifest.relative_path} changed since {lock_file} was written: update only moves sources; run "
            f"`cocktail run {manifest.relative_path} --out DIR` to rebuild with the edited manifest first"
        )


def update_manifest(
    path: str | Path,
    out: str | Path | None = None,
    *,
    plan: bool = False,
    lock_path: str | Path | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    publish: bool = False,
    pr_title: str | None = None,
    provenance: Provenance | None = None,
    force: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> tuple[UpdateResult, Report | None]:
    """Check the movable sources; when one moved (and not ``plan``), rebuild and write the new lock.

    The model goes to ``out``, or to a temporary folder that is removed (the lock is what an update changes).
    ``publish``/``pr_title`` publish the rebuild as a Hub pull request, as the Action's preview does.
    Returns the result and the rebuild's report (None when nothing was rebuilt).
    """
    from cocktail_bot.pipeline import run_manifest

    manifest = load_manifest(path)
    lock_file = Path(lock_path) if lock_path is not None else default_lock_path(manifest.path)
    old = read_lock(lock_file)
    check_lock_current(manifest, old, lock_file)
    checked, moved = find_moved(manifest, old, token=token, endpoint=endpoint)
    result = UpdateResult(
        manifest=manifest.relative_path,
        lock=str(lock_file),
        checked=checked,
        moved=moved,
        rebuilt=False,
        weights=compare_weights(old, None),
        evals_before=old.evals,
    )
    if not moved or plan:
        return result, None
    scratch = None if out is not None else Path(tempfile.mkdtemp(prefix="cocktail-update-"))
    try:
        report = run_manifest(
            manifest.path,
            out if out is not None else scratch / "model",  # type: ignore[operator]
            lock_path=lock_file,
            publish=publish,
            create_pr=publish,
            pr_title=pr_title,
            provenance=provenance,
            force=force,
            token=token,
            endpoint=endpoint,
            device=device,
            progress=progress,
        )
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    new = read_lock(lock_file)
    result.moved = built_moves(manifest, old, new, endpoint)
    result.rebuilt = True
    result.weights = compare_weights(old, new)
    result.evals_after = new.evals
    result.output = str(Path(out).resolve()) if out is not None else None
    return result, report


# ---- text for a terminal -----------------------------------------------------------------------------------


def render_text(result: UpdateResult, *, plan: bool = False) -> str:
    """What ``cocktail update`` prints: nothing moved, or each move with the weights and evals around it."""
    if not result.checked:
        return (
            f"{result.manifest}: no Hub source is named by a branch or tag, so nothing can move; "
            f"{result.lock} unchanged\n"
        )
    if not result.moved:
        return (
            f"{result.manifest}: no source moved since {result.lock} "
            f"(checked {', '.join(result.checked)}); nothing changed\n"
        )
    lines = [f"{result.manifest}: {len(result.moved)} source(s) moved since the lock:"]
    for source in result.moved:
        old = source.old_commit[:12] if source.old_commit else "(not in the lock)"
        lines.append(f"  {source.label} ({source.revision}): {old} -> {source.new_commit[:12]}")
    lines.append("weights (before -> after):")
    for step in result.weights:
        for index, model in enumerate(step.models):
            before = _weight_text(step.before[index]) if step.before else "—"
            after = _weight_text(step.after[index]) if step.after else "(computed when rebuilt)"
            lines.append(f"  {step.step}: {model}: {before} -> {after}")
    lines += _eval_lines(result)
    if plan or not result.rebuilt:
        lines.append(f"--plan: nothing rebuilt, {result.lock} unchanged")
    else:
        kept = f"; model in {result.output}" if result.output else ""
        lines.append(f"rebuilt and wrote {result.lock}{kept}")
    return "\n".join(lines) + "\n"


def _eval_lines(result: UpdateResult) -> list[str]:
    after = {(e.model, e.eval_set): e for e in result.evals_after or []}
    before = {(e.model, e.eval_set): e for e in result.evals_before}
    keys = list(dict.fromkeys([*before, *after]))
    if not keys:
        return []
    lines = ["eval loss (before -> after):"]
    for model, eval_set in keys:
        old, new = before.get((model, eval_set)), after.get((model, eval_set))
        lines.append(
            f"  {eval_set}: {model}: {fmt_number(old.loss) if old else '—'} -> "
            f"{fmt_number(new.loss) if new else '—'}"
        )
    return lines


def _weight_text(weight: float | list[Any]) -> str:
    return format_setting(weight) if isinstance(weight, list) else fmt_number(weight)
