"""`cocktail run`: validate, resolve, weights, merge (step by step), evaluate, card, publish, report, lock.

Everything is built in a work folder beside ``--out`` and moved into place only when the model, its card,
the lock and the report are complete, so a failure leaves ``--out`` as it was. Hub sources' safetensors
weights are read in place, by the merge, example-based weights and evaluation alike: only their small files are
downloaded. With ``publish`` the final step's shards
are uploaded as they are written and the model appears on the Hub in one commit at the end (see
``stream_publish``); without ``--out`` no local copy is kept and the work folder is in the temp dir. Intermediate steps' outputs
live in the work folder and feed later steps; only the final step's output is the model.
"""

from __future__ import annotations

import logging
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cocktail_bot import __version__, preload
from cocktail_bot.atomic import replace_folder, staging_folder
from cocktail_bot.errors import CocktailError
from cocktail_bot.lock import (
    LOCK_NAME,
    RUN_FILES,
    Lock,
    LockedSource,
    LockedStep,
    compare_files,
    default_lock_path,
    read_lock,
    write_lock,
)
from cocktail_bot.manifest import load_manifest
from cocktail_bot.model_types import is_sentence_transformer
from cocktail_bot.parameter_values import format_setting
from cocktail_bot.plan import build_plan, manifest_report, plan_manifest, with_preflight
from cocktail_bot.preflight import require
from cocktail_bot.recipe import Manifest, SourceSpec, StepSpec
from cocktail_bot.records import MergedStep
from cocktail_bot.references import STEP_PREFIX
from cocktail_bot.report import EvalResult, OutputReport, Provenance, Report, StepReport
from cocktail_bot.resolution import resolve_sources
from cocktail_bot.sources import ResolvedSource
from cocktail_bot.templating import MERGED
from cocktail_bot.writable import check_writable, write_error

if TYPE_CHECKING:
    from cocktail_bot.hub import UploadedFile
    from cocktail_bot.remote import HubModel
    from cocktail_bot.stream_publish import ShardUploader

logger = logging.getLogger(__name__)

__all__ = ["run_manifest", "plan_manifest", "git_provenance"]


@dataclass
class RunContext:
    """What the steps of one run share: resolved sources, step outputs, and the lock being followed."""

    manifest: Manifest
    work: Path
    locked: Lock | None
    device: str | None
    progress: bool
    sources: dict[str, ResolvedSource] = field(default_factory=dict)
    step_outputs: dict[str, Path] = field(default_factory=dict)
    output_bytes: dict[str, int] = field(default_factory=dict)  # step -> bytes of its output files

    def model_of(self, source: SourceSpec) -> Path | HubModel:
        """What the engine and scoring read: a folder, or a Hub source's ``remote.HubModel`` (weights read in
        place)."""
        if source.kind == "step":
            return self.step_outputs[source.ref]
        return self.sources[source.label].model


def run_manifest(
    path: str | Path,
    out: str | Path | None,
    *,
    locked: bool = False,
    publish: bool | None = None,
    provenance: Provenance | None = None,
    lock_path: str | Path | None = None,
    force: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    device: str | None = None,
    progress: bool = True,
    create_pr: bool = False,
    pr_title: str | None = None,
    before_publish: Callable[[], None] | None = None,
    run_files: Path | None = None,
    outside_folders: bool = False,
) -> Report:
    """Build the manifest's model into ``out`` (and publish it when ``publish`` and ``output.repo`` say so;
    ``create_pr`` proposes it as a new Hub pull request; ``pr_title`` updates the open one of that title, the
    Action's one preview per GitHub pull request; see ``hub.publish_folder``). ``before_publish`` runs just
    before anything is sent to the Hub and may raise to stop the run (the Action: "is this still the PR's
    head?"); nothing is published or written to ``out`` then. ``run_files``: a folder that also gets the card,
    lock and report (with ``out=None``, a Hugging Face job hands them back from there without keeping the
    model), also when publishing fails. ``outside_folders``: local model folders may be outside the
    manifest's repository (``cocktail run`` on this machine; see ``manifest.load_manifest``).

    Writes ``out``: the model files, ``README.md`` (the card), ``cocktail.lock``, ``report.json`` and
    ``report.md``; and the lock beside the manifest (``lock_path``; default ``<manifest>.lock``), unless
    ``locked``, where the lock is read instead and the output must match it byte for byte. ``out=None``
    (only with ``publish``): the model goes to the Hub and nowhere else.
    """
    started = time.perf_counter()
    manifest = load_manifest(path, outside_folders=outside_folders)
    if out is None and not publish:
        raise CocktailError("give --out DIR for the model, or --publish to publish it without a local copy")
    out = Path(out).resolve() if out is not None else None
    lock_file = Path(lock_path) if lock_path is not None else default_lock_path(manifest.path)
    if out is not None:
        _check_out(out, manifest, force)
    lock = read_lock(lock_file) if locked else None
    if lock is not None:
        check_lock_matches(manifest, lock, lock_file)
    if publish and not manifest.output.repo:
        raise CocktailError(
            f"cannot publish: {manifest.relative_path} has no output.repo; "
            "name the Hub repo there or drop --publish"
        )
    if out is not None:
        check_writable(out.parent, "the model")
    else:  # the shards pass through the temp folder on their way to the Hub
        check_writable(tempfile.gettempdir(), "the model's shards before they are uploaded")
    if lock is None:
        check_writable(lock_file.parent, f"the lock {lock_file.name}")
    plan = with_preflight(build_plan(manifest, token=token, endpoint=endpoint), manifest, out, device=device)
    assert plan.preflight is not None
    require(plan.preflight)  # before anything is downloaded
    # The merge needs torch: imported while the sources' small files and headers are fetched, and only now, so
    # that a run refused above (a missing repo, no token, too little disk) exits without waiting for it.
    preload.start()
    provenance = provenance or git_provenance(manifest.path.parent)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    work = staging_folder(
        out.parent if out else None, f".{out.name if out else manifest.name}.", ".cocktail-work", private=True
    )
    uploader: ShardUploader | None = None
    committed = False
    try:
        context = RunContext(manifest, work, lock, device, progress)
        pins = {s.label: s.resolved_revision for s in plan.sources if s.repo_id and s.resolved_revision}
        context.sources = resolve_sources(
            manifest, lock, token=token, endpoint=endpoint, stream=True, pins=pins
        )
        license_ = output_license(manifest, context.sources, publishing=bool(publish))
        if publish:
            uploader = shard_uploader(
                manifest,
                work / "upload",
                keep=out is not None,
                token=token,
                endpoint=endpoint,
                pr=create_pr or pr_title is not None,
            )
        step_reports, locked_steps = [], []
        for step in manifest.steps:
            last = step is manifest.steps[-1]
            step_report, locked_step = run_step(context, step, on_shard=uploader if last else None)
            step_reports.append(step_report)
            locked_steps.append(locked_step)
        final = context.step_outputs[manifest.steps[-1].name]
        output_files = locked_steps[-1].output_files
        new_lock = Lock(
            tool_version=__version__,
            manifest=manifest.relative_path,
            manifest_sha256=manifest.sha256,
            sources=[LockedSource(**resolved.pinned()) for resolved in context.sources.values()],
            steps=locked_steps,
            output=output_files,
        )
        if lock is not None:
            check_reproduced(lock, new_lock)
        report = build_report(manifest, context, step_reports, final, output_files, provenance, license_)
        report.evals = run_evals(context, final)
        new_lock.evals = locked_evals(report.evals)
        _finish_report(report, started, output_location(out, manifest))
        write_model_card(final, report, manifest)
        write_lock(final / LOCK_NAME, lock if lock is not None else new_lock)
        publish_error = None
        if uploader is not None:
            uploader.wait()
            if before_publish is not None:  # shards are in the Hub's storage; nothing is committed yet
                before_publish()
            publish_error = uploader.error or publish_output(
                final,
                manifest,
                report,
                provenance,
                token=token,
                endpoint=endpoint,
                create_pr=create_pr,
                pr_title=pr_title,
                uploaded=uploader.uploaded,
            )
            committed = publish_error is None
            if publish_error is not None:
                report.status, report.error = "failure", str(publish_error)
        write_report(final, report)
        if lock is None:  # before the model moves into place: if this fails, --out stays as it was
            try:
                write_lock(lock_file, new_lock)
            except OSError as error:
                raise write_error(error, lock_file, "the lock") from None
            logger.info("wrote %s", lock_file)
        if run_files is not None:
            for name in RUN_FILES:
                shutil.copyfile(final / name, run_files / name)
        if out is not None:  # --force: the old folder is deleted with the work folder
            replace_folder(final, out, trash=work)
        if publish_error is not None:
            raise publish_error
        return report
    except OSError as error:
        raise write_error(error, out if out is not None else work, "the model") from None
    finally:
        if uploader is not None and not committed:  # no empty repo left behind
            uploader.delete_created_repo()
        shutil.rmtree(work, ignore_errors=True)


# ---- checks before any work --------------------------------------------------------------------------------


def _check_out(out: Path, manifest: Manifest, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CocktailError(f"--out {out} is a file: give a folder for the model")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CocktailError(
            f"--out {out} exists and is not empty: choose a new folder, or pass --force to replace it"
        )
    if manifest.path.is_relative_to(out.resolve()) or manifest.root.is_relative_to(out.resolve()):
        raise CocktailError(f"--out {out} contains the manifest's repository: choose a folder outside it")


def check_lock_matches(manifest: Manifest, lock: Lock, lock_file: Path) -> None:
    if lock.manifest_sha256 != manifest.sha256:
        raise CocktailError(
            f"{manifest.relative_path} changed since {lock_file} was written "
            f"(manifest sha256 {manifest.sha256[:12]}... "
            f"but the lock has {lock.manifest_sha256[:12]}...): run without --locked to update the lock"
        )
    if lock.tool_version != __version__:
        logger.warning(
            "%s was written by cocktail-bot %s, this is %s: the rebuild is checked byte for byte against it",
            lock_file,
            lock.tool_version,
            __version__,
        )


def check_reproduced(lock: Lock, rebuilt: Lock) -> None:
    """A `--locked` run must give the lock's bytes; any difference is reported file by file."""
    differences = compare_files(lock.output, rebuilt.output)
    if differences:
        raise CocktailError(
            "the --locked rebuild differs from the lock's output:\n  "
            + "\n  ".join(differences)
            + "\nthe sources, the tool version or the hardware changed; nothing was written to --out",
            exit_code=1,
        )


# ---- sources -----------------------------------------------------------------------------------------------


# ---- steps -------------------------------------------------------------------------------------------------


def shard_uploader(
    manifest: Manifest, folder: Path, *, keep: bool, token: str | None, endpoint: str | None, pr: bool
) -> ShardUploader:
    """Uploads the final step's shards as they are written; keeps them on disk for ``--out`` or evaluation."""
    from cocktail_bot.stream_publish import ShardUploader

    assert manifest.output.repo is not None
    return ShardUploader(
        manifest.output.repo,
        folder,
        private=manifest.output.private,
        create_pr=pr,
        keep=keep or bool(manifest.eval_sets),
        token=token,
        endpoint=endpoint,
    )


def run_step(
    context: RunContext, step: StepSpec, on_shard: Callable[[str, Path, str], None] | None = None
) -> tuple[StepReport, LockedStep]:
    from cocktail_bot import engine
    from cocktail_bot.methods import get_method

    started = time.perf_counter()
    manifest = context.manifest
    models = [context.model_of(source) for source in step.models]
    labels = [source.label for source in step.models]
    weights, losses, loss_dtype = step_weights(context, step, models)
    method = get_method(step.merge.method, step.merge.parameters, step.model_params)
    weights = method.normalised(weights)
    base = step.base or (step.models[0] if step.models else None)
    if step.weights_mode == "unused":
        logger.info("step %s: %s (%s uses no per-model weights)", step.name, ", ".join(labels), method.name)
    else:
        logger.info(
            "step %s: %s with weights %s",
            step.name,
            ", ".join(labels),
            format_setting([round(w, 4) if isinstance(w, float) else w for w in weights]),
        )
    result = engine.merge(
        models,
        weights,
        context.work / "steps" / step.name,
        model_type=manifest.model_type,
        base=context.model_of(step.base) if step.base is not None else None,
        method=step.merge.method,
        method_params=dict(step.merge.parameters),
        model_params=step.model_params,
        dtype=step.merge.dtype,
        shard_size=step.merge.shard_size,
        device=engine_device(context.device or step.merge.device),
        progress=context.progress,
        on_shard=on_shard,
    )
    context.step_outputs[step.name] = result.output
    context.output_bytes[step.name] = result.total_bytes
    merged = MergedStep(
        name=step.name,
        models=labels,
        method=method.name,
        method_params=dict(method.params),
        model_params=[dict(own) or None for own in method.model_params] or None,
        weights_mode=step.weights_mode,
        weights=weights,
        losses=losses,
        loss_dtype=loss_dtype,
    )
    report = StepReport(
        **merged.merged(),
        examples=_relative(step.examples_path, manifest.root) if step.examples_path else None,
        temperature=step.example_weights.temperature if step.example_weights else None,
        base=base.label if base is not None else None,
        dtype=result.dtype,
        seconds=round(time.perf_counter() - started, 3),
    )
    locked = LockedStep(**merged.merged(), output_files=dict(result.files))
    return report, locked


def step_weights(
    context: RunContext, step: StepSpec, models: list[Path | HubModel]
) -> tuple[list[Any], list[float] | None, str | None]:
    """The step's weights: the manifest's, uniform, the lock's (`--locked`), or computed from the examples;
    with the example losses and the dtype they were computed in."""
    if context.locked is not None:
        pinned = context.locked.step(step.name)
        if pinned is None or pinned.models != [source.label for source in step.models]:
            raise CocktailError(f"step {step.name!r} is not in the lock as written: run without --locked")
        return list(pinned.weights), pinned.losses, pinned.loss_dtype
    explicit = step.explicit_weights
    if explicit is not None:
        return explicit, None, None
    from cocktail_bot.weights import compute_weights

    options = step.example_weights
    assert options is not None and step.examples_path is not None
    logger.info("step %s: computing weights from %s", step.name, step.examples_path.name)
    result = compute_weights(
        models,
        context.manifest.model_type,
        step.examples_path,
        temperature=options.temperature,
        max_input_length=options.max_input_length,
        neg_number=options.neg_number,
        batch_size=options.batch_size,
        dtype=options.dtype,
        device=context.device or step.merge.device or "auto",
        progress=context.progress,
        labels=[source.label for source in step.models],
    )
    return list(result.weights), list(result.losses), result.dtype


def engine_device(device: str | None) -> str:
    """The merge's device: as given, else the CPU. Merging is I/O bound, and CPU arithmetic gives the same
    bytes on every machine, so a `--locked` rebuild elsewhere matches. Examples and evaluation use "auto"."""
    return device if device not in (None, "auto") else "cpu"


# ---- evaluation, report, card, publish ---------------------------------------------------------------------


def run_evals(context: RunContext, final: Path) -> list:
    """Each source, each intermediate step's output and the merge, on every eval set of the manifest."""
    if not context.manifest.eval_sets:
        return []
    from cocktail_bot.evaluate import evaluate

    models: dict[str, Path | HubModel] = {label: source.model for label, source in context.sources.items()}
    for name, folder in context.step_outputs.items():
        if folder != final:
            models[f"{STEP_PREFIX}{name}"] = folder
    models[MERGED] = final
    return evaluate(
        models,
        context.manifest.model_type,
        context.manifest.eval_sets,
        device=context.device or "auto",
        progress=context.progress,
    )


def locked_evals(evals: list[EvalResult]) -> list[EvalResult]:
    """Eval results as the lock keeps them (for `cocktail update`'s before and after): losses rounded as the
    weights' are, so that the same build gives the same lock on any CPU."""
    from cocktail_bot.weights import DECIMALS

    return [result.model_copy(update={"loss": round(result.loss, DECIMALS)}) for result in evals]


def build_report(
    manifest: Manifest,
    context: RunContext,
    steps: list[StepReport],
    final: Path,
    files: dict[str, str],
    provenance: Provenance,
    license_: str | None,
) -> Report:
    sources = [source.to_report() for source in context.sources.values()]
    total = context.output_bytes[manifest.steps[-1].name]
    return manifest_report(
        manifest,
        sources=sources,
        steps=steps,
        output=OutputReport(path=str(final), files=files, total_bytes=total, dtype=steps[-1].dtype),
        license=license_,
        library_name="sentence-transformers" if is_sentence_transformer(final) else "transformers",
        provenance=provenance,
        reproduce=f"cocktail run {manifest.relative_path} --out {manifest.name} --locked",
    )


def output_license(manifest: Manifest, sources: dict[str, ResolvedSource], *, publishing: bool) -> str | None:
    """The merged model's license; one that cannot be inherited only stops a run that publishes."""
    from cocktail_bot.card import resolve_license

    try:
        return resolve_license({label: s.license for label, s in sources.items()}, manifest.output.license)
    except CocktailError as error:
        if publishing:
            raise
        logger.warning("%s; the card has no license until then", error)
        return None


def output_location(out: Path | None, manifest: Manifest) -> str:
    """Where the report says the model is: ``--out``, or only on the Hub."""
    return str(out) if out else f"{manifest.output.repo} (no local copy)"


def _finish_report(report: Report, started: float, out: str) -> None:
    assert report.output is not None
    report.output.path = out
    report.seconds = round(time.perf_counter() - started, 3)
    report.peak_rss_bytes = peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def write_model_card(folder: Path, report: Report, manifest: Manifest) -> None:
    from cocktail_bot.card import render_card

    (folder / "README.md").write_text(render_card(report, manifest.card_template), encoding="utf-8")


def write_report(folder: Path, report: Report) -> None:
    from cocktail_bot.card import render_report_markdown

    (folder / "report.json").write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(render_report_markdown(report), encoding="utf-8")


def publish_output(
    folder: Path,
    manifest: Manifest,
    report: Report,
    provenance: Provenance,
    *,
    token: str | None,
    endpoint: str | None,
    create_pr: bool = False,
    pr_title: str | None = None,
    uploaded: Mapping[str, UploadedFile] | None = None,
) -> CocktailError | None:
    """Publish the model folder (model, card, lock) and the shards already ``uploaded``; a failure is kept in
    the report and returned, not raised, so that the complete build still lands in --out. For
    ``create_pr``/``pr_title`` see ``publish_folder``."""
    from cocktail_bot.hub import commit_title, publish_folder

    assert manifest.output.repo is not None
    try:
        report.publish = publish_folder(
            folder,
            manifest.output.repo,
            private=manifest.output.private,
            commit_message=commit_title(manifest.name, provenance.repository, provenance.commit),
            token=token,
            endpoint=endpoint,
            create_pr=create_pr,
            pr_title=pr_title,
            uploaded=uploaded,
        )
    except CocktailError as error:
        report.status, report.error = "failure", str(error)
        return error
    return None


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


# ---- provenance --------------------------------------------------------------------------------------------


def git_provenance(folder: Path) -> Provenance:
    """Repository and commit of a local checkout, best effort: no git, no repository or no remote is fine."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() or None if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    remote = git("config", "--get", "remote.origin.url") or ""
    repository = None
    for prefix in ("https://github.com/", "git@github.com:", "ssh://git@github.com/"):
        if remote.startswith(prefix):
            repository = remote.removeprefix(prefix).removesuffix(".git").strip("/") or None
    return Provenance(repository=repository, commit=commit, ref=git("rev-parse", "--abbrev-ref", "HEAD"))
