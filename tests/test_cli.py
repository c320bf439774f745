import argparse
import fcntl
import os
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from cocktail_bot import __version__
from cocktail_bot.cli import COMMANDS, build_parser, main
from cocktail_bot.commands import validate


def test_version_from_console_script_and_module(capsys):
    out = subprocess.run(
        [sys.executable, "-m", "cocktail_bot", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"cocktail-bot {__version__}"


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["no-such-command"])
    assert exit.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def run_in_terminal(command: list[str]) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal, as a person at a shell sees it."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a size, so bars draw
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(), b"".join(chunks).decode(errors="replace")


def test_progress_bars_only_in_a_terminal_and_never_with_quiet(tiny_llamas, tmp_path):
    """A terminal gets tqdm bars; a CI log (stderr not a terminal) and -q get the result line only: no bars
    from us, transformers or the Hub client."""
    command = [sys.executable, "-m", "cocktail_bot"]
    mix = ["mix", *map(str, tiny_llamas[:2]), "--weights", "0.5", "0.5", "--type", "decoder"]
    status, terminal = run_in_terminal([*command, *mix, "--out", str(tmp_path / "terminal")])
    log = subprocess.run([*command, *mix, "--out", str(tmp_path / "log")], capture_output=True, text=True)
    quiet_status, quiet = run_in_terminal([*command, "-q", *mix, "--out", str(tmp_path / "quiet")])
    assert status == log.returncode == quiet_status == 0, terminal + log.stderr + quiet
    assert "it/s]" in terminal or "B/s]" in terminal
    for text in (log.stderr, quiet):
        assert "it/s]" not in text and "B/s]" not in text and "%|" not in text
    assert "wrote" in log.stdout


def test_quiet_goes_before_or_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["validate", "cocktail.yml"]).quiet is False
    assert parser.parse_args(["-q", "validate", "cocktail.yml"]).quiet is True
    assert parser.parse_args(["validate", "cocktail.yml", "-q"]).quiet is True
    assert parser.parse_args(["run", "cocktail.yml", "--quiet", "--out", "out"]).quiet is True


def test_a_command_builds_only_its_own_parser_and_help_lists_every_command(capsys):
    """`cocktail plan` does not import and build the other subcommands (it must start fast); `--help` and a
    mistyped command still see them all."""
    subcommands = next(a for a in build_parser("plan")._actions if isinstance(a, argparse._SubParsersAction))
    assert list(subcommands.choices) == ["plan"]
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    assert all(f"    {name}" in listed for name in COMMANDS)
    with pytest.raises(SystemExit):
        main(["-q", "plann", "cocktail.yml"])
    assert "'import-mergekit', 'plan', 'run'" in capsys.readouterr().err


def test_sigterm_unwinds_like_ctrl_c_so_work_folders_are_removed(monkeypatch, tmp_path, capsys):
    work = tmp_path / ".out.partial"

    def handle(args):
        work.mkdir()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # not reached: the signal handler raises first
        finally:
            shutil.rmtree(work)
        return 0

    monkeypatch.setattr(validate, "handle", handle)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["validate", "cocktail.yml"]) == 143
    assert not work.exists()
    assert capsys.readouterr().err == "terminated: nothing was written to the output path or published\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_action_outside_github_actions_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["action"]) == 2
    assert capsys.readouterr().err == (
        "error: cocktail action runs as a step of a GitHub Actions workflow (GITHUB_ACTIONS is not 'true' "
        "here); to build a manifest locally use `cocktail run cocktail.yml --out DIR`. Nothing was written\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_warnings_say_so_and_notes_marked_once_show_once():
    import logging

    from cocktail_bot.cli import LevelPrefix, OnceFilter
    from cocktail_bot.errors import ONCE

    def record(level: int, message: str, **extra) -> logging.LogRecord:
        return logging.makeLogRecord(
            {"levelno": level, "levelname": logging.getLevelName(level), "msg": message, **extra}
        )

    formatter = LevelPrefix()
    assert formatter.format(record(logging.WARNING, "no license")) == "warning: no license"
    assert formatter.format(record(logging.ERROR, "failed")) == "error: failed"
    assert formatter.format(record(logging.INFO, "merging")) == "merging"
    once = OnceFilter()
    shown = [
        once.filter(record(logging.INFO, text, **{ONCE: True})) for text in ("capped", "capped", "other")
    ]
    assert shown == [True, False, True]
    assert once.filter(record(logging.INFO, "step")) and once.filter(record(logging.INFO, "step"))
