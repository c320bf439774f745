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
