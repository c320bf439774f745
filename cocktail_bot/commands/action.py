"""`cocktail action`: the GitHub Action's entry point (what action.yml runs); see docs/action.md."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "action",
        help="run as the GitHub Action step: build/publish per the event, comment on the PR, write outputs",
        description=(
            "Reads the GitHub Actions environment (GITHUB_EVENT_PATH, GITHUB_EVENT_NAME, GITHUB_REPOSITORY, "
            "GITHUB_API_URL, GITHUB_OUTPUT, GITHUB_STEP_SUMMARY, ...) and the action's inputs as "
            "INPUT_MANIFEST, INPUT_MODE, INPUT_HF_TOKEN, INPUT_GITHUB_TOKEN, INPUT_COMMENT and "
            "INPUT_WORK_DIR."
        ),
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from cocktail_bot.action import run_action

    return run_action(os.environ)
