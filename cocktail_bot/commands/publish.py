"""``cocktail publish DIR --repo ID``: upload a built model folder to the Hub in one commit (or one Hub PR).

The token comes from ``HF_TOKEN`` (or trusted publishing, ``HF_OIDC_RESOURCE``), never from the command line,
where it would show in the shell history and the process list.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cocktail_bot.errors import CocktailError


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


def check_repo_id(repo_id: str) -> None:
    """A malformed --repo is the user's typo: one message before any work, not the Hub client's traceback."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise CocktailError(
            f"--repo {repo_id!r} is not a Hub repo id: write org/name (letters, digits, '-', '_' and '.')"
        ) from None


def handle(args: argparse.Namespace) -> int:
    from cocktail_bot.hub import publish_folder

    check_repo_id(args.repo)
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
