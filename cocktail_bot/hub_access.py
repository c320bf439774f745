"""Reaching the Hugging Face Hub: transient failures retried, every ``huggingface_hub`` error turned into one
message that names the repo and the fix. Used by reading (sources, lock) and publishing (hub) alike.

* **Retries**: the client already retries preupload and LFS transfers (429, 5xx, dropped connections); the
  calls it does not retry (revision resolution, repo creation, model info, a commit) go through
  :func:`with_retries` with backoff.
* **Errors**: :func:`hub_errors` wraps a block of Hub calls; a token is never printed, logged or put in a
  message.
"""

from __future__ import annotations

import logging
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


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def is_transient(error: BaseException) -> bool:
    """Worth retrying: rate limits, server errors, a moved parent commit, dropped connections and timeouts.

    ``resolve_revision`` reports a Hub outage as a ``RevisionResolutionError`` caused by it: the cause
    decides.
    """
    import httpx2

    if isinstance(error, httpx2.ProxyError):
        return False
    if isinstance(error, httpx2.TransportError) or _status(error) in TRANSIENT_STATUS:
        return True
    from huggingface_hub.errors import RevisionResolutionError

    return (
        isinstance(error, RevisionResolutionError)
        and error.__cause__ is not None
        and is_transient(error.__cause__)
    )


def with_retries(call: Callable[[], T], what: str) -> T:
    """Run ``call``, retrying transient Hub failures after each of ``RETRY_DELAYS``; others pass through."""
    for attempt, delay in enumerate((*RETRY_DELAYS, None), start=1):
        try:
            return call()
        except Exception as error:
            if delay is None or not is_transient(error):
                raise
            # resolve_revision wraps the failure that matters (a dropped connection, a 503) as its cause.
            cause = error.__cause__ if error.__cause__ is not None else error
            reason = _status(cause) or type(cause).__name__
            logger.warning(
                "%s failed (%s); retrying in %.0fs [%d/%d]", what, reason, delay, attempt, len(RETRY_DELAYS)
            )
            time.sleep(delay)
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
            raise CocktailError(
                f"Hub repo {repo_id} was not found, or it is private and no token was given: "
                "check the name, or set HF_TOKEN to a token that can read it"
            ) from None
        access = "read" if reading else "write to"
        raise CocktailError(
            f"Hub repo {repo_id} was not found, or the token cannot {access} it (404): check "
            "the name and that the token's account or organisation has access"
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
        raise _http_error(error, repo_id, where, reading) from None
    except RuntimeError as error:
        # The client wraps a failed LFS transfer (after its retries) as "Error while uploading 'NAME' ...".
        if not isinstance(error.__cause__, errors.HfHubHTTPError):
            raise
        uploading = re.search(r"'(.+)'", str(error))
        during = f"{where} (uploading {uploading.group(1)})" if uploading else where
        raise _http_error(error.__cause__, repo_id, during, reading) from None
    except OSError as error:  # httpx2.TransportError is not an OSError; caught below
        raise RemoteError(f"could not use Hub repo {where}: {error}") from None
    except Exception as error:
        import httpx2

        if isinstance(error, httpx2.TransportError):
            raise _unreachable(where, error) from None
        raise


def _unreachable(where: str, error: BaseException) -> RemoteError:
    status = _status(error)
    reason = f"HTTP {status}" if status else type(error).__name__
    return RemoteError(
        f"could not reach the Hub for {where} ({reason}): check the network or HF_ENDPOINT and try again"
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
