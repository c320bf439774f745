"""`cocktail run FILE --out DIR`: build (and optionally publish) the model a manifest describes.

`cocktail run FILE --publish` without `--out` keeps no local copy: Hub sources are read in place and each
shard is uploaded as it is written, so the disk holds about two shards whatever the model's size.
"""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="validate, pin sources, compute weights, merge, evaluate, write the card, lock and report",
    )
    parser.add_argument("manifest", metavar="FILE", help="the cocktail.yml manifest")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="folder for the model, card, lock and report (optional with --publish: without it, no local copy)",
    )
    parser.add_argument(
        "--locked",
        action="store_true",
        help="use the lock's revisions and weights and require a byte-identical output",
    )
    parser.add_argument(
        "--lock",
        metavar="PATH",
        help="lock file to write or, with --locked, read "
        "(default: the manifest's name with .lock, beside it)",
    )
    parser.add_argument(
        "--publish",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="publish to output.repo on the Hub (default: --no-publish)",
    )
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument(
        "--device",
        help="auto, cpu, cuda or cuda:N, for example weights, evaluation and the merge (default: "
        "merge.device; inference auto, merge cpu)",
    )
    parser.add_argument(
        "--on",
        default="local",
        metavar="WHERE",
        help="local (default), or hf-jobs[:FLAVOR] to run on Hugging Face Jobs with runner.hf_jobs's settings "
        "(needs --publish; the job publishes with COCKTAIL_JOB_TOKEN if set, else HF_TOKEN), or auto: there "
        "only when this machine cannot do the run (no GPU for device cuda, too little disk or memory); "
        "see docs/jobs.md",
    )
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from cocktail_bot.jobs.settings import AUTO, HF_JOBS, parse_on

    runner, flavor = parse_on(args.on)
    if runner == AUTO:
        from cocktail_bot.jobs.offload import choose_runner

        runner = choose_runner(
            AUTO, args.manifest, args.out, publishing=args.publish, fork=False, token=None, device=args.device
        )
    common = {
        "locked": args.locked,
        "publish": args.publish,
        "lock_path": args.lock,
        "force": args.force,
        "device": args.device,
    }
    if runner == HF_JOBS:
        from cocktail_bot.jobs.offload import run_on_hf_jobs

        report = run_on_hf_jobs(
            args.manifest, args.out, flavor=flavor, job_token=os.environ.get("COCKTAIL_JOB_TOKEN"), **common
        )
    else:
        from cocktail_bot.pipeline import run_manifest

        report = run_manifest(args.manifest, args.out, progress=args.progress, outside_folders=True, **common)
    assert report.output is not None
    where = f"in {report.output.path}" if args.out else "without a local copy"
    print(f"built {report.name} {where} ({report.output.total_bytes} bytes, {report.seconds:.1f} s)")
    if report.publish is not None:
        print(f"published {report.publish.repo_url} ({report.publish.commit_url or report.publish.revision})")
    return 0
