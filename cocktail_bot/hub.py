"""Publishing a model folder to the Hugging Face Hub atomically, idempotently, with retries.

* **Atomic**: the whole folder goes in one ``create_commit`` (LFS objects are uploaded first, then one commit
  references them), so readers of the target revision see the old model or the new one, never a mix. The
  ``huggingface_hub`` client never splits a ``create_commit``; it is limited to 25k LFS files and 1 GB of
  small (non-LFS) files per commit, far above a merged model's handful of shards and configs.
* **Idempotent**: local sha256 (and git blob ids for small files) are compared with the remote's LFS and blob
  ids at the target revision; identical files make no commit (``changed=False``). Remote files the folder no
  longer has (an old shard layout) are deleted in the same commit, so the revision holds exactly the folder.
* **Retries** (:mod:`cocktail_bot.hub_access`, which also turns Hub errors into messages): a retried publish
  recomputes the difference, and the commit is pinned to the parent it was computed against
  (``parent_commit``).
* **One preview PR per key**: with ``pr_title`` the change goes to the OPEN Hub pull request of that exact
  title, opened by the token's own user against the same branch, as a new commit on its ``refs/pr/N``; only
  when there is none is one opened. A preview republished on every push of a GitHub PR so stays one Hub PR
  with one link, and a retry after a lost answer finds the PR it opened instead of opening another.
* **Tokens**: ``token=`` or ``HF_TOKEN``; or keyless OIDC trusted publishing, which ``huggingface_hub``
  performs itself when ``HF_OIDC_RESOURCE`` (the repo id) is set in a GitHub Actions job with ``permissions:
  id-token: write``. Without ``token=``, every call resolves its token anew, so a short-lived OIDC token is
  exchanged again before it expires, however long the upload. A token is never printed, logged or put in a
  report or an error message.
* **No empty repo left behind**: a repo is created only when missing, right before the first upload; when
  the publish then fails, a repo this run created is deleted again (if nothing was committed to it since).
* **Read once**: each file is hashed once (:func:`local_files`); the upload is handed that sha256, so the
  client does not read the file again to hash it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cocktail_bot.errors import CocktailError
from cocktail_bot.hub_access import hub_errors, with_retries
from cocktail_bot.report import PublishReport

if TYPE_CHECKING:
    from huggingface_hub import CommitOperationAdd, DiscussionWithDetails

logger = logging.getLogger(__name__)

# Never uploaded: VCS data, the client's local_dir cache, editor and OS litter.
SKIPPED_PARTS = frozenset({".git", ".cache", "__pycache__", ".DS_Store"})
# What `cocktail run` writes beside the model about this machine's run (local paths, timings): published as
# the card, never as files, whether the folder goes up with `run --publish` or `cocktail publish`.
RUN_REPORTS = frozenset({"report.json", "report.md"})
KEPT_REMOTE = frozenset({".gitattributes"})


@dataclass(frozen=True)
class LocalFile:
    path: Path
    size: int
    sha256: str
    git_blob_id: str


@dataclass(frozen=True)
class UploadedFile:
    """A file handed over before the commit (``stream_publish``), not read from the folder again: ``operation``
    is its ``preupload_lfs_files``'d addition, which the commit only references (the local copy may be gone);
    None when the Hub keeps the file in git, which is then sent with the commit from ``path``."""

    path: Path
    size: int
    sha256: str
    operation: CommitOperationAdd | None


def local_files(folder: Path, skip: Mapping[str, object] | None = None) -> dict[str, LocalFile]:
    """Every file to publish (relative POSIX path -> hashes), reading each file once; ``skip``: names not read."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if (
            not path.is_file()
            or SKIPPED_PARTS.intersection(relative.parts)
            or relative.as_posix() in RUN_REPORTS
            or relative.as_posix() in (skip or {})
        ):
            continue
        size = path.stat().st_size
        sha256, blob = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
        with open(path, "rb") as file:
            while block := file.read(1 << 20):
                sha256.update(block)
                blob.update(block)
        files[relative.as_posix()] = LocalFile(path, size, sha256.hexdigest(), blob.hexdigest())
    return files


def plan_changes(
    local: dict[str, LocalFile], remote: dict[str, tuple[str | None, str | None]]
) -> tuple[list[str], list[str]]:
    """(uploads, deletions) making ``remote`` (path -> (LFS sha256, git blob id)) equal ``local``."""
    upload = [name for name, file in local.items() if name not in remote or not _same(file, *remote[name])]
    delete = sorted(name for name in remote if name not in local and name not in KEPT_REMOTE)
    return upload, delete


def _same(file: LocalFile, lfs_sha256: str | None, blob_id: str | None) -> bool:
    """LFS files carry the content's sha256; small files only their git blob id."""
    return file.sha256 == lfs_sha256 or file.git_blob_id == blob_id


def commit_title(name: str, repository: str | None, commit: str | None) -> str:
    """The Hub commit's title: it names the GitHub commit built (the card does not, see ``card.py``), which
    :func:`published_from` reads back."""
    where = f" from {repository}@{commit[:12]}" if repository and commit else ""
    return f"cocktail-bot: {name}{where}"


def published_from(
    repo_id: str,
    repository: str,
    *,
    revision: str = "main",
    token: str | None = None,
    endpoint: str | None = None,
) -> str | None:
    """The commit of GitHub ``repository`` (its first 12 hex digits) that the newest cocktail-bot commit on
    ``revision`` of ``repo_id`` was built from; None when there is none (or no such repo or revision)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    named = re.compile(rf"^cocktail-bot: .* from {re.escape(repository)}@([0-9a-f]{{12}})$")
    with hub_errors(repo_id, revision, reading=True):
        try:
            commits = with_retries(
                lambda: HfApi(endpoint=endpoint).list_repo_commits(repo_id, revision=revision, token=token),
                what=f"list the commits of {repo_id}",
            )
        except (RepositoryNotFoundError, RevisionNotFoundError):
            return None
    for commit in commits:
        match = named.match(commit.title)
        if match:
            return match.group(1)
    return None


def publish_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    pr_title: str | None = None,
    commit_message: str,
    commit_description: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    uploaded: Mapping[str, UploadedFile] | None = None,
) -> PublishReport:
    """Make ``revision`` (a branch, default ``main``) of ``repo_id`` hold exactly the files of ``folder``, and
    the ``uploaded`` ones (already in storage, see ``stream_publish``: they may be gone from ``folder``).

    Creates the repo (and the branch) when missing. With ``create_pr`` the change is proposed as a new Hub
    pull request against ``revision`` instead. With ``pr_title`` (implies ``create_pr``) it goes to the open
    pull request of that title opened by the token's user against ``revision``, opened with that title when
    there is none. Raises ``RemoteError`` with one actionable message on permanent failures.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not folder.is_dir():
        raise CocktailError(f"{folder} is not a folder: publish a model folder built by cocktail-bot")
    uploaded = uploaded or {}
    local = local_files(folder, skip=uploaded)
    local.update({name: LocalFile(f.path, f.size, f.sha256, "") for name, f in uploaded.items()})
    stored = {name: f.operation for name, f in uploaded.items() if f.operation is not None}
    if not local:
        raise CocktailError(f"{folder} is empty: nothing to publish")
    branch = revision or "main"
    api = HfApi(endpoint=endpoint)
    with hub_errors(repo_id, branch, reading=False, token=token):
        if token is None:
            check_token(repo_id)
        created = create_repo_if_missing(api, repo_id, private=private, token=token)
        try:
            return with_retries(
                lambda: _publish_once(
                    api,
                    local,
                    stored,
                    repo_id,
                    branch,
                    private=private,
                    create_pr=create_pr or pr_title is not None,
                    pr_title=pr_title,
                    message=commit_message,
                    description=commit_description,
                    token=token,
                ),
                f"publishing to {repo_id}",
            )
        except BaseException:
            if created is not None:
                delete_created_repo(api, repo_id, created, token=token)
            raise


def create_repo_if_missing(api, repo_id: str, *, private: bool, token: str | None) -> str | None:
    """Create ``repo_id`` if it does not exist. Returns its head commit (the Hub's initial one) when this call
    created it, None when it was there: only a repo the run created, still at that commit, is deleted again
    when the run fails (:func:`delete_created_repo`), so a failure leaves no empty repo behind."""
    from huggingface_hub.errors import HfHubHTTPError

    if with_retries(lambda: api.repo_exists(repo_id, token=token), f"looking up {repo_id}"):
        return None
    try:
        # exist_ok=False: a repo someone else created since the lookup (or a retry's own first attempt) is
        # theirs to keep, never ours to delete
        with_retries(
            lambda: api.create_repo(repo_id, private=private, exist_ok=False, token=token),
            f"creating {repo_id}",
        )
    except HfHubHTTPError as error:
        if error.response is None or error.response.status_code != 409:
            raise
        return None
    head: str = with_retries(lambda: api.model_info(repo_id, token=token).sha, f"reading {repo_id}")
    logger.info("created %s", repo_id)
    return head


def delete_created_repo(api, repo_id: str, head: str, *, token: str | None) -> None:
    """Delete the repo a failed run created, unless something was committed to it since (``head`` moved).
    Best effort: a failure here is a warning; the run's own error is the one reported."""
    try:
        with hub_errors(repo_id, None, reading=False, token=token):
            now = with_retries(lambda: api.model_info(repo_id, token=token).sha, f"reading {repo_id}")
            if now != head:
                logger.warning("kept %s: created by this run, but it has new commits since", repo_id)
                return
            with_retries(lambda: api.delete_repo(repo_id, token=token), f"deleting {repo_id}")
    except CocktailError as error:
        logger.warning("could not delete %s, created empty by this failed run: %s", repo_id, error)
        return
    logger.info("deleted %s again: created by this run, which published nothing", repo_id)


def check_token(repo_id: str) -> None:
    """Fail early without ``HF_TOKEN``, a stored login or trusted publishing (``HF_OIDC_RESOURCE``); the
    token itself is left to the client, call by call."""
    from huggingface_hub import get_token

    if get_token() is None:
        raise CocktailError(
            f"no Hugging Face token to publish {repo_id}: set HF_TOKEN to a token with write "
            f"access, or use trusted publishing (HF_OIDC_RESOURCE={repo_id} in a GitHub Actions job "
            "with 'permissions: id-token: write')"
        )


def _publish_once(
    api,
    local: dict[str, LocalFile],
    stored: Mapping[str, CommitOperationAdd],
    repo_id: str,
    branch: str,
    *,
    private: bool,
    create_pr: bool,
    pr_title: str | None,
    message: str,
    description: str | None,
    token: str | None,
) -> PublishReport:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import RevisionNotFoundError

    repo_url = f"{api.endpoint}/{repo_id}"  # the repo exists: see create_repo_if_missing
    pr = own_open_pull_request(api, repo_id, branch, pr_title, token) if pr_title is not None else None
    target = pr.git_reference if pr is not None and pr.git_reference else branch
    try:
        info = api.model_info(repo_id, revision=target, files_metadata=True, token=token)
    except RevisionNotFoundError:
        if create_pr:
            raise
        api.create_branch(repo_id, branch=branch, exist_ok=True, token=token)
        info = api.model_info(repo_id, revision=branch, files_metadata=True, token=token)
    if private and not info.private:
        logger.warning(
            "%s already exists and is public: --private only applies when the repo is created", repo_id
        )
    remote = {s.rfilename: (s.lfs.sha256 if s.lfs else None, s.blob_id) for s in info.siblings or []}
    upload, delete = plan_changes(local, remote)
    if not upload and not delete:
        logger.info("%s@%s already holds these %d files: no new commit", repo_id, target, len(local))
        return PublishReport(
            repo_id=repo_id,
            revision=target,
            commit_sha=info.sha,
            repo_url=repo_url,
            commit_url=f"{api.endpoint}/{repo_id}/commit/{info.sha}",
            pr_url=pr.url if pr is not None else None,
            changed=False,
        )
    size = sum(local[name].size for name in upload)
    logger.info(
        "publishing %d changed files (%.1f MB) and %d deletions to %s%s",
        len(upload),
        size / 1e6,
        len(delete),
        repo_id,
        f"@{target}" if pr is not None or not create_pr else " as a new pull request",
    )
    operations: list[CommitOperationAdd | CommitOperationDelete] = []
    for name in upload:
        if name in stored:  # already in the Hub's storage (uploaded while the model was written)
            operations.append(stored[name])
            continue
        addition = CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(local[name].path))
        addition.upload_info.sha256 = bytes.fromhex(local[name].sha256)  # known: not read again to hash
        operations.append(addition)
    operations += [CommitOperationDelete(path_in_repo=name) for name in delete]
    opening = create_pr and pr is None
    if opening and pr_title is not None:
        # The Hub titles a pull request opened by a commit with the commit message, and describes it with the
        # commit description: the title is the key, the description keeps the message.
        description = "\n\n".join(part for part in (message, description) if part)
        message = pr_title
    commit = api.create_commit(
        repo_id,
        operations,
        commit_message=message,
        commit_description=description,
        revision=target,
        create_pr=opening,
        parent_commit=info.sha,
        token=token,
    )
    return PublishReport(
        repo_id=repo_id,
        revision=commit.pr_revision or target,
        commit_sha=commit.oid,
        commit_url=commit.commit_url,
        pr_url=commit.pr_url or (pr.url if pr is not None else None),
        repo_url=repo_url,
        changed=True,
    )


def own_open_pull_request(
    api, repo_id: str, branch: str, title: str, token: str | None
) -> DiscussionWithDetails | None:
    """The oldest open pull request titled ``title`` against ``branch`` that the token's own user opened.

    Someone else's pull request with the same title is never written to, nor a closed or merged one.
    """
    me = api.whoami(token=token, cache=True)["name"]
    candidates = sorted(
        (
            discussion
            for discussion in api.get_repo_discussions(
                repo_id, author=me, discussion_type="pull_request", discussion_status="open", token=token
            )
            if discussion.is_pull_request
            and discussion.status == "open"
            and discussion.author == me
            and discussion.title == title
        ),
        key=lambda discussion: discussion.num,
    )
    for discussion in candidates:
        details = api.get_discussion_details(repo_id, discussion.num, token=token)
        if details.target_branch in (branch, f"refs/heads/{branch}"):
            logger.info("updating %s (%s)", details.url, title)
            return details
    return None
