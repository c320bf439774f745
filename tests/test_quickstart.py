"""The README's first command on a fresh clone: it reproduces the committed lock byte for byte."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from cocktail_bot.cli import main
from cocktail_bot.weights import rounded_weights

REPOSITORY = Path(__file__).resolve().parent.parent
QUICKSTART = Path("examples") / "quickstart"


def test_the_quickstart_reproduces_its_committed_lock(tmp_path: Path, capsys) -> None:
    clone = tmp_path / "clone"
    (clone / ".git").mkdir(parents=True)
    shutil.copytree(REPOSITORY / QUICKSTART, clone / QUICKSTART)
    committed = (REPOSITORY / QUICKSTART / "cocktail.lock").read_bytes()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cocktail_bot",
            "run",
            str(QUICKSTART / "cocktail.yml"),
            "--out",
            "quickstart-out",
        ],
        cwd=clone,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert (clone / QUICKSTART / "cocktail.lock").read_bytes() == committed
    assert (
        main(
            [
                "verify",
                str(clone / "quickstart-out"),
                "--lock",
                str(REPOSITORY / QUICKSTART / "cocktail.lock"),
            ]
        )
        == 0
    )
    # the log a user reads: the manifest's names, no temporary paths, sizes in their unit, each note once
    lines = [line.split("\r")[-1] for line in done.stderr.splitlines()]
    assert "merging 3 models (float32, 172.7 kB of tensors, linear)" in lines
    assert "./models/general on examples: loss 0.843319" in done.stderr  # may follow a progress bar
    models = str(clone / QUICKSTART / "models")
    assert [line for line in lines if "cocktail-work" in line or models in line] == []
    assert len([line for line in lines if line.startswith("inputs are capped at 128 tokens")]) == 1


def test_losses_a_few_ulps_apart_give_the_same_weights() -> None:
    """The quickstart's losses as another CPU computes them (around the 8th digit) give the same weights."""
    here = [0.8433186809221903, 0.17338867237170538, 5.601208527882894]
    there = [0.8433186824221907, 0.17338867437170531, 5.601208517882891]
    rounded = [[round(loss, 4) for loss in losses] for losses in (here, there)]
    assert rounded[0] == rounded[1]
    assert rounded_weights(rounded[0], 1.0) == rounded_weights(rounded[1], 1.0) == [0.3375, 0.6596, 0.0029]


def test_the_readme_offers_the_cpu_build_of_torch_before_installing() -> None:
    readme = (REPOSITORY / "README.md").read_text()
    cpu = readme.index("pip install torch --index-url https://download.pytorch.org/whl/cpu")
    assert cpu < readme.index("pip install -e .")
    assert "CUDA" in readme[:cpu] and "--device cuda" in readme[:cpu]
