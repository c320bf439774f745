"""Publishing while the merge writes: each finished shard goes to the Hub's storage at once, then one commit.

``HfApi.preupload_lfs_files`` uploads a file's bytes (by LFS or Xet) without committing: the target revision
does not change and nobody sees the upload. The engine hands each output shard over as soon as its last byte
is written (``engine.merge(on_shard=...)``); it is uploaded on a background thread while the next shard is
merged, then deleted locally unless a local copy is kept. One upload runs at a time and the next finished
shard waits for it, so the local disk holds at most two shards. At the end ``hub.publish_folder`` makes the one
``create_commit`` with the small files and the uploaded shards, so the whole model appears at once. A failure,
Ctrl-C or SIGTERM before that commit leaves the target as it was (storage objects no commit references are the
Hub's to collect); a target repo created for the run (right before the first upload) is deleted again
(``ShardUploader.delete_created_repo``).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from cocktail_bot.errors import CocktailError
from cocktail_bot.hub import UploadedFile, check_token, create_repo_if_missing, delete_created_repo
from cocktail_bot.hub_access import hub_errors, with_retries

if TYPE_CHECKING:
    from huggingface_hub import CommitOperationAdd

logger = logging.getLogger(__name__)


class ShardUploader:
    """``engine.merge``'s ``on_shard``: uploads each finished shard (one at a time) into ``repo_id``'s storage.

    Each shard is moved (or, with ``keep``, hard-linked) into ``folder`` (on the merge's file system) when it is
    handed over, so the upload's file stays put while the engine moves its output folder into place.
    ``keep``: leave the local files (a build with ``--out``, or one evaluated after the merge). A failed upload
    is kept in ``error`` and uploads stop: with ``keep`` the build goes on and lands locally (the publish
    failure is reported); without, the merge stops at the next shard, as there would be nothing to show for it.
    """

    def __init__(
        self,
        repo_id: str,
        folder: Path,
        *,
        private: bool,
        create_pr: bool,
        keep: bool,
        token: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        from huggingface_hub import HfApi

        self.repo_id, self.folder, self.keep = repo_id, folder, keep
        self.uploaded: dict[str, UploadedFile] = {}
        self.error: CocktailError | None = None
        self._private, self._create_pr, self._token = private, create_pr, token
        self._api = HfApi(endpoint=endpoint)
        # a daemon thread: Ctrl-C or SIGTERM ends the process without waiting for an upload (nothing is
        # committed, so the upload is simply lost)
        self._thread: threading.Thread | None = None
        self._crash: BaseException | None = None
        self._ready = False
        self._created: str | None = None  # the head of the repo this run created

    def __call__(self, name: str, path: Path, sha256: str) -> None:
        """Called on the engine's writer thread: waits for the previous upload, which holds the merge back
        when the network is slower than the arithmetic (and bounds the disk), then starts this one."""
        self.wait()
        if self.error is not None:
            if self.keep:
                return
            raise self.error
        self.folder.mkdir(parents=True, exist_ok=True)
        staged = self.folder / name.replace("/", "__")
        if self.keep:
            os.link(path, staged)
        else:
            os.replace(path, staged)
        self._thread = threading.Thread(
            target=self._run, args=(name, staged, sha256), name="cocktail-upload", daemon=True
        )
        self._thread.start()

    def wait(self) -> None:
        """Wait for the upload in flight (a refused upload lands in ``error``; a bug is raised)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._crash is not None:
            raise self._crash

    def _run(self, name: str, staged: Path, sha256: str) -> None:
        try:
            self._upload(name, staged, sha256)
        except BaseException as error:  # raised by wait(), on the caller's thread
            self._crash = error

    def _upload(self, name: str, staged: Path, sha256: str) -> None:
        """Upload ``staged`` (the engine's file, moved or hard-linked here) to the repo's storage."""
        from huggingface_hub import CommitOperationAdd

        size = staged.stat().st_size
        operation = CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(staged))
        operation.upload_info.sha256 = bytes.fromhex(sha256)  # hashed as written: not read again
        try:
            with hub_errors(self.repo_id, None, reading=False, token=self._token):
                self._prepare()
                with_retries(
                    lambda: self._api.preupload_lfs_files(
                        self.repo_id, [operation], create_pr=self._create_pr, token=self._token
                    ),
                    f"uploading {name} to {self.repo_id}",
                )
        except CocktailError as error:
            self.error = error
            return
        stored = _is_stored(operation)
        if stored:
            staged.unlink()
        logger.info("uploaded %s (%.1f MB) to %s's storage", name, size / 1e6, self.repo_id)
        # a file the Hub keeps in git is committed from ``staged``, which stays until the work folder goes
        self.uploaded[name] = UploadedFile(staged, size, sha256, operation if stored else None)

    def _prepare(self) -> None:
        """Before the first upload: the token, and the repo (preupload needs one; creating it empty changes
        no revision anybody reads, and it is deleted again if the run fails)."""
        if self._ready:
            return
        if self._token is None:  # no token fixed for the run: each call resolves it (OIDC is refreshed)
            check_token(self.repo_id)
        self._created = create_repo_if_missing(
            self._api, self.repo_id, private=self._private, token=self._token
        )
        self._ready = True

    def delete_created_repo(self) -> None:
        """The run published nothing: delete the target repo if this run created it (and nobody committed to
        it since), so that a failure leaves no empty repo behind."""
        if self._created is not None:
            delete_created_repo(self._api, self.repo_id, self._created, token=self._token)
            self._created = None


def _is_stored(operation: CommitOperationAdd) -> bool:
    """Uploaded to storage (an LFS or Xet file): the commit only references it. A file the Hub keeps in git
    (small, not matched by .gitattributes) is sent with the commit, so it stays on disk until then."""
    return operation._upload_mode == "lfs"
