"""What a run produced, as data: the one structure that the model card, the PR comment, the job summary,
``report.json`` and ``report.md`` are all rendered from.

Kept free of I/O and of torch so that every renderer (and the tests) can build one by hand.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cocktail_bot.records import MergedStep, PinnedSource, Record


class SourceReport(PinnedSource):
    """One input model, pinned, with the folder the merge read."""

    path: str = Field(description="local folder the merge read")
    license: str | None = None

    @property
    def url(self) -> str | None:
        """Link to the source at its pinned revision, for cards and comments."""
        if self.repo_id is None:
            return None
        revision = self.resolved_revision or self.requested_revision or "main"
        return f"https://huggingface.co/{self.repo_id}/tree/{revision}"


class StepReport(MergedStep):
    """One merge step: which models, which weights and why."""

    weights_mode: Literal["explicit", "uniform", "examples", "unused"]
    examples: str | None = Field(None, description="example file the weights were computed from")
    temperature: float | None = None
    base: str | None = Field(
        None, description="label of the model that config, tokenizer and modules come from"
    )
    dtype: str
    seconds: float = 0.0


class EvalResult(Record):
    """One model on one example set: the paper's 'target task vs other tasks' table, on the user's data."""

    eval_set: str
    model: str = Field(description="a source label, or 'merged'")
    loss: float
    accuracy: float | None = Field(None, description="top-1 accuracy for encoders and rerankers")
    examples: int
    dtype: str | None = Field(None, description="dtype the loss was computed in")


class OutputReport(Record):
    path: str
    files: dict[str, str] = Field(default_factory=dict, description="file name -> sha256")
    total_bytes: int = 0
    dtype: str | None = None


class PublishReport(Record):
    repo_id: str
    revision: str = Field(description="branch, or the Hub PR ref (refs/pr/N) of a preview")
    commit_sha: str | None = None
    commit_url: str | None = None
    pr_url: str | None = Field(None, description="Hub pull request of a preview")
    repo_url: str
    changed: bool = Field(
        True, description="False when identical files were already there and no commit was made"
    )


class Provenance(Record):
    """Where the model was built, from the GitHub environment when there is one."""

    repository: str | None = None
    commit: str | None = None
    ref: str | None = None
    pr_number: int | None = None
    run_url: str | None = None
    server_url: str = "https://github.com"

    @property
    def commit_url(self) -> str | None:
        if self.repository and self.commit:
            return f"{self.server_url}/{self.repository}/commit/{self.commit}"
        return None

    @property
    def pr_url(self) -> str | None:
        if self.repository and self.pr_number is not None:
            return f"{self.server_url}/{self.repository}/pull/{self.pr_number}"
        return None


class Report(Record):
    """Everything a reader of the card or the PR comment is shown."""

    status: Literal["success", "failure", "planned"] = "success"
    error: str | None = Field(None, description="the user-facing message when status is failure")
    name: str
    model_type: Literal["decoder", "encoder", "reranker"]
    tool_version: str
    manifest_path: str
    manifest_sha256: str
    manifest_text: str
    sources: list[SourceReport] = Field(default_factory=list)
    steps: list[StepReport] = Field(default_factory=list)
    evals: list[EvalResult] = Field(default_factory=list)
    output: OutputReport | None = None
    license: str | None = None
    pipeline_tag: str | None = None
    library_name: str | None = None
    seconds: float = 0.0
    peak_rss_bytes: int | None = None
    publish: PublishReport | None = None
    provenance: Provenance = Field(default_factory=Provenance)
    reproduce: str | None = Field(None, description="the exact command that rebuilds the model")
