"""``cocktail publish DIR --repo ID``: upload a built model folder to the Hub in one commit (or one Hub PR).

The token comes from ``HF_TOKEN`` (or trusted publishing, ``HF_OIDC_RESOURCE``), never from the command line,
where it would show in the shell history and the process list.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="upload a model folder to the Hugging Face Hub",
        description="Upload DIR to a Hub model repo in one commit, creating the repo when missing; identical "
        "files make no commit; the run's report.json and report.md stay local. The token comes from HF_TOKEN "
        "or OIDC trusted publishing (HF_OIDC_RESOURCE).",
    )
    parser.add_argument("folder", type=Path, metavar="DIR", help="the model folder to upload")
    parser.add_argument("--repo", required=True, metavar="ID", help="Hub repo id, org/name")
    parser.add_argument(
        "--private", action="store_true", help="create the repo private (when it does not exist)"
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--revision", metavar="BRANCH", help="branch to commit to (created when missing; main)"
    )
    target.add_argument(
        "--create-pr", action="store_true", help="open a new Hub pull request against main instead"
    )
    target.add_argument(
        "--pr-title",
        metavar="TITLE",
        help="commit to the open Hub pull request titled TITLE that this token's user opened against main "
        "(opened when there is none), so that republishing updates one pull request",
    )
    parser.add_argument(
        "--message", metavar="M", help="commit message (default: 'Publish DIR with cocktail-bot')"
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from cocktail_bot.hub import publish_folder

    message = args.message or f"Publish {args.folder.resolve().name} with cocktail-bot"
    report = publish_folder(
        args.folder,
        args.repo,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        pr_title=args.pr_title,
        commit_message=message,
    )
    if not report.changed:
        print(f"unchanged: {report.repo_id}@{report.revision} already has these files: {report.commit_url}")
    elif report.pr_url:
        verb = "published to" if args.pr_title else "opened"  # --pr-title opens one only the first time
        print(f"{verb} {report.pr_url} ({report.revision}): {report.commit_url}")
    else:
        print(report.commit_url)
    return 0
