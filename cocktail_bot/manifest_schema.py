"""`cocktail.yml`'s schema: what each key may hold, as pydantic models; the JSON Schema for editors.

A new manifest field is a field here (with its description); a check the schema cannot express goes to
:mod:`cocktail_bot.manifest_checks`, and what the rest of the code reads to :mod:`cocktail_bot.recipe`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
)

from cocktail_bot.devices import DEVICE_CHOICES, DEVICE_PATTERN, is_device
from cocktail_bot.dtypes import OutputDtype
from cocktail_bot.jobs.settings import CPU_FLAVOR, DEFAULT_IMAGE, GPU_FLAVOR, TIMEOUT, check_flavor
from cocktail_bot.methods import METHODS
from cocktail_bot.references import REFERENCE_PATTERN, check_reference, is_local
from cocktail_bot.sizes import SIZE_PATTERN, parse_size


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _reference(value: str) -> str:
    return check_reference(value, allow_revision=True)


def _repo_id(value: str) -> str:
    return check_reference(value, allow_revision=False)


def _hub_repo_id(value: str) -> str:
    if is_local(value):
        raise ValueError(f"{value!r} is a local path: output.repo is the Hub repo 'org/name' to publish to")
    try:
        return _repo_id(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a Hub repo id: output.repo is the Hub repo 'org/name' to publish to"
        ) from None


Reference = Annotated[
    str, AfterValidator(_reference), Field(json_schema_extra={"pattern": REFERENCE_PATTERN})
]
RepoIdOrPath = Annotated[
    str, AfterValidator(_repo_id), Field(json_schema_extra={"pattern": REFERENCE_PATTERN})
]


_SCALAR_SCHEMA: dict[str, Any] = {"type": ["number", "boolean", "string"]}
_VALUES_SCHEMA: dict[str, Any] = {
    "anyOf": [_SCALAR_SCHEMA, {"type": "array", "items": _SCALAR_SCHEMA, "minItems": 1}]
}
_FILTERED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"filter": {"type": "string"}, "value": _VALUES_SCHEMA},
    "required": ["value"],
    "additionalProperties": False,
}
# A parameter's value: one value, a per-layer list, or values scoped by a filter on tensor names (mergekit's
# forms, see parameter_values). The schema takes any value so that the method's own check says what is wrong,
# with the line; the JSON Schema describes the forms for editors.
ParameterSetting = Annotated[
    Any,
    WithJsonSchema(
        {
            "anyOf": [
                *_VALUES_SCHEMA["anyOf"],
                _FILTERED_SCHEMA,
                {"type": "array", "items": _FILTERED_SCHEMA, "minItems": 1},
            ],
            "description": "a value, a per-layer list [0, 0.5, 1] (interpolated over the layers), or "
            "filtered values [{filter: self_attn, value: ...}, {value: ...}]",
        }
    ),
]
Parameters = dict[str, ParameterSetting]


def _weight(value: Any) -> Any:
    # Strict: YAML's `true` or a quoted "0.5" is a mistake, not a weight of 1.0 or 0.5.
    if value is None or isinstance(value, (list, dict)):
        return value  # a per-layer list or filtered values: the checks say, with the line, what is wrong
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, a per-layer list [0.2, 0.8] or filtered values, got {value!r}")
    return float(value)


Weight = Annotated[
    Any,
    AfterValidator(_weight),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number"},
                {"type": "array", "items": {"type": "number"}, "minItems": 1},
                _FILTERED_SCHEMA,
                {"type": "array", "items": _FILTERED_SCHEMA, "minItems": 1},
            ],
            "description": "this model's weight: a number, a per-layer list (interpolated over the layers) or "
            "filtered values (methods with a base)",
        }
    ),
]


class HubOrLocalModel(_Strict):
    """A source written as a mapping: ``{id: org/name, revision: v1, weight: 0.3}``."""

    id: RepoIdOrPath = Field(
        description="Hub repo id 'org/name' or a local folder './path' inside the repository"
    )
    revision: str | None = Field(
        None, description="branch, tag or commit sha (Hub sources only); default main"
    )
    weight: Weight = Field(None, description="this model's weight; give every model one, or use 'weights:'")
    parameters: Parameters | None = Field(
        None, description="this model's own values of the method's per-model parameters, e.g. {density: 0.5}"
    )

    @field_validator("revision")
    @classmethod
    def _no_revision_for_local(cls, value: str | None, info) -> str | None:
        if value is not None and is_local(str(info.data.get("id", ""))):
            raise ValueError("a local folder has no revision: remove 'revision:' or use a Hub id")
        return value


class StepOutput(_Strict):
    """The output of an earlier step, as a source of a later one: ``{step: helpers, weight: 0.5}``."""

    step: str = Field(description="name of an earlier step")
    weight: Weight = None
    parameters: Parameters | None = Field(
        None, description="this model's own values of the method's per-model parameters, e.g. {density: 0.5}"
    )


def _entry_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "reference"
    if isinstance(value, dict):
        return "StepOutput" if "step" in value else "HubOrLocalModel"
    if isinstance(value, (HubOrLocalModel, StepOutput)):
        return type(value).__name__
    return None


ModelEntry = Annotated[
    Annotated[Reference, Tag("reference")]
    | Annotated[HubOrLocalModel, Tag("HubOrLocalModel")]
    | Annotated[StepOutput, Tag("StepOutput")],
    Discriminator(
        _entry_kind,
        custom_error_type="model_reference",
        custom_error_message="expected a model reference: 'org/name', 'org/name@rev', './local/path', "
        "{id: ..., weight: ...} or {step: ..., weight: ...}",
    ),
]


class ExampleWeights(_Strict):
    """LM-Cocktail's weights from examples: softmax(-loss / T) of each model's loss on a few examples."""

    examples: str = Field(description="JSON or JSONL example file, relative to the manifest")
    temperature: float = Field(5.0, gt=0)
    max_input_length: int = Field(2048, gt=0)
    neg_number: int = Field(7, ge=0, description="negatives per query (encoder, reranker)")
    batch_size: int = Field(2, gt=0)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="dtype the losses are computed in; auto: float32 on CPU (LM_Cocktail's numbers), "
        "the checkpoint's dtype on a GPU",
    )


def _weights_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "uniform"
    if isinstance(value, (dict, ExampleWeights)):
        return "ExampleWeights"
    return None


WeightsSpec = Annotated[
    Annotated[Literal["uniform"], Tag("uniform")] | Annotated[ExampleWeights, Tag("ExampleWeights")],
    Discriminator(
        _weights_kind,
        custom_error_type="weights_spec",
        custom_error_message="expected 'uniform' or a mapping {examples: FILE, temperature: ...}",
    ),
]


def _size(value: str | int) -> str | int:
    try:
        parse_size(value)
    except ValueError:
        if isinstance(value, int):
            raise ValueError(f"{value} must be a positive number of bytes") from None
        raise ValueError(f"{value!r} is not a size: write a number of bytes or e.g. '500MB', '5GB'") from None
    return value


Size = Annotated[str | int, AfterValidator(_size), Field(json_schema_extra={"pattern": SIZE_PATTERN})]


class MergeOptions(_Strict):
    method: str = Field("linear", description=", ".join(METHODS))
    parameters: Parameters = Field(
        default_factory=dict,
        description="method parameters, e.g. {density: 0.5} for ties (per-model ones apply to every model "
        "that sets none); each a value, a per-layer list or filtered values",
    )
    dtype: OutputDtype | None = Field(None, description="output dtype; default: the sources' dtype")
    shard_size: Size = Field("5GB", description="largest output shard, e.g. '5GB'")
    max_memory: str | int = Field(
        "auto", description="memory budget for the plan's check, 'auto' or e.g. '16GB'"
    )
    device: str | None = Field(
        None,
        json_schema_extra={"pattern": DEVICE_PATTERN},
        description="where weights and evaluation run: auto, cpu, cuda, cuda:N",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str | None) -> str | None:
        if value is not None and not is_device(value):
            raise ValueError(f"{value!r} is not a device: use {DEVICE_CHOICES}")
        return value

    @field_validator("max_memory")
    @classmethod
    def _check_max_memory(cls, value: str | int) -> str | int:
        return value if value == "auto" else _size(value)


class Step(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=64)
    models: list[ModelEntry] = Field(min_length=1)
    weights: WeightsSpec | None = None
    merge: MergeOptions = Field(default_factory=MergeOptions)
    base: Reference | None = Field(
        None, description="config, tokenizer and modules come from here (default: first)"
    )


class EvalSet(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]*$", max_length=64)
    examples: str = Field(description="JSON or JSONL example file, relative to the manifest")


class Output(_Strict):
    repo: Annotated[str, AfterValidator(_hub_repo_id)] | None = Field(
        None, description="Hub repo 'org/name' to publish to; omitted = build only"
    )
    private: bool = Field(True, description="create the Hub repo private (default: true)")
    license: str = Field("inherit", description="SPDX id, or 'inherit': the sources' common license")
    card: str | None = Field(
        None, description="your own Jinja2 model card template, relative to the manifest"
    )


class HfJobsSettings(_Strict):
    """``runner: {hf_jobs: {...}}``: the hardware, the time cap and the namespace a job runs (and bills) in."""

    flavor: str | None = Field(
        None,
        description=f"hardware flavor, e.g. cpu-upgrade or a100-large (default {CPU_FLAVOR}, {GPU_FLAVOR} for cuda)",
    )
    timeout: str | None = Field(
        None,
        description="the job is stopped (and billing ends) after this long: 90m, 2h, 1d; the Hub's default without",
    )
    namespace: str | None = Field(
        None, description="user or organisation the job runs in (default: the token's user)"
    )
    image: str = Field(
        DEFAULT_IMAGE, description="Docker image with Python and pip (torch is kept when present)"
    )

    @field_validator("flavor")
    @classmethod
    def _flavor(cls, value: str | None) -> str | None:
        return None if value is None else check_flavor(value)

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: object) -> object:
        text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        if isinstance(text, str) and not TIMEOUT.match(text):
            raise ValueError(f"timeout {text!r}: a number of seconds, or with a unit: 90m, 2h, 1d")
        return text


class Runner(_Strict):
    """``runner:``: settings for running elsewhere than on this machine."""

    hf_jobs: HfJobsSettings = Field(default_factory=HfJobsSettings)


class ManifestDocument(_Strict):
    """cocktail.yml, version 1: one merge (models/weights/merge/base at the top) or several `steps:`."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="cocktail.yml")

    version: Literal[1] = Field(description="manifest format version")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=96, description="names the output")
    type: Literal["decoder", "encoder", "reranker"]
    models: list[ModelEntry] | None = Field(None, min_length=1)
    weights: WeightsSpec | None = None
    merge: MergeOptions | None = None
    base: Reference | None = None
    steps: list[Step] | None = Field(None, min_length=1, description="a multi-stage recipe, run in order")
    eval: list[EvalSet] = Field(default_factory=list, description="held-out example sets")
    output: Output = Field(default_factory=Output)
    runner: Runner | None = Field(None, description="where else the run may happen (docs/jobs.md)")


STEP_KEYS = ("models", "weights", "merge", "base")
TAGS = {"reference", "HubOrLocalModel", "StepOutput", "uniform", "ExampleWeights"}
FIELD_CLASS: dict[str, type[BaseModel]] = {
    "steps": Step,
    "weights": ExampleWeights,
    "merge": MergeOptions,
    "eval": EvalSet,
    "output": Output,
    "runner": Runner,
    "hf_jobs": HfJobsSettings,
}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of cocktail.yml, for editors (YAML language servers) and for `cocktail schema`."""
    schema = ManifestDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/cocktail-bot/cocktail-bot/schema/cocktail.schema.json"
    schema["description"] = (
        "cocktail-bot merge recipe (LM-Cocktail). Give either models/weights/merge/base, or steps."
    )
    schema["oneOf"] = [
        {"required": ["models"], "not": {"required": ["steps"]}},
        {"required": ["steps"], "not": {"anyOf": [{"required": [k]} for k in STEP_KEYS]}},
    ]
    return schema


# ------------------------------------------------------------------------------------------------------


ENTRY: TypeAdapter[Any] = TypeAdapter(ModelEntry)
REFERENCE: TypeAdapter[Any] = TypeAdapter(Reference)
WEIGHTS: TypeAdapter[Any] = TypeAdapter(WeightsSpec)
