"""``cocktail run --on hf-jobs``: the same run as :func:`cocktail_bot.pipeline.run_manifest`, done by a
Hugging Face job, with the same result on this side: ``--out`` holds the card, lock and report (the weights
are on the Hub, where the job published them), the lock beside the manifest is written, and the Report
returned is the job's.

Also where a run happens (:func:`choose_runner`): ``runner: auto`` in the Action, ``--on auto``.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from cocktail_bot.atomic import replace_folder, staging_folder
from cocktail_bot.errors import CocktailError, RemoteError
from cocktail_bot.jobs.bundle import JobSpec, build_bundle
from cocktail_bot.jobs.client import JobClient, bootstrap_command, job_labels
from cocktail_bot.jobs.results import JobResults, ResultsReader, read_results
from cocktail_bot.jobs.settings import CPU_FLAVOR, GPU_FLAVOR, HF_JOBS, LOCAL
from cocktail_bot.lock import LOCK_NAME, RUN_FILES, Lock, default_lock_path, read_lock, write_lock
from cocktail_bot.manifest import load_manifest
from cocktail_bot.manifest_schema import HfJobsSettings
from cocktail_bot.pipeline import (
    _check_out,
    check_lock_matches,
    git_provenance,
    output_location,
    write_report,
)
from cocktail_bot.plan import can_run_here
from cocktail_bot.recipe import Manifest
from cocktail_bot.report import Provenance, Report

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"


def wants_cuda(manifest: Manifest, device: str | None = None) -> bool:
    """Whether the run puts tensors on a GPU: ``device`` (``--device``) if given, else a step's merge.device."""
    devices = [device] if device else [step.merge.device for step in manifest.steps]
    return any((name or "").startswith("cuda") for name in devices)


def offload_reason(
    manifest_path: str | Path,
    out: str | Path | None,
    *,
    token: str | None,
    device: str | None = None,
    endpoint: str | None = None,
) -> tuple[bool, str]:
    """Whether ``runner: auto`` sends the run to Hugging Face Jobs, and why: a step (or ``device``) asks for
    cuda and torch sees no GPU, or the preflight (plan's :func:`~cocktail_bot.plan.can_run_here`: disk per
    filesystem, memory, GPU memory) finds this machine too small for the run into ``out`` (None: publishing
    with no local copy). A run that merges local model folders stays here: a job cannot read them."""
    manifest = load_manifest(manifest_path, outside_folders=True)
    local = [source.label for source in manifest.external_sources() if source.kind == "local"]
    if local:
        return False, f"merges local folders ({', '.join(local)}), which a Hugging Face job cannot read"
    if wants_cuda(manifest, device):
        import torch

        if not torch.cuda.is_available():
            return True, "the run asks for device cuda and this machine has no GPU"
    fits, why = can_run_here(manifest_path, out, device=device, token=token, endpoint=endpoint)
    return not fits, why


def choose_runner(
    runner: str,
    manifest_path: str | Path,
    out: str | Path | None,
    *,
    publishing: bool,
    fork: bool,
    token: str | None,
    device: str | None = None,
) -> str:
    """Where a run happens (the Action's input ``runner``, ``cocktail run --on``): hf-jobs only for runs that
    publish, never for a fork's pull request (no secrets there); auto asks :func:`offload_reason` and logs
    its answer."""
    if runner == LOCAL or fork:
        return LOCAL
    if not publishing:
        if runner == HF_JOBS:
            raise CocktailError(
                "runner hf-jobs: this run builds without publishing, and a Hugging Face job hands its model "
                "over through the Hub; publish it (--publish; in the Action mode publish, or auto on a pull "
                "request or the default branch), or run it locally"
            )
        logger.info("runner auto: the run does not publish, so it runs here")
        return LOCAL
    if runner == HF_JOBS:
        return HF_JOBS
    offload, why = offload_reason(manifest_path, out, token=token, device=device)
    if not offload:
        logger.info("runner auto: the run %s, so it runs here", why)
        return LOCAL
    logger.info("runner auto: the run goes to Hugging Face Jobs: %s", why)
    return HF_JOBS


def run_on_hf_jobs(
    path: str | Path,
    out: str | Path | None,
    *,
    settings: HfJobsSettings | None = None,
    flavor: str | None = None,
    locked: bool = False,
    publish: bool | None = None,
    provenance: Provenance | None = None,
    lock_path: str | Path | None = None,
    force: bool = False,
    token: str | None = None,
    job_token: str | None = None,
    endpoint: str | None = None,
    device: str | None = None,
    create_pr: bool = False,
    pr_title: str | None = None,
) -> Report:
    """Run the manifest on Hugging Face Jobs (``settings``: the manifest's ``runner.hf_jobs`` unless given;
    ``flavor`` overrides its flavor) and bring back what a local run leaves; ``job_token`` is the token the
    job publishes with (default ``token``, else the locally configured one), sent as a job secret."""
    manifest = load_manifest(path)
    settings = settings or manifest.hf_jobs
    out = Path(out).resolve() if out is not None else None
    lock_file = Path(lock_path) if lock_path is not None else default_lock_path(manifest.path)
    if out is not None:
        _check_out(out, manifest, force)
    if locked:
        check_lock_matches(manifest, read_lock(lock_file), lock_file)
    if not publish or not manifest.output.repo:
        raise CocktailError(
            "a run on Hugging Face Jobs hands its model over through the Hub: "
            + ("add --publish" if manifest.output.repo else f"name output.repo in {manifest.relative_path}")
            + " to run it there, or run it locally"
        )
    secret = job_token or token or _configured_token()
    provenance = provenance or git_provenance(manifest.path.parent)
    spec = JobSpec(
        manifest=manifest.relative_path,
        locked=locked,
        create_pr=create_pr,
        pr_title=pr_title,
        device=device,
        provenance=provenance,
    )
    bundle = build_bundle(manifest, spec, lock_file if locked else None)
    client = JobClient(token, endpoint, settings.namespace)
    labels = job_labels(bundle, manifest.sha256, provenance)
    job = client.find_active(labels)
    if job is not None:
        logger.info("following Hugging Face job %s, already running for these inputs", job.url)
    else:
        repo_id, bundle_path = client.stage(bundle)
        env = {
            "COCKTAIL_JOB_REPO": repo_id,
            "COCKTAIL_JOB_BUNDLE": bundle_path,
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # a log, not a terminal
        }
        hub_endpoint = _endpoint(endpoint)
        if hub_endpoint != DEFAULT_ENDPOINT:
            env["HF_ENDPOINT"] = hub_endpoint
        chosen = flavor or settings.flavor or (GPU_FLAVOR if wants_cuda(manifest, device) else CPU_FLAVOR)
        job = client.submit(
            image=settings.image,
            command=bootstrap_command(manifest.relative_path),
            env=env,
            secrets={"HF_TOKEN": secret},
            flavor=chosen,
            timeout=settings.timeout,
            labels=labels,
        )
        timeout = f", stopped after {settings.timeout}" if settings.timeout else ""
        logger.info("started Hugging Face job %s (%s%s)", job.url, chosen, timeout)
    reader = ResultsReader()
    try:
        final = client.follow(job, lambda line: _show(line, reader))
    except KeyboardInterrupt:  # follow cancelled the job
        client.discard(bundle, job)
        raise
    client.discard(bundle, job)  # the job has ended: it needs its inputs no more
    results = reader.results or read_results(client.log_lines(final))
    _check_outcome(final, results, settings)
    assert results is not None
    report = _take_results(results, manifest, out, lock_file, locked)
    if results.exit_code != 0:
        raise CocktailError(
            f"the Hugging Face job {final.url} failed: {results.error}", exit_code=results.exit_code
        )
    return report


def _show(line: str, reader: ResultsReader) -> None:
    """The job's log line in this process's log, unless it belongs to the results block."""
    if not reader.feed(line):
        print(line, file=sys.stderr, flush=True)


def _configured_token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if token is None:
        raise CocktailError(
            "a Hugging Face job needs a token to publish with: set HF_TOKEN (or log in with `hf auth login`)"
        )
    return token


def _endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or constants.ENDPOINT).rstrip("/")


def _check_outcome(job, results: JobResults | None, settings: HfJobsSettings) -> None:
    """One clear message for a job that ended without a usable result."""
    stage, message = str(job.status.stage), job.status.message
    if results is not None and (results.files or results.error):
        return
    if stage == "CANCELED":
        raise RemoteError(f"the Hugging Face job {job.url} was cancelled before it finished")
    if stage == "ERROR" and message and "timeout" in message.lower():
        limit = f" ({settings.timeout})" if settings.timeout else ""
        raise RemoteError(
            f"the Hugging Face job {job.url} ran out of time{limit} and was stopped: "
            "raise runner.hf_jobs.timeout in the manifest, or choose a faster flavor"
        )
    if stage == "ERROR":
        raise RemoteError(
            f"the Hugging Face job {job.url} failed ({message or 'no reason given'}) before it finished; "
            "its log is above"
        )
    raise RemoteError(
        f"the Hugging Face job {job.url} ended ({stage}) but its results did not come back in its log"
    )


def _take_results(
    results: JobResults, manifest: Manifest, out: Path | None, lock_file: Path, locked: bool
) -> Report:
    """The lock beside the manifest (as a local run writes it, before the model moves into place), then the
    job's card, lock and report into ``out`` atomically (nothing without ``out``: the model is only on the
    Hub); the report names this side's ``out``."""
    if "report.json" not in results.files:
        raise CocktailError(f"the Hugging Face job failed: {results.error}", exit_code=results.exit_code)
    report = Report.model_validate_json(results.files["report.json"])
    if report.output is not None:
        report.output.path = output_location(out, manifest)
    if not locked and LOCK_NAME in results.files:
        write_lock(lock_file, Lock.model_validate_json(results.files[LOCK_NAME]))
        logger.info("wrote %s", lock_file)
    if out is None:
        return report
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = staging_folder(out.parent, f".{out.name}.", ".cocktail-job")
    try:
        for name in RUN_FILES & results.files.keys():
            (folder / name).write_text(results.files[name], encoding="utf-8")
        write_report(folder, report)
        replace_folder(folder, out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return report
