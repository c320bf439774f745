"""CPU time of the torch-free commands (`cocktail validate`, `cocktail plan`) against floors measured in the same run.

    python -m bench.bench_cli [--manifest examples/quickstart/cocktail.yml] [--runs 7]

Each command runs ``--runs`` times in a fresh interpreter, interleaved; the table gives the minimum user + system
CPU time of each (``RUSAGE_CHILDREN`` deltas), which a shared, loaded machine inflates least, next to the same
minimum for an empty interpreter, one that imports pydantic and one that also builds a pydantic model (the first
model built imports the rest of pydantic: every command that reads a manifest pays it). The children may write
bytecode, and a first run of each is not counted: an installed package has its ``.pyc`` files (pip compiles them),
while ``PYTHONDONTWRITEBYTECODE=1`` would compile every module of cocktail-bot at each start.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONE_MODEL = "from pydantic import BaseModel\nclass A(BaseModel):\n    x: int = 0\nA(x=1)"
ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def cpu_seconds(command: list[str], cwd: Path) -> float:
    """User + system CPU time of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, cwd=cwd, env=ENV, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="examples/quickstart/cocktail.yml")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    manifest = (ROOT / args.manifest).resolve()
    cocktail = [sys.executable, "-m", "cocktail_bot"]
    commands = {
        "`python -c pass`": [sys.executable, "-c", "pass"],
        "`python -c 'import pydantic'`": [sys.executable, "-c", "import pydantic"],
        "python: pydantic, one model built": [sys.executable, "-c", ONE_MODEL],
        "`cocktail validate`": [*cocktail, "validate", manifest.name],
        "`cocktail plan`": [*cocktail, "plan", manifest.name],
    }
    for command in commands.values():  # bytecode written, files cached
        cpu_seconds(command, manifest.parent)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, command in commands.items():
            times[name].append(cpu_seconds(command, manifest.parent))
    floor = min(times["`python -c pass`"])
    print(f"{args.runs} runs each, {manifest.relative_to(ROOT)}")
    print()
    print("| process | min CPU (s) | median CPU (s) | min - empty interpreter (s) |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in times.items():
        values.sort()
        print(f"| {name} | {values[0]:.3f} | {values[len(values) // 2]:.3f} | {values[0] - floor:.3f} |")


if __name__ == "__main__":
    main()
