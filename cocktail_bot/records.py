"""The one pinned-source model and the one step model that resolution, the lock, the plan and the report extend.

Each stage adds its own fields by subclassing (a lock adds nothing to a source, a report adds the folder and
the license, a plan adds byte counts); :meth:`PinnedSource.pinned` and :meth:`MergedStep.merged` hand the
shared fields to the next stage's model, so no stage copies them field by field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    """The base of the records a run passes between stages and writes (sources, steps, report, lock, plan).

    Their validators are built when a model is first used (``defer_build``), not when its module is imported:
    a command imports the models of every stage it might reach, and `cocktail plan`, for one, must start fast
    without the report's and the lock's.
    """

    model_config = ConfigDict(defer_build=True)


class PinnedSource(Record):
    """One input model pinned to an exact revision, with the sha256 of each file a merge reads."""

    label: str = Field(
        description="how the manifest names it: 'org/name', 'org/name@rev', './path' or 'step:NAME'"
    )
    repo_id: str | None = Field(None, description="Hub repo id; None for local folders and step outputs")
    requested_revision: str | None = None
    resolved_revision: str | None = Field(None, description="commit sha the revision resolved to")
    files: dict[str, str] = Field(default_factory=dict, description="file name -> sha256")

    def pinned(self) -> dict[str, Any]:
        """The shared fields, to build another stage's model: ``LockedSource(**source.pinned())``."""
        return {name: getattr(self, name) for name in PinnedSource.model_fields}


class StepRecord(Record):
    """One merge step as every stage names it."""

    name: str
    models: list[str] = Field(description="labels of the step's sources, in order ('step:NAME' for a step's)")
    method: str = "linear"
    method_params: dict[str, Any] = Field(
        default_factory=dict,
        description="each parameter's setting: a value, a per-layer list or filtered values",
    )
    model_params: list[dict[str, Any] | None] | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="each model's own per-model parameter settings, when any model sets some",
    )


class MergedStep(StepRecord):
    """A step with the weights it merged with (and the losses they came from)."""

    weights_mode: str
    weights: list[float | list[Any]] = Field(
        description="one per model: a number, or a per-layer list / filtered values as the manifest gives them"
    )
    losses: list[float] | None = Field(
        None, description="example losses per model, when weights came from examples"
    )
    loss_dtype: str | None = Field(None, description="dtype the example losses were computed in")

    def merged(self) -> dict[str, Any]:
        """The shared fields, to build another stage's model: ``LockedStep(**step.merged(), ...)``."""
        return {name: getattr(self, name) for name in MergedStep.model_fields}
