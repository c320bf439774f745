"""`cocktail action`: the GitHub Action's entry point (what action.yml runs); see docs/action.md."""

from __future__ import annotations

import argparse
import os

from cocktail_bot.errors import CocktailError


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
    if os.environ.get("GITHUB_ACTIONS") != "true":
        # Outside a runner there is no event, no step summary and no RUNNER_TEMP: it would only write ./cocktail
        raise CocktailError(
            "cocktail action runs as a step of a GitHub Actions workflow (GITHUB_ACTIONS is not 'true' here); "
            "to build a manifest locally use `cocktail run cocktail.yml --out DIR`. Nothing was written"
        )
    from cocktail_bot.action import run_action

    return run_action(os.environ)
