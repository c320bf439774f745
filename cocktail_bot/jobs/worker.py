"""Inside a Hugging Face job: repeat the caller's run on the bundle's inputs, publish, and print the results
block (the card, lock and report) for the caller to take from the log.

The job publishes as ``cocktail run --publish`` without ``--out`` does: Hub sources read in place, each shard
uploaded as it is written, no copy of the model on the job's disk (about two shards at a time).

The job's command starts it as ``python -m cocktail_bot.jobs.worker`` in the unpacked bundle, with the Hub
token in ``HF_TOKEN`` (a job secret) where ``huggingface_hub`` reads it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from cocktail_bot.errors import CocktailError
from cocktail_bot.jobs.bundle import INPUTS, SPEC, JobSpec
from cocktail_bot.jobs.results import JobResults, encode
from cocktail_bot.lock import RUN_FILES

RUN_FILES_DIR = "run-files"  # the card, lock and report the run leaves, for the results block


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for chatty in ("httpx", "httpx2", "httpcore", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    from cocktail_bot.pipeline import run_manifest

    spec = JobSpec.model_validate_json(Path(SPEC).read_text(encoding="utf-8"))
    inputs = Path(INPUTS).resolve()
    (inputs / ".git").mkdir(exist_ok=True)  # the inputs are the manifest's repository: its paths stay inside
    kept = Path(RUN_FILES_DIR).resolve()
    kept.mkdir(exist_ok=True)
    try:
        run_manifest(
            inputs / spec.manifest,
            None,
            locked=spec.locked,
            publish=True,
            provenance=spec.provenance,
            device=spec.device,
            progress=False,
            create_pr=spec.create_pr,
            pr_title=spec.pr_title,
            run_files=kept,
        )
        results = JobResults(0)
    except CocktailError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        results = JobResults(error.exit_code, str(error))
    for name in sorted(RUN_FILES):
        if (kept / name).is_file():
            results.files[name] = (kept / name).read_text(encoding="utf-8")
    sys.stderr.flush()
    print("\n".join(encode(results)), flush=True)
    return results.exit_code


if __name__ == "__main__":
    sys.exit(main())
