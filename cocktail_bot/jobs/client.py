"""One cocktail-bot job on Hugging Face Jobs through ``huggingface_hub``'s Jobs API: stage its bundle, find a
job already running for the same inputs (``list_jobs`` by labels) or start one (``run_job``), stream its log
(``fetch_job_logs``, server-sent events), wait for its end (``wait_for_job``) and cancel it (``cancel_job``).

The Hub token reaches the job only as a job *secret*: ``env`` is shown to anyone who can read the job.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from cocktail_bot.errors import CocktailError, RemoteError
from cocktail_bot.jobs.bundle import Bundle
from cocktail_bot.report import Provenance

if TYPE_CHECKING:
    from huggingface_hub import HfApi, JobInfo

logger = logging.getLogger(__name__)

STAGING_REPO = "cocktail-bot-jobs"  # private model repo in the job's namespace holding job bundles
INPUTS_LABEL = "cocktail-inputs"  # the bundle's sha256: jobs with this label run from the same bundle
ACTIVE_STAGES = ("SCHEDULING", "RUNNING")
# The job's command: fetch the bundle with the job's token, install the pinned requirements, run the worker
# from the bundle's own copy of cocktail-bot. Values come from the job's env, never from this text.
BOOTSTRAP = """set -eu
cd "$(mktemp -d)"
echo "cocktail-bot job: preparing cocktail-bot {version}"
python -m pip install --quiet --disable-pip-version-check "huggingface_hub=={hub_version}"
python -c 'import os, shutil; from huggingface_hub import hf_hub_download as get; \
shutil.copy(get(os.environ["COCKTAIL_JOB_REPO"], os.environ["COCKTAIL_JOB_BUNDLE"]), "bundle.zip")'
python -m zipfile -e bundle.zip job
cd job
python -m pip install --quiet --disable-pip-version-check -r requirements.txt
echo "cocktail-bot job: running {manifest}"
PYTHONPATH="$PWD/lib" exec python -m cocktail_bot.jobs.worker
"""


def bootstrap_command(manifest: str) -> list[str]:
    from huggingface_hub import __version__ as hub_version

    from cocktail_bot import __version__

    return ["sh", "-c", BOOTSTRAP.format(version=__version__, hub_version=hub_version, manifest=manifest)]


def label_value(text: str) -> str:
    """Job labels take at most 100 letters, digits, dashes and underscores."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)[:100]


def job_labels(bundle: Bundle, manifest_sha256: str, provenance: Provenance) -> dict[str, str]:
    """What makes a submission the same as an earlier one: its inputs, manifest, repository, PR and run."""
    labels = {INPUTS_LABEL: bundle.sha256, "cocktail-manifest": manifest_sha256}
    if provenance.repository:
        labels["repository"] = label_value(provenance.repository)
    if provenance.pr_number is not None:
        labels["pr"] = str(provenance.pr_number)
    run_id = (provenance.run_url or "").rstrip("/").rsplit("/actions/runs/", 1)
    if len(run_id) == 2:
        labels["run-id"] = label_value(run_id[1])
    return labels


@contextmanager
def jobs_errors(what: str, namespace: str) -> Iterator[None]:
    """huggingface_hub's HTTP errors from the Jobs API -> one RemoteError saying what to change."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            raise RemoteError(
                f"Hugging Face Jobs: the token may not {what} in {namespace!r} (HTTP {status}): use a token "
                f"of a member of {namespace!r} allowed to start Jobs there (a fine-grained token with "
                "'Start and manage Jobs'), and a namespace with billing set up"
            ) from None
        raise RemoteError(f"Hugging Face Jobs: could not {what} in {namespace!r}: {error}") from None


class JobClient:
    """The caller's side of one job, in one namespace."""

    def __init__(self, token: str | None, endpoint: str | None, namespace: str | None) -> None:
        from huggingface_hub import HfApi

        self.api: HfApi = HfApi(endpoint=endpoint, token=token)
        if namespace is None:
            with jobs_errors("read the account", "your account"):
                namespace = self.api.whoami()["name"]
        self.namespace: str = namespace

    def find_active(self, labels: dict[str, str]) -> JobInfo | None:
        """A scheduled or running job with these labels: a retried submission follows it instead."""
        return next(iter(self.active(labels)), None)

    def active(self, labels: dict[str, str]) -> list[JobInfo]:
        """The scheduled and running jobs with these labels."""
        with jobs_errors("list jobs", self.namespace):
            return list(
                self.api.list_jobs(labels=labels, status=list(ACTIVE_STAGES), namespace=self.namespace)
            )

    def bundle_location(self, bundle: Bundle) -> tuple[str, str]:
        """(staging repo id, path in it) of a bundle: named by its content."""
        return f"{self.namespace}/{STAGING_REPO}", f"bundles/{bundle.sha256}.zip"

    def stage(self, bundle: Bundle) -> tuple[str, str]:
        """Upload the bundle to the private staging repo (unless it is there); (repo id, path in it)."""
        from cocktail_bot.hub_access import hub_errors

        repo_id, path = self.bundle_location(bundle)
        with hub_errors(repo_id, None, reading=False):
            self.api.create_repo(repo_id, private=True, exist_ok=True)
            if not self.api.file_exists(repo_id, path):
                self.api.upload_file(
                    path_or_fileobj=bundle.data,
                    path_in_repo=path,
                    repo_id=repo_id,
                    commit_message=f"cocktail-bot job bundle {bundle.sha256[:12]}",
                )
        return repo_id, path

    def discard(self, bundle: Bundle, job: JobInfo) -> None:
        """Delete the bundle (the caller's inputs) once ``job`` has ended or was cancelled, for good: the file,
        and its LFS object from the repo's history. Kept while another job started from the same bundle is
        still scheduled or running (that job's caller deletes it). A failure is a warning: the run is done."""
        from cocktail_bot.hub_access import hub_errors

        repo_id, path = self.bundle_location(bundle)
        try:
            if any(other.id != job.id for other in self.active({INPUTS_LABEL: bundle.sha256})):
                return
            with hub_errors(repo_id, None, reading=False):
                if self.api.file_exists(repo_id, path):
                    self.api.delete_file(
                        path, repo_id, commit_message=f"cocktail-bot: job done, bundle {bundle.sha256[:12]}"
                    )
                stored = [item for item in self.api.list_lfs_files(repo_id) if item.file_oid == bundle.sha256]
                if stored:
                    self.api.permanently_delete_lfs_files(repo_id, stored)
        except CocktailError as error:
            logger.warning("could not delete the job's bundle %s from %s: %s", path, repo_id, error)

    def submit(
        self,
        *,
        image: str,
        command: list[str],
        env: dict[str, str],
        secrets: dict[str, str],
        flavor: str,
        timeout: str | None,
        labels: dict[str, str],
    ) -> JobInfo:
        with jobs_errors("start a job", self.namespace):
            return self.api.run_job(
                image=image,
                command=command,
                env=env,
                secrets=secrets,
                flavor=flavor,
                timeout=timeout,
                labels=labels,
                name="cocktail-bot",
                namespace=self.namespace,
            )

    def follow(self, job: JobInfo, show: Callable[[str], None]) -> JobInfo:
        """Stream the job's log into ``show`` until it ends; the final JobInfo. Ctrl-C or SIGTERM (a cancelled
        workflow) cancels the job before it propagates, so no job runs on unwatched."""
        try:
            with jobs_errors("follow the job", self.namespace):
                for line in self.api.fetch_job_logs(job_id=job.id, namespace=self.namespace, follow=True):
                    show(line)
                return self.api.wait_for_job(job.id, namespace=self.namespace, poll_interval=5)
        except KeyboardInterrupt:
            self.cancel(job)
            raise

    def cancel(self, job: JobInfo) -> None:
        try:
            with jobs_errors("cancel the job", self.namespace):
                self.api.cancel_job(job_id=job.id, namespace=self.namespace)
        except RemoteError as error:
            logger.error("%s; cancel it at %s", error, job.url)
            return
        logger.warning("cancelled the Hugging Face job %s", job.url)

    def log_lines(self, job: JobInfo) -> list[str]:
        """The job's whole log as it stands (after the job ended)."""
        with jobs_errors("read the job's log", self.namespace):
            return list(self.api.fetch_job_logs(job_id=job.id, namespace=self.namespace, follow=False))
