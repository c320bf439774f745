import subprocess
import sys

from cocktail_bot import __version__
from cocktail_bot.cli import main


def test_version_from_console_script_and_module(capsys):
    out = subprocess.run(
        [sys.executable, "-m", "cocktail_bot", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"cocktail-bot {__version__}"


def test_unknown_command_is_a_usage_error(capsys):
    try:
        main(["no-such-command"])
    except SystemExit as exit:
        assert exit.code == 2
    assert "invalid choice" in capsys.readouterr().err
