"""How a job's results reach the caller: as one framed block at the end of the job's log.

The log is the one channel a job and its caller share that needs no extra token scope (the job's token may only
write the output repo). The block carries the run's small files (card, lock, report) and its outcome, compressed
and base64-encoded in short lines, between a begin line holding the payload's sha256 and an end line; the
caller hides these lines from the log it shows and rejects a block that arrives damaged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

BEGIN = "cocktail-job-results-begin"
END = "cocktail-job-results-end"
LINE_CHARS = 120


@dataclass
class JobResults:
    """The job's outcome: its exit code, the error message of a failed run, and its files by name."""

    exit_code: int
    error: str | None = None
    files: dict[str, str] = field(default_factory=dict)


def encode(results: JobResults) -> list[str]:
    payload = json.dumps(
        {"exit_code": results.exit_code, "error": results.error, "files": results.files}, sort_keys=True
    ).encode()
    text = base64.b64encode(zlib.compress(payload, 9)).decode()
    body = [text[i : i + LINE_CHARS] for i in range(0, len(text), LINE_CHARS)]
    return [f"{BEGIN} {hashlib.sha256(payload).hexdigest()}", *body, END]


class ResultsReader:
    """Feed it the log line by line; it says which lines are the block's and keeps the last whole block."""

    def __init__(self) -> None:
        self.results: JobResults | None = None
        self.damaged = False
        self._digest: str | None = None
        self._body: list[str] = []

    def feed(self, line: str) -> bool:
        """True when ``line`` belongs to the results block (the caller does not show it)."""
        line = line.strip()
        if line.startswith(BEGIN + " "):
            self._digest, self._body = line.split(" ", 1)[1], []
            return True
        if self._digest is None:
            return False
        if line != END:
            self._body.append(line)
            return True
        self.results, self.damaged = self._decode(self._digest, self._body), False
        if self.results is None:
            self.damaged = True
        self._digest = None
        return True

    @staticmethod
    def _decode(digest: str, body: list[str]) -> JobResults | None:
        try:
            payload = zlib.decompress(base64.b64decode("".join(body), validate=True))
        except (ValueError, zlib.error):
            return None
        if hashlib.sha256(payload).hexdigest() != digest:
            return None
        data = json.loads(payload)
        return JobResults(int(data["exit_code"]), data.get("error"), dict(data.get("files") or {}))


def read_results(lines: Iterable[str]) -> JobResults | None:
    reader = ResultsReader()
    for line in lines:
        reader.feed(line)
    return reader.results
