"""The loaded, normalised recipe every later stage reads: steps of sources with paths resolved.

Built by :func:`cocktail_bot.manifest.load_manifest` once every check passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cocktail_bot.manifest_schema import (
    ExampleWeights,
    HfJobsSettings,
    ManifestDocument,
    MergeOptions,
    Output,
)

SINGLE_STEP_NAME = "merge"  # the one step of a manifest without `steps:`


@dataclass(frozen=True)
class SourceSpec:
    """One input of a step: a Hub repo, a local folder, or an earlier step's output."""

    label: str  # as the manifest writes it: 'org/name', 'org/name@rev', './path', 'step:NAME'
    kind: Literal["hub", "local", "step"]
    ref: str  # repo id, absolute local path, or step name
    revision: str | None = None
    weight: float | list[Any] | None = None  # a number, or a per-layer list / filtered values
    parameters: dict[str, Any] | None = field(default=None, compare=False)  # its per-model parameters


@dataclass(frozen=True)
class StepSpec:
    name: str
    models: tuple[SourceSpec, ...]
    weights_mode: Literal["explicit", "uniform", "examples", "unused"]  # unused: the method takes none
    example_weights: ExampleWeights | None
    examples_path: Path | None
    merge: MergeOptions
    base: SourceSpec | None  # None: the first model

    @property
    def model_params(self) -> list[dict[str, Any] | None]:
        """Each model's own per-model parameter settings (None: it sets none)."""
        return [source.parameters for source in self.models]

    @property
    def explicit_weights(self) -> list[Any] | None:
        if self.weights_mode in ("uniform", "unused"):  # unused: what the engine is handed, and ignores
            return [1.0 / len(self.models)] * len(self.models)
        if self.weights_mode == "explicit":
            return [m.weight if isinstance(m.weight, list) else float(m.weight) for m in self.models]  # type: ignore[arg-type]
        return None


@dataclass(frozen=True)
class Manifest:
    path: Path  # absolute
    root: Path  # the repository the manifest lives in; every path stays inside it
    text: str
    sha256: str
    document: ManifestDocument
    steps: tuple[StepSpec, ...]
    eval_sets: dict[str, Path] = field(default_factory=dict)
    card_template: Path | None = None

    @property
    def name(self) -> str:
        return self.document.name

    @property
    def model_type(self) -> str:
        return self.document.type

    @property
    def output(self) -> Output:
        return self.document.output

    @property
    def hf_jobs(self) -> HfJobsSettings:
        """``runner.hf_jobs``, defaults filled in when the manifest has none."""
        runner = self.document.runner
        return runner.hf_jobs if runner is not None else HfJobsSettings()

    @property
    def relative_path(self) -> str:
        return self.path.relative_to(self.root).as_posix()

    def outside_sources(self) -> list[SourceSpec]:
        """Local model folders outside the repository (allowed for local runs): a lock naming them is not
        portable."""
        return [
            source
            for source in self.external_sources()
            if source.kind == "local" and not Path(source.ref).is_relative_to(self.root)
        ]

    def external_sources(self) -> list[SourceSpec]:
        """Hub and local sources of every step (and bases), each once, in order of appearance."""
        seen: dict[tuple[str, str | None], SourceSpec] = {}
        for step in self.steps:
            for source in (*step.models, *([step.base] if step.base else [])):
                if source.kind != "step":
                    seen.setdefault((source.label, source.revision), source)
        return list(seen.values())


# ------------------------------------------------------------------------------------------------------
# Loading: YAML nodes, problems, checks
