import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from cocktail_bot import __version__
from cocktail_bot.cli import build_parser, main
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


def test_quiet_hides_progress_bars(tiny_llamas, tmp_path):
    """With -q a CI log gets the result line only: no tqdm bars from us, transformers or the Hub client."""
    command = [sys.executable, "-m", "cocktail_bot"]
    mix = ["mix", *map(str, tiny_llamas[:2]), "--weights", "0.5", "0.5", "--type", "decoder"]
    loud = subprocess.run([*command, *mix, "--out", str(tmp_path / "loud")], capture_output=True, text=True)
    quiet = subprocess.run(
        [*command, "-q", *mix, "--out", str(tmp_path / "quiet")], capture_output=True, text=True
    )
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "it/s]" in loud.stderr or "B/s]" in loud.stderr
    assert "it/s]" not in quiet.stderr and "B/s]" not in quiet.stderr


def test_quiet_goes_before_or_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["validate", "cocktail.yml"]).quiet is False
    assert parser.parse_args(["-q", "validate", "cocktail.yml"]).quiet is True
    assert parser.parse_args(["validate", "cocktail.yml", "-q"]).quiet is True
    assert parser.parse_args(["run", "cocktail.yml", "--quiet", "--out", "out"]).quiet is True


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
