"""`cocktail plan`'s memory estimate against the peak RSS of the run it plans, and the runtime baseline.

    python -m bench.bench_memory_model [--manifest examples/quickstart/cocktail.yml]

Copies the manifest's folder to a temporary repository (the run writes a lock beside the manifest), plans it,
then runs it in a fresh process and reads that process's peak RSS (``ru_maxrss`` of the child). Also measures a
process that only imports torch, transformers and cocktail-bot's tensor modules. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORTS = "import torch, transformers, cocktail_bot.engine, cocktail_bot.scoring, cocktail_bot.pipeline"


def child_peak(command: list[str], cwd: Path) -> int:
    """Peak RSS in bytes of one child process (Linux reports ru_maxrss in KiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after <= before:
        raise RuntimeError(
            "the child's peak did not exceed an earlier child's: run one measurement per process"
        )
    return after * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="examples/quickstart/cocktail.yml")
    args = parser.parse_args()
    manifest = (ROOT / args.manifest).resolve()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        repo = Path(scratch) / "repo"
        shutil.copytree(manifest.parent, repo)
        (repo / ".git").mkdir()
        planned = subprocess.run(
            [sys.executable, "-m", "cocktail_bot", "plan", "--json", manifest.name],
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
        )
        plan = json.loads(planned.stdout)
        # each measurement in its own bench process, so ru_maxrss of the children is that child's alone
        imports = json.loads(_measure("imports", repo))
        run = json.loads(_measure("run", repo, manifest.name))
    mb = 10**6
    print("| | MB |")
    print("| --- | --- |")
    print(f"| plan: runtime baseline | {plan['memory']['baseline_bytes'] / mb:.0f} |")
    print(f"| plan: merge buffers | {plan['memory']['merge_bytes'] / mb:.1f} |")
    print(f"| plan: scoring | {plan['memory']['scoring_bytes'] / mb:.1f} |")
    print(f"| plan: peak estimate | {plan['peak_memory_bytes'] / mb:.0f} |")
    print(f"| measured: imports only | {imports / mb:.0f} |")
    print(f"| measured: `cocktail run` peak | {run / mb:.0f} |")
    print(f"| estimate / measured | {plan['peak_memory_bytes'] / run:.2f}x |")


def _measure(what: str, repo: Path, manifest: str = "") -> str:
    code = (
        "import json, sys\n"
        "from bench.bench_memory_model import child_peak\n"
        f"what, repo, manifest = {what!r}, {str(repo)!r}, {manifest!r}\n"
        "from pathlib import Path\n"
        f"imports = [sys.executable, '-c', {IMPORTS!r}]\n"
        "out = str(Path(repo).parent / 'out')\n"
        "run = [sys.executable, '-m', 'cocktail_bot', '-q', 'run', manifest, '--out', out, '--force']\n"
        "print(json.dumps(child_peak(imports if what == 'imports' else run, Path(repo))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1]


if __name__ == "__main__":
    main()
