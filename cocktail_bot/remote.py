"""Hub weight files read in place by HTTP range requests at a pinned commit, never downloaded whole.

A merge reads every tensor of a source once, and (tensors stored in name order, read in name order) in the
order the file stores them. So each file is one streamed ranged GET from where the reader is to the end,
through ``huggingface_hub``'s HTTP session (its headers, redirects to the storage, retries on 429/5xx): adjacent
tensors come in one request, and a thread per file reads a bounded window ahead, so the network overlaps the
arithmetic. Every byte that streams by is hashed in order; when the stream reaches the end of the file its
sha256 must equal the pinned LFS sha256, and ``verify`` (which the engine calls before it finishes) reads any
tail no tensor needed. A connection dropped mid-stream is resumed from the byte where it stopped. A read behind
the stream (a tensor read twice, or out of file order) is one more ranged GET of just that tensor.

This module is free of torch: it moves bytes into buffers; ``checkpoint.RemoteCheckpoint`` maps tensors to
byte ranges.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cocktail_bot.errors import CocktailError, RemoteError

logger = logging.getLogger(__name__)

WINDOW_BYTES = 32 * 2**20  # read ahead of the merge, per file


@dataclass(frozen=True)
class HubModel:
    """A Hub model at a pinned commit: its small files (config, tokenizer, modules) downloaded into
    ``folder``; its safetensors weights (path in the repo -> (size, LFS sha256)) read from the Hub."""

    folder: Path
    repo_id: str
    revision: str  # the commit sha
    weights: dict[str, tuple[int, str]]
    endpoint: str | None = None
    token: str | None = field(default=None, repr=False)

    @property
    def total_bytes(self) -> int:
        return sum(size for size, _ in self.weights.values())

    def __str__(self) -> str:  # how messages name it (the repr would list every weight file)
        return f"{self.repo_id}@{self.revision[:12]}"


class _Stopped(Exception):
    """The file was closed while its stream was running."""


class RemoteFile:
    """One weight file, readable at any offset, streamed and hashed in order (see the module docstring).

    ``data_start`` (8 + the header length, known from the parsed header) is checked against the file's first
    8 bytes as they stream by.
    """

    def __init__(self, model: HubModel, name: str, data_start: int | None = None) -> None:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        self.name = name
        self.size, self.sha256 = model.weights[name]
        self.label = f"{model.repo_id}@{model.revision[:12]}: {name}"
        self.data_start = data_start
        self.extra_bytes = 0  # fetched a second time, behind the stream
        self._url = hf_hub_url(model.repo_id, name, revision=model.revision, endpoint=model.endpoint)
        self._headers = build_hf_headers(token=model.token)
        self._cond = threading.Condition()
        self._pieces: deque[tuple[int, memoryview]] = deque()  # streamed bytes not yet read, by offset
        self._buffered = 0
        self._produced = 0  # bytes streamed (and hashed) so far
        self._checked = False  # the whole file streamed and its sha256 matched
        self._wanted = 0  # where the reader is: bytes before it are dropped as they arrive
        self._hash = hashlib.sha256()
        self._prefix = b""
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- reading ---------------------------------------------------------------------------------------------

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the file's bytes from ``offset``."""
        if offset < 0 or offset + len(view) > self.size:
            raise CocktailError(f"{self.label}: bytes {offset}..{offset + len(view)} are outside the file")
        if not len(view):
            return
        with self._cond:
            self._raise_if_failed()
            front = self._pieces[0][0] if self._pieces else self._produced
            behind = offset < max(front, self._wanted)  # dropped already, or about to be
            if not behind:
                self._start()
                self._advance(offset)
        if behind:
            self._fetch(offset, view)
            return
        done = 0
        while done < len(view):
            with self._cond:
                while not self._pieces and self._error is None and not self._closed:
                    self._cond.wait()
                self._raise_if_failed()
                start, data = self._pieces[0]
                count = min(len(data) - (offset + done - start), len(view) - done)
                skip = offset + done - start
                view[done : done + count] = data[skip : skip + count]
                done += count
                self._advance(offset + done)

    def verify(self) -> None:
        """Stream what no read needed and check the whole file's sha256; raise if it does not match."""
        with self._cond:
            self._start()
            self._advance(self.size)
            while not self._checked and self._error is None and not self._closed:
                self._cond.wait()
            self._raise_if_failed()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._pieces.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- the stream ------------------------------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise CocktailError(f"{self.label} was closed")

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="cocktail-range", daemon=True)
            self._thread.start()

    def _advance(self, offset: int) -> None:
        """The reader is at ``offset``: drop what lies before it, let the stream fill the window again."""
        self._wanted = max(self._wanted, offset)
        while self._pieces and self._pieces[0][0] + len(self._pieces[0][1]) <= self._wanted:
            self._buffered -= len(self._pieces.popleft()[1])
        if self._pieces and self._pieces[0][0] < self._wanted:
            start, data = self._pieces.popleft()
            cut = self._wanted - start
            self._pieces.appendleft((self._wanted, data[cut:]))
            self._buffered -= cut
        self._cond.notify_all()

    def _produce(self) -> None:
        try:
            stream_range(self._url, self._headers, self.label, 0, self.size, self._accept)
            digest = self._hash.hexdigest()
            if digest != self.sha256:
                raise CocktailError(
                    f"{self.label} does not match its pinned sha256 (expected {self.sha256}, read {digest}): "
                    "the Hub or the network delivered other bytes; nothing was published, try again",
                    exit_code=1,
                )
            with self._cond:
                self._checked = True
                self._cond.notify_all()
        except _Stopped:
            return
        except BaseException as error:  # handed to the reader, which raises it on its thread
            with self._cond:
                self._error = error
                self._cond.notify_all()

    def _accept(self, piece: bytes) -> None:
        self._hash.update(piece)
        if len(self._prefix) < 8:
            self._prefix += piece[: 8 - len(self._prefix)]
            if len(self._prefix) == 8 and self.data_start is not None:
                (length,) = struct.unpack("<Q", self._prefix)
                if 8 + length != self.data_start:
                    raise CocktailError(
                        f"{self.label}: its header is {length} bytes but its tensors start at byte "
                        f"{self.data_start}: the file is not a valid safetensors file",
                        exit_code=1,
                    )
        with self._cond:
            if self._closed:
                raise _Stopped
            start = self._produced
            self._produced += len(piece)
            keep = max(0, self._wanted - start)
            if keep < len(piece):
                self._pieces.append((start + keep, memoryview(piece)[keep:]))
                self._buffered += len(piece) - keep
            self._cond.notify_all()
            while self._buffered >= WINDOW_BYTES and not self._closed:
                self._cond.wait()

    def _fetch(self, offset: int, view: memoryview) -> None:
        """A range behind the stream (already hashed): one ranged GET of just those bytes."""
        filled = 0

        def sink(piece: bytes) -> None:
            nonlocal filled
            view[filled : filled + len(piece)] = piece
            filled += len(piece)

        stream_range(self._url, self._headers, self.label, offset, offset + len(view), sink)
        self.extra_bytes += len(view)


def stream_range(
    url: str, headers: dict[str, str], label: str, start: int, end: int, sink: Callable[[bytes], None]
) -> None:
    """Stream bytes ``[start, end)`` of ``url`` into ``sink`` piece by piece, in order.

    Uses ``huggingface_hub``'s shared HTTP session (its headers and event hooks; redirects to the storage are
    followed without the token). 429, 5xx and a connection that fails or drops while the body streams are
    retried after each of ``hub_access.RETRY_DELAYS``, from the first byte not yet received (each piece that arrives
    resets the count); other statuses raise at once.
    """
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session, hf_raise_for_status

    from cocktail_bot import hub_access

    position, failures = start, 0
    while position < end:
        try:
            with get_session().stream(
                "GET",
                url,
                headers={**headers, "Range": f"bytes={position}-{end - 1}"},
                timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
            ) as response:
                if response.status_code in hub_access.TRANSIENT_STATUS:
                    raise _Transient(f"HTTP {response.status_code}")
                if response.status_code >= 400:
                    response.read()  # the error's message is in the body
                    hf_raise_for_status(response)
                _check_range(response, label, position, end)
                for piece in response.iter_bytes():  # as received: a drop loses no byte that arrived
                    if len(piece) > end - position:  # (a server sending more than asked; no copy otherwise)
                        piece = piece[: end - position]
                    sink(piece)
                    position += len(piece)
                    failures = 0
                    if position >= end:
                        break
            if position < end:
                raise _Transient("the server closed the response early")
        except (httpx2.TransportError, OSError, _Transient) as error:
            if failures >= len(hub_access.RETRY_DELAYS):
                raise RemoteError(
                    f"reading {label} from the Hub failed at byte {position} ({error or type(error).__name__}) "
                    f"after {failures} retries: check the network and try again"
                ) from None
            delay = hub_access.RETRY_DELAYS[failures]
            failures += 1
            logger.warning(
                "reading %s: failed at byte %d (%s); resuming there in %.0fs",
                label,
                position,
                error or type(error).__name__,
                delay,
            )
            time.sleep(delay)
        except Exception as error:
            from huggingface_hub.errors import HfHubHTTPError

            if not isinstance(error, HfHubHTTPError):
                raise
            raise RemoteError(
                f"the Hub refused to serve {label} (HTTP {getattr(error.response, 'status_code', '?')}): "
                "check that the revision still exists and the token can read the repo"
            ) from None


class _Transient(Exception):
    """A rate limit, a server error or a short body: worth asking again."""


def _check_range(response, label: str, start: int, end: int) -> None:
    """A 206 for exactly the bytes asked for (a 200 is only right when the whole file was asked for)."""
    if response.status_code == 206:
        got = response.headers.get("Content-Range", "")
        if got.startswith(f"bytes {start}-"):
            return
        raise RemoteError(f"the Hub answered bytes {got!r} of {label} when asked for {start}..{end - 1}")
    if response.status_code == 200 and start == 0:
        return
    raise RemoteError(
        f"the Hub ignored a range request for {label} (HTTP {response.status_code}): try again later"
    )
