"""GitHub Actions workflow commands for messages: ``::error file=F,line=N::`` annotations on the manifest line a
problem is about, ``::warning::`` for warnings and ``::notice::`` for what a run chose not to do.

The runner shows annotations on the pull request's Files tab and in the run's summary, where a plain ``error:``
line in the log is never seen. Escaping follows the Actions toolkit (``@actions/core`` ``command.ts``).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import IO, Literal

Level = Literal["error", "warning", "notice"]
# "cocktail.yml:6: models[1].id: ..." as the manifest checks and the YAML loader word a located problem.
LOCATED = re.compile(r"^(?P<file>[^\s:][^:\n]*):(?P<line>\d+): (?P<message>.+)$")


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(level: Level, message: str, *, file: str | None = None, line: int | None = None) -> str:
    """One workflow command line; a multi-line message stays one annotation."""
    properties = [f"file={escape_property(file)}"] if file else []
    if file and line is not None:
        properties.append(f"line={line}")
    head = f"::{level} {','.join(properties)}" if properties else f"::{level}"
    return f"{head}::{escape_data(message)}"


def error_commands(message: str, *, title: str | None = None) -> list[str]:
    """Each ``FILE:LINE: problem`` line of an error as an annotation on that line; otherwise the whole message.

    ``title`` (the first line of a list of problems, like "cocktail.yml has 2 problems:") is dropped when every
    problem is annotated on its own line.
    """
    located = [LOCATED.match(line) for line in message.splitlines()]
    found = [match for match in located if match]
    if not found:
        return [command("error", message)]
    rest = [line for line, match in zip(message.splitlines(), located, strict=True) if not match]
    if title is not None and rest == [title]:
        rest = []
    lines = [
        command("error", match["message"], file=match["file"], line=int(match["line"])) for match in found
    ]
    return lines + ([command("error", "\n".join(rest))] if rest else [])


def print_error(message: str, stream: IO[str] | None = None) -> None:
    stream = stream or sys.stdout
    first = message.splitlines()[0] if message else ""
    for line in error_commands(message, title=first if first.endswith(":") else None):
        print(line, file=stream, flush=True)


class AnnotationHandler(logging.Handler):
    """Warnings and errors logged during the run as annotations (a traceback, if any, follows as plain text)."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(level=logging.WARNING)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        level: Level = "error" if record.levelno >= logging.ERROR else "warning"
        text = command(level, record.getMessage())
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        print(text, file=self.stream, flush=True)


def annotate_logging(stream: IO[str] | None = None) -> None:
    """Route the root logger's warnings and errors to annotations; info lines stay plain log lines."""
    root = logging.getLogger()
    for handler in root.handlers:
        handler.addFilter(lambda record: record.levelno < logging.WARNING)
    root.addHandler(AnnotationHandler(stream or sys.stdout))
