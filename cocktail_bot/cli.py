"""The ``cocktail`` command: parses arguments, dispatches to one module per subcommand, turns errors into messages.

Each module in :mod:`cocktail_bot.commands` registers its own subcommand and imports heavy libraries (torch,
transformers) only inside its handler, so ``cocktail --version`` and ``--help`` start fast and a command loads only
what it uses (``validate`` and ``plan`` never load torch: tests/test_architecture.py checks it).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from cocktail_bot import __version__, preload
from cocktail_bot.errors import ONCE, CocktailError

COMMANDS = (
    "mix",
    "weights",
    "validate",
    "schema",
    "import-mergekit",
    "plan",
    "run",
    "update",
    "verify",
    "publish",
    "action",
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``cocktail`` parser with every subcommand, or only ``command``'s when it names one: a command does
    not import and build the other ten (``plan`` must start fast; ``--help`` and a mistyped command get all)."""
    parser = argparse.ArgumentParser(
        prog="cocktail",
        description="Merge language models LM-Cocktail style, from a cocktail.yml manifest or the command line.",
    )
    parser.add_argument("--version", action="version", version=f"cocktail-bot {__version__}")
    quiet = "only warnings and errors, no progress bars"
    parser.add_argument("-q", "--quiet", action="store_true", help=quiet)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in (command,) if command in COMMANDS else COMMANDS:
        module = importlib.import_module(f"cocktail_bot.commands.{name.replace('-', '_')}")
        module.register(subparsers)
    for subparser in subparsers.choices.values():
        # `cocktail run x.yml -q` too; SUPPRESS keeps a -q given before the command when this one is absent.
        subparser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=quiet)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the command is the first word that is not an option (the options before it take no value)
    parser = build_parser(next((word for word in argv if not word.startswith("-")), None))
    args = parser.parse_args(argv)
    # Bars redraw a line in a terminal; in a CI log or a file each redraw is another line of noise.
    args.progress = not args.quiet and sys.stderr.isatty()
    if not args.progress:
        # Read when transformers and huggingface_hub are imported (later, in the handler): their bars go too.
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LevelPrefix())
    handler.addFilter(OnceFilter())
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, handlers=[handler])
    # One line per HTTP request drowns the messages a user acts on; their failures surface as our errors.
    for chatty in ("httpx", "httpx2", "httpcore", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.handler(args) or 0)
    except CocktailError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except Terminated:
        print("terminated: nothing was written to the output path or published", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted: nothing was written to the output path or published", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def console() -> NoReturn:
    """The ``cocktail`` process: ``main``, then an exit without the interpreter's final garbage collections,
    which walk every object torch and transformers made (about 0.9 s on a 2-core machine) only to free memory
    the operating system takes back at once. atexit handlers and flushing run as usual."""
    code = main()
    preload.finish()
    gc.freeze()
    sys.exit(code)


class LevelPrefix(logging.Formatter):
    """Progress lines as they are; warnings and errors say so (``warning: ...``), so that a warning does not
    read as the failure and an error does not read as progress."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.ERROR:
            return f"error: {text}"
        return f"warning: {text}" if record.levelno >= logging.WARNING else text


class OnceFilter(logging.Filter):
    """Drops the repeats of a record marked ``ONCE`` (the same message), for the life of the command."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, ONCE, False):
            return True
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a cancelled CI job, ``docker stop``) unwinds like Ctrl-C, so the clean-up
    that removes partial outputs and work folders runs instead of the process dying on the spot."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()
