"""The end of a GitHub pull request's Hub preview: closing the preview pull request it kept open on the Hub.

The preview is found exactly as publishing finds it (``hub.publish_folder`` with ``pr_title``): the open Hub pull
request of that title, opened by the token's own user against the branch. Someone else's pull request, or one
already closed or merged, is never touched.
"""

from __future__ import annotations

from cocktail_bot.hub import own_open_pull_request
from cocktail_bot.hub_access import hub_errors, with_retries

CLOSED_NOTE = "The GitHub pull request {source} was closed without merging: this preview is closed."
MERGED_NOTE = (
    "The GitHub pull request {source} was merged: this preview is closed, and the model is published to "
    "`{branch}` by the run on the default branch."
)


def close_preview(
    repo_id: str,
    pr_title: str,
    *,
    source: str,
    merged: bool,
    branch: str = "main",
    token: str | None = None,
    endpoint: str | None = None,
) -> str | None:
    """Close our open preview titled ``pr_title`` with a note naming ``source``; its URL, or None if none."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = HfApi(endpoint=endpoint, token=token)
    note = (MERGED_NOTE if merged else CLOSED_NOTE).format(source=source, branch=branch)
    with hub_errors(repo_id, branch, reading=False, token=token):
        try:
            pr = with_retries(
                lambda: own_open_pull_request(api, repo_id, branch, pr_title, token),
                f"finding the preview on {repo_id}",
            )
        except RepositoryNotFoundError:
            return None  # never published: nothing to close
        if pr is None:
            return None
        with_retries(
            lambda: api.change_discussion_status(repo_id, pr.num, "closed", comment=note, token=token),
            f"closing {pr.url}",
        )
    return pr.url
