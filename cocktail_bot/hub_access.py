"""Reaching the Hugging Face Hub: transient failures retried, every ``huggingface_hub`` error turned into one
message that names the repo and the fix. Used by reading (sources, lock) and publishing (hub) alike.

* **Retries**: the client already retries preupload and LFS transfers (429, 5xx, dropped connections); the
  calls it does not retry (revision resolution, repo creation, model info, a commit) go through
  :func:`with_retries` with backoff, waiting at least as long as the Hub asks (``Retry-After``, or the
  ``RateLimit`` headers read by ``huggingface_hub.utils.parse_ratelimit_headers``); a wait longer than
  ``MAX_WAIT_SECONDS`` fails at once, naming it.
* **Tokens**: a call given no token lets ``huggingface_hub`` resolve one for that call (``HF_TOKEN``, the stored
  login, or trusted publishing, whose short-lived token the library exchanges again before it expires).
* **hf_xet**: uploads and downloads through Xet storage raise ``hf_xet`` errors (subclasses of OSError);
  they get the same messages as the HTTP path.
* **Errors**: :func:`hub_errors` wraps a block of Hub calls; a token is never printed, logged or put in a
  message.
"""

from __future__ import annotations

import email.utils
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from cocktail_bot.errors import CocktailError, RemoteError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds to wait before each retry of a transient failure; tests set zeros.
RETRY_DELAYS: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
TRANSIENT_STATUS = frozenset({408, 412, 429, 500, 502, 503, 504})
# The longest wait the Hub may ask for (Retry-After, rate-limit reset) that a run sits out.
MAX_WAIT_SECONDS = 300.0
# What the Hub answers when a trusted publisher's claims do not match the job (RFC 8693 token exchange).
OIDC_REJECTED = (
    "the Hub refused to exchange this job's OIDC token for a token for {resource} ({detail}): the trusted "
    "publisher configured on the Hub repo must match the job's claims: repository (owner/name of the GitHub "
    "repository), workflow (the workflow file's path, e.g. .github/workflows/cocktail.yml), environment (if "
    "the publisher names one, the job must use it) and ref (refs/heads/main for main, refs/pull/* for "
    "previews); see docs/action.md, 'Trusted publishing'"
)


class RepoNotFound(CocktailError):
    """The Hub has no repo of that name, or hides it: ``hidden`` says how (no token, or this token)."""

    def __init__(self, message: str, *, hidden: str) -> None:
        super().__init__(message)
        self.hidden = hidden


class HubUnreachable(RemoteError):
    """The Hub did not answer: a refused connection or an unknown host at once, an outage after the retries;
    ``reason`` names which."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def is_transient(error: BaseException) -> bool:
    """Worth retrying: rate limits, server errors, a moved parent commit, dropped connections and timeouts.

    A connection that could not be opened at all (refused, a host name that does not resolve, no route) is
    not: waiting half a minute would not change it, and the user should hear at once. ``resolve_revision``
    reports a Hub outage as a ``RevisionResolutionError`` caused by it: the cause decides.
    """
    import httpx2

    if isinstance(error, httpx2.ProxyError | httpx2.ConnectError):
        return False
    if isinstance(error, httpx2.TransportError) or _status(error) in TRANSIENT_STATUS:
        return not _is_token_exchange(error)
    if _is_xet(error):  # refused credentials and missing objects are permanent, the rest (network) is not
        return not isinstance(error, (PermissionError, FileNotFoundError))
    from huggingface_hub.errors import RevisionResolutionError

    return (
        isinstance(error, RevisionResolutionError)
        and error.__cause__ is not None
        and is_transient(error.__cause__)
    )


def requested_wait(error: BaseException) -> float | None:
    """Seconds the Hub asked us to wait: ``Retry-After`` (seconds or an HTTP date), else the reset of a used-up
    rate-limit window (``RateLimit: "api";r=0;t=55``)."""
    headers = getattr(getattr(error, "response", None), "headers", None)
    if not headers:
        return None
    value = headers.get("Retry-After")
    if value:
        try:
            return max(float(value), 0.0)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            return max(when.timestamp() - time.time(), 0.0)
    from huggingface_hub.utils import parse_ratelimit_headers

    limit = parse_ratelimit_headers(headers)
    if limit is not None and limit.remaining == 0:
        return float(limit.reset_in_seconds)
    return None


def with_retries(call: Callable[[], T], what: str) -> T:
    """Run ``call``, retrying transient Hub failures after each of ``RETRY_DELAYS`` (or the longer wait the Hub
    asked for); others pass through."""
    for attempt, delay in enumerate((*RETRY_DELAYS, None), start=1):
        try:
            return call()
        except Exception as error:
            if delay is None or not is_transient(error):
                raise
            # resolve_revision wraps the failure that matters (a dropped connection, a 503) as its cause.
            cause = error.__cause__ if error.__cause__ is not None else error
            reason = _status(cause) or type(cause).__name__
            asked = requested_wait(cause)
            if asked is not None and asked > MAX_WAIT_SECONDS:
                raise RemoteError(
                    f"the Hub is rate-limiting {what} (HTTP {reason}) and asks to wait {asked:.0f} s, longer than "
                    f"cocktail-bot waits ({MAX_WAIT_SECONDS:.0f} s): try again later"
                ) from None
            wait = max(delay, asked or 0.0)
            logger.warning(
                "%s failed (%s); retrying in %.0fs [%d/%d]", what, reason, wait, attempt, len(RETRY_DELAYS)
            )
            time.sleep(wait)
    raise AssertionError("unreachable")


@contextmanager
def hub_errors(
    repo_id: str, revision: str | None, *, reading: bool, token: str | None = None
) -> Iterator[None]:
    """Turn ``huggingface_hub`` exceptions into one ``CocktailError``/``RemoteError`` naming repo and fix."""
    from huggingface_hub import errors

    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        yield
    except (
        errors.RevisionResolutionError,
        errors.CachedRepoTreeNotFoundError,
        errors.LocalEntryNotFoundError,
    ) as error:
        if error.__cause__ is not None and is_transient(error.__cause__):
            # Online, the Hub did not answer (after the retries) and the cache had no copy to fall back on.
            raise _unreachable(where, error.__cause__) from None
        raise CocktailError(
            f"{where} is not in the Hugging Face cache and the Hub cannot be used "
            "(HF_HUB_OFFLINE is set or the Hub is unreachable): run once online to cache it, "
            "or unset HF_HUB_OFFLINE"
        ) from None
    except errors.GatedRepoError:
        raise CocktailError(
            f"Hub repo {repo_id} is gated: accept its conditions on the Hub with your account, "
            "then set HF_TOKEN to a token of that account"
        ) from None
    except errors.RepositoryNotFoundError:
        if token is None and not _has_token():
            raise RepoNotFound(
                f"Hub repo {repo_id} was not found, or it is private and no token was given: "
                "check the name, or set HF_TOKEN to a token that can read it",
                hidden="or it is private and no token was given",
            ) from None
        access = "read" if reading else "write to"
        raise RepoNotFound(
            f"Hub repo {repo_id} was not found, or the token cannot {access} it (404): check "
            "the name and that the token's account or organisation has access",
            hidden=f"or the token cannot {access} it",
        ) from None
    except errors.RevisionNotFoundError:
        raise CocktailError(
            f"revision {revision!r} was not found in Hub repo {repo_id}: use an existing "
            "branch, tag or commit sha"
        ) from None
    except errors.RemoteEntryNotFoundError as error:
        name = str(getattr(error.response, "url", "")).rsplit("/resolve/", 1)[-1].split("/", 1)[-1]
        raise CocktailError(f"file {name!r} was not found in Hub repo {where}") from None
    except errors.OIDCError as error:
        raise RemoteError(f"trusted publishing (OIDC) failed: {error}") from None
    except errors.HfHubHTTPError as error:
        if _is_token_exchange(error):
            raise _oidc_rejected(error) from None
        raise _http_error(error, repo_id, where, reading) from None
    except RuntimeError as error:
        # The client wraps a failed LFS transfer (after its retries) as "Error while uploading 'NAME' ...".
        if not isinstance(error.__cause__, errors.HfHubHTTPError):
            raise
        uploading = re.search(r"'(.+)'", str(error))
        during = f"{where} (uploading {uploading.group(1)})" if uploading else where
        raise _http_error(error.__cause__, repo_id, during, reading) from None
    except OSError as error:  # httpx2.TransportError is not an OSError; caught below
        if _is_xet(error):
            raise _xet_error(error, repo_id, where, reading) from None
        raise RemoteError(f"could not use Hub repo {where}: {error}") from None
    except Exception as error:
        import httpx2

        if isinstance(error, httpx2.TransportError):
            raise _unreachable(where, error) from None
        raise


def _is_token_exchange(error: BaseException) -> bool:
    """Whether ``error`` answers the trusted-publishing token exchange (``POST /oauth/token``)."""
    for holder in (getattr(error, "response", None), error):
        try:
            url = str(holder.request.url)  # type: ignore[union-attr]
        except (AttributeError, RuntimeError):  # httpx2 raises RuntimeError for a request it never had
            continue
        return url.split("?")[0].rstrip("/").endswith("/oauth/token")
    return False


def _oidc_rejected(error: BaseException) -> RemoteError:
    """A 400/401 from the token exchange is the trusted publisher's claims not matching: not transient."""
    response = getattr(error, "response", None)
    try:
        body = response.json() if response is not None else {}
    except ValueError:
        body = {}
    detail = body.get("error") or f"HTTP {_status(error)}"
    if body.get("error_description"):
        detail += f": {body['error_description']}"
    resource = os.environ.get("HF_OIDC_RESOURCE") or "the repo"
    return RemoteError(OIDC_REJECTED.format(resource=resource, detail=detail))


def _is_xet(error: BaseException) -> bool:
    return type(error).__module__.split(".")[0] == "hf_xet"


def _xet_error(error: BaseException, repo_id: str, where: str, reading: bool) -> RemoteError:
    """hf_xet's errors, worded like the HTTP path's: refused credentials and missing objects are permanent."""
    name = type(error).__name__
    if isinstance(error, PermissionError):  # hf_xet.XetAuthenticationError
        access = "read" if reading else "write to"
        return RemoteError(
            f"the Hub's Xet storage refused the token for {repo_id} ({name}): use a token that may {access} "
            "it (HF_TOKEN, or trusted publishing with HF_OIDC_RESOURCE)"
        )
    if isinstance(error, FileNotFoundError):  # hf_xet.XetObjectNotFoundError
        return RemoteError(
            f"the Hub's Xet storage has no data for a file of {where} ({name}): the repo changed while it "
            "was read; run again"
        )
    return RemoteError(f"the Hub's Xet storage failed on {where} ({name}: {error}); try again later")


def _unreachable(where: str, error: BaseException) -> HubUnreachable:
    status = _status(error)
    reason = f"HTTP {status}" if status else type(error).__name__
    if reason == "ConnectError":  # which: "Connection refused", "Name or service not known", ...
        reason += ": " + re.sub(r"^\[Errno -?\d+\] ", "", str(error))
    return HubUnreachable(
        f"could not reach the Hub for {where} ({reason}): check the network or HF_ENDPOINT and try again",
        reason=reason,
    )


def _http_error(error: BaseException, repo_id: str, where: str, reading: bool) -> RemoteError:
    status = _status(error)
    namespace = repo_id.split("/")[0]
    if status == 401:
        return RemoteError(
            f"the Hub rejected the token for {repo_id} (401 Unauthorized): set HF_TOKEN to a valid "
            "token (or configure trusted publishing with HF_OIDC_RESOURCE)"
        )
    if status == 403:
        if reading:
            return RemoteError(
                f"the token may not read {repo_id} (403 Forbidden): use a token with read access "
                f"to the {namespace!r} namespace"
            )
        return RemoteError(
            f"the token may not write to {repo_id} (403 Forbidden): use a token with the 'write' "
            f"role, or a fine-grained token with 'Write access to contents/settings of all repos' "
            f"under the {namespace!r} namespace"
        )
    if status == 404:
        return RemoteError(
            f"Hub repo {repo_id} was not found, or the token cannot see it (404): check the repo "
            "id and the token's namespace"
        )
    server = getattr(getattr(error, "response", None), "headers", {}).get("X-Error-Message")
    detail = f": {server}" if server else ""
    return RemoteError(f"the Hub failed on {where} (HTTP {status}){detail}; try again later")


def _has_token() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None
