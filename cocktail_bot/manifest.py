"""`cocktail.yml`: the schema, loading with YAML line numbers, and every problem reported at once.

Loading has three layers, each pure over the previous one's output:

1. the YAML text is composed into a node tree (safe loader, size- and alias-limited) so that every field
   keeps the line it was written on;
2. the data is validated against :class:`ManifestDocument` (pydantic, unknown keys forbidden), and each
   pydantic error is mapped back to its YAML node;
3. consistency checks that a schema cannot express (weights, step references, merge methods, files inside the
   repository) run on every part that passed the schema.

The result is a :class:`Manifest`: the recipe normalised to a list of :class:`StepSpec`, with paths resolved.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictFloat,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from cocktail_bot.errors import CocktailError
from cocktail_bot.model_files import has_weights

MAX_MANIFEST_BYTES = 1024 * 1024
MAX_YAML_NODES = 20_000  # after expanding aliases: a 1 MiB file must not expand into a "billion laughs"
SINGLE_STEP_NAME = "merge"
LOCAL_PREFIXES = ("./", "../", "/")
STEP_PREFIX = "step:"  # how a source that is an earlier step's output is labelled


# ------------------------------------------------------------------------------------------------------
# Schema
# ------------------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_reference(value: str, *, allow_revision: bool) -> str:
    """A model reference is a local path (./, ../ or /) or a Hub repo id, optionally ``@revision``."""
    if value.startswith(LOCAL_PREFIXES):
        return value
    if value.startswith(STEP_PREFIX):
        raise ValueError(
            f"{value!r}: a step's output cannot be named here; list {{step: {value.removeprefix(STEP_PREFIX)}, weight: ...}} first "
            "among the models (the first model is the default base)"
        )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id, at, revision = value.partition("@")
    if at and not allow_revision:
        raise ValueError(f"{value!r}: put the revision in 'revision:', not after '@'")
    if at and not revision.strip():
        raise ValueError(
            f"{value!r}: nothing after '@'; write org/name@revision (a branch, tag or commit sha)"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ValueError(
            f"{value!r} is not a model reference: use a Hub id 'org/name', 'org/name@revision', "
            "or a local folder starting with './'"
        ) from None
    return value


def _reference(value: str) -> str:
    return _check_reference(value, allow_revision=True)


def _repo_id(value: str) -> str:
    return _check_reference(value, allow_revision=False)


def _hub_repo_id(value: str) -> str:
    if value.startswith(LOCAL_PREFIXES):
        raise ValueError(f"{value!r} is a local path: output.repo is the Hub repo 'org/name' to publish to")
    try:
        return _repo_id(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a Hub repo id: output.repo is the Hub repo 'org/name' to publish to"
        ) from None


REFERENCE_PATTERN = r"^(\.{0,2}/.*|[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)?(@\S+)?)$"
Reference = Annotated[
    str, AfterValidator(_reference), Field(json_schema_extra={"pattern": REFERENCE_PATTERN})
]
RepoIdOrPath = Annotated[
    str, AfterValidator(_repo_id), Field(json_schema_extra={"pattern": REFERENCE_PATTERN})
]


class HubOrLocalModel(_Strict):
    """A source written as a mapping: ``{id: org/name, revision: v1, weight: 0.3}``."""

    id: RepoIdOrPath = Field(
        description="Hub repo id 'org/name' or a local folder './path' inside the repository"
    )
    revision: str | None = Field(
        None, description="branch, tag or commit sha (Hub sources only); default main"
    )
    # Strict: YAML's `true` or a quoted "0.5" is a mistake, not a weight of 1.0 or 0.5.
    weight: StrictFloat | None = Field(
        None, description="this model's weight; give every model one, or use 'weights:'"
    )

    @field_validator("revision")
    @classmethod
    def _no_revision_for_local(cls, value: str | None, info) -> str | None:
        if value is not None and str(info.data.get("id", "")).startswith(LOCAL_PREFIXES):
            raise ValueError("a local folder has no revision: remove 'revision:' or use a Hub id")
        return value


class StepOutput(_Strict):
    """The output of an earlier step, as a source of a later one: ``{step: helpers, weight: 0.5}``."""

    step: str = Field(description="name of an earlier step")
    weight: StrictFloat | None = None


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

SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*[KMGT]B\s*$"


def _size(value: str | int) -> str | int:
    from huggingface_hub.serialization._base import parse_size_to_int

    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{value} must be a positive number of bytes")
        return value
    try:
        if parse_size_to_int(value) <= 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"{value!r} is not a size: write a number of bytes or e.g. '500MB', '5GB'") from None
    return value


Size = Annotated[str | int, AfterValidator(_size), Field(json_schema_extra={"pattern": SIZE_PATTERN})]


DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"


class MergeOptions(_Strict):
    method: str = Field("linear", description="linear, task_arithmetic, ties, dare_linear, dare_ties, slerp")
    parameters: dict[str, float | int | str | bool | None] = Field(
        default_factory=dict, description="method parameters, e.g. {density: 0.5} for ties"
    )
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        None, description="output dtype; default: the sources' dtype"
    )
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
        if value is not None and not re.fullmatch(DEVICE_PATTERN, value):
            raise ValueError(f"{value!r} is not a device: use auto, cpu, mps, cuda or cuda:N")
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


STEP_KEYS = ("models", "weights", "merge", "base")
TAGS = {"reference", "HubOrLocalModel", "StepOutput", "uniform", "ExampleWeights"}
FIELD_CLASS: dict[str, type[BaseModel]] = {
    "steps": Step,
    "weights": ExampleWeights,
    "merge": MergeOptions,
    "eval": EvalSet,
    "output": Output,
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
# The loaded, normalised recipe
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    """One input of a step: a Hub repo, a local folder, or an earlier step's output."""

    label: str  # as the manifest writes it: 'org/name', 'org/name@rev', './path', 'step:NAME'
    kind: Literal["hub", "local", "step"]
    ref: str  # repo id, absolute local path, or step name
    revision: str | None = None
    weight: float | None = None


@dataclass(frozen=True)
class StepSpec:
    name: str
    models: tuple[SourceSpec, ...]
    weights_mode: Literal["explicit", "uniform", "examples"]
    example_weights: ExampleWeights | None
    examples_path: Path | None
    merge: MergeOptions
    base: SourceSpec | None  # None: the first model

    @property
    def explicit_weights(self) -> list[float] | None:
        if self.weights_mode == "uniform":
            return [1.0 / len(self.models)] * len(self.models)
        if self.weights_mode == "explicit":
            return [float(m.weight) for m in self.models]  # type: ignore[arg-type]
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
    def relative_path(self) -> str:
        return self.path.relative_to(self.root).as_posix()

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
# ------------------------------------------------------------------------------------------------------

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    line: int
    loc: str
    message: str


def format_loc(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part not in TAGS:
            text += f".{part}" if text else part
    return text or "(manifest)"


def find_repository_root(folder: Path) -> Path:
    """The git top-level containing ``folder`` (a `.git` directory or file), else the folder itself."""
    folder = folder.resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return candidate
    return folder


def load_manifest(path: str | Path) -> Manifest:
    """Load and check a manifest; raise CocktailError listing ``FILE:LINE: field: message`` lines."""
    display = str(path)
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise CocktailError(f"{display} is not a file: give the path of a cocktail.yml manifest")
        if size > MAX_MANIFEST_BYTES:
            raise CocktailError(
                f"{display} is {size} bytes; a manifest may be at most {MAX_MANIFEST_BYTES} bytes"
            )
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise CocktailError(f"{display} not found: give the path of a cocktail.yml manifest") from None
    except OSError as error:
        raise CocktailError(f"cannot read {display}: {error.strerror}") from None
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CocktailError(
            f"{display}: not UTF-8 text (byte {error.start}); save the manifest as UTF-8"
        ) from None
    manifest, problems = check_manifest_text(text, path.resolve())
    if problems:
        lines = [f"{display}:{p.line}: {p.loc}: {p.message}" for p in problems]
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise CocktailError(f"{display} has {count}:\n" + "\n".join(lines))
    assert manifest is not None
    return manifest


def check_manifest_text(text: str, path: Path) -> tuple[Manifest | None, list[Problem]]:
    """Every problem of a manifest's text, sorted by line; the Manifest when there are none."""
    try:
        root_node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 1
        return None, [Problem(line, "(yaml)", f"{error.problem or error.context}; fix the YAML syntax")]
    except yaml.YAMLError as error:
        return None, [Problem(1, "(yaml)", str(error))]
    if root_node is None:
        return None, [Problem(1, "(manifest)", "the manifest is empty: start with 'version: 1'")]
    node_problems = list(_node_problems(root_node))
    if node_problems:
        return None, node_problems
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        return None, [
            Problem(1, "(manifest)", "the manifest must be a mapping of keys (version, name, type, ...)")
        ]
    nodes = _NodeIndex(root_node)
    problems: list[Problem] = []
    document: ManifestDocument | None = None
    try:
        document = ManifestDocument.model_validate(data)
    except ValidationError as error:
        problems += [nodes.problem(e["loc"], _message(e)) for e in error.errors(include_url=False)]
    root = find_repository_root(path.parent)
    checker = _Checker(nodes, path.parent, root, str(data.get("type", "")))
    steps = checker.check_steps(data)
    eval_sets = checker.check_eval(data)
    card = checker.check_card(data)
    problems += checker.problems
    problems.sort(key=lambda p: p.line)
    if problems or document is None:
        return None, problems
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Manifest(path, root, text, digest, document, tuple(steps), eval_sets, card), []


def _node_problems(root: yaml.Node) -> Iterator[Problem]:
    """Duplicate keys (the YAML loader silently keeps the last) and alias bombs, before constructing data."""
    count = 0
    stack = [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            yield Problem(
                node.start_mark.line + 1,
                "(yaml)",
                f"more than {MAX_YAML_NODES} values after expanding aliases; simplify the manifest",
            )
            return
        if isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in first_line:
                        yield Problem(
                            key.start_mark.line + 1,
                            key.value,
                            f"duplicate key (first on line {first_line[key.value]}); keep one",
                        )
                    first_line.setdefault(key.value, key.start_mark.line + 1)
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


class _NodeIndex:
    """Maps a pydantic location (('steps', 1, 'models', 0, 'weight')) to the YAML node that holds it."""

    def __init__(self, root: yaml.Node) -> None:
        self.root = root

    def line(self, loc: Loc, *, key: bool = False) -> int:
        node: yaml.Node = self.root
        for index, part in enumerate(loc):
            last = index == len(loc) - 1
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
                if match is None:
                    if part in TAGS:
                        continue
                    break
                node = match[0] if (last and key) else match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            elif part not in TAGS:
                break
        return node.start_mark.line + 1

    def problem(self, loc: Loc, message: str, *, key: bool = False) -> Problem:
        return Problem(self.line(loc, key=key), format_loc(loc), message)


def _model_class_at(loc: Loc) -> type[BaseModel]:
    """The schema class whose keys are allowed at ``loc`` (the parent of an unknown key)."""
    for part in reversed(loc):
        if isinstance(part, str):
            if part in ("HubOrLocalModel", "StepOutput", "ExampleWeights"):
                return {
                    "HubOrLocalModel": HubOrLocalModel,
                    "StepOutput": StepOutput,
                    "ExampleWeights": ExampleWeights,
                }[part]
            return FIELD_CLASS.get(part, ManifestDocument)
    return ManifestDocument


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "expected one of " + ", ".join(choices)


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(error: dict[str, Any]) -> str:
    kind, loc, value = error["type"], error["loc"], error.get("input")
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        allowed = list(_model_class_at(loc[:-1]).model_fields)
        return f"unknown key; {did_you_mean(str(loc[-1]), allowed)}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        choices = [c.strip(" '") for c in expected.replace(" or ", ",").split(",") if c.strip(" '")]
        hint = did_you_mean(str(value), choices) if isinstance(value, str) else f"expected {expected}"
        return f"{_short(value)} is not allowed; {hint}"
    message = error["msg"]
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    if kind in ("model_reference", "weights_spec", "model_type", "model_attributes_type"):
        return (
            f"{message} (got {_short(value)})"
            if kind != "model_type"
            else f"expected a mapping, got {_short(value)}"
        )
    return f"{message[0].lower()}{message[1:]} (got {_short(value)})"


class _Checker:
    """Consistency checks that the schema cannot express; runs on every part that passed the schema."""

    def __init__(self, nodes: _NodeIndex, folder: Path, root: Path, model_type: str) -> None:
        self.nodes, self.folder, self.root, self.model_type = nodes, folder, root, model_type
        self.problems: list[Problem] = []

    def fail(self, loc: Loc, message: str, *, key: bool = False) -> None:
        self.problems.append(self.nodes.problem(loc, message, key=key))

    # ---- paths ---------------------------------------------------------------------------------------------
    def path(self, loc: Loc, value: str, *, kind: Literal["file", "folder"]) -> Path | None:
        """Resolve a manifest path (symlinks too) and require it inside the repository and present."""
        resolved = (self.folder / value).resolve()
        if not resolved.is_relative_to(self.root):
            self.fail(
                loc,
                f"{value!r} resolves to {resolved}, outside the repository {self.root}; "
                "keep manifest paths inside the repository",
            )
            return None
        if kind == "file" and not resolved.is_file():
            self.fail(loc, f"file {value!r} not found (looked at {resolved})")
            return None
        if kind == "folder" and not resolved.is_dir():
            self.fail(loc, f"model folder {value!r} not found (looked at {resolved})")
            return None
        if kind == "folder" and not has_weights(resolved):
            self.fail(
                loc,
                f"model folder {value!r} has no model weights: expected model.safetensors or "
                "pytorch_model.bin (or their shards) in it",
            )
            return None
        return resolved

    def examples(self, loc: Loc, value: str) -> Path | None:
        resolved = self.path(loc, value, kind="file")
        if resolved is not None and self.model_type in ("decoder", "encoder", "reranker"):
            try:
                from cocktail_bot.examples import load_examples
            except ImportError:  # examples.py not installed in this build: the file is checked when used
                return resolved
            try:
                load_examples(resolved, self.model_type)
            except CocktailError as error:
                self.fail(loc, str(error))
                return None
        return resolved

    # ---- steps ---------------------------------------------------------------------------------------------
    def check_steps(self, data: dict[str, Any]) -> list[StepSpec]:
        """Check each step part by part (models, weights, merge, base): one bad part hides no other."""
        has_steps = "steps" in data
        single_keys = [k for k in STEP_KEYS if k in data]
        if has_steps and single_keys:
            for key in single_keys:
                self.fail((key,), "not allowed beside 'steps:'; move it into a step", key=True)
            return []
        if not has_steps and "models" not in data:
            self.fail((), "no models: give 'models:' (one merge) or 'steps:' (a multi-stage recipe)")
            return []
        if has_steps:
            raw_steps = [s if isinstance(s, dict) else {} for s in _as_list(data["steps"])]
            prefixes: list[Loc] = [("steps", i) for i in range(len(raw_steps))]
        else:
            raw_steps = [{"name": SINGLE_STEP_NAME, **{k: data[k] for k in STEP_KEYS if k in data}}]
            prefixes = [()]
        names = [s.get("name") for s in raw_steps]
        specs: list[StepSpec] = []
        for index, (prefix, raw) in enumerate(zip(prefixes, raw_steps, strict=True)):
            name = names[index]
            if has_steps and isinstance(name, str) and name in names[:index]:
                line = self.nodes.line(("steps", names.index(name), "name"))
                self.fail(
                    (*prefix, "name"), f"duplicate step name {name!r} (first on line {line}); rename one"
                )
            spec = self.step(prefix, raw, names[:index], names)
            if spec is not None and isinstance(name, str):
                specs.append(spec)
        return specs

    def step(
        self, prefix: Loc, raw: dict[str, Any], earlier: list[Any], all_names: list[Any]
    ) -> StepSpec | None:
        before = len(self.problems)
        entries = [_try(ENTRY, e) for e in _as_list(raw.get("models"))]
        sources = [
            self.source((*prefix, "models", i), entry, earlier, all_names) if entry is not None else None
            for i, entry in enumerate(entries)
        ]
        seen: set[str] = set()
        for i, source in enumerate(sources):
            if source is not None and source.label in seen:
                self.fail(
                    (*prefix, "models", i), f"{source.label!r} is listed twice in this step; list it once"
                )
            seen.add(source.label if source is not None else "")
        base = None
        base_ref = _try(REFERENCE, raw.get("base"))
        if base_ref is not None:
            base = next((s for s in sources if s is not None and s.label == base_ref), None)
            base = base or self.source((*prefix, "base"), base_ref, earlier, all_names)
        weights = _try(WEIGHTS, raw.get("weights"))
        given = [getattr(entry, "weight", None) is not None for entry in entries if entry is not None]
        mode, examples_path = self.weights(prefix, weights, sources, given, raw.get("weights") is not None)
        merge = _try(MergeOptions, raw.get("merge", {}))
        method = self.method(prefix, merge) if merge is not None else None
        if merge is None and isinstance(raw.get("merge"), dict):
            # Another merge option is wrong (the schema said which): the method and its parameters still
            # get checked, so that one run of `validate` lists every problem.
            chosen = {key: raw["merge"][key] for key in ("method", "parameters") if key in raw["merge"]}
            partial = _try(MergeOptions, chosen)
            if partial is not None:
                self.method(prefix, partial)
        complete = None not in entries and None not in sources
        if method is not None and mode is not None and complete:
            labels = [s.label for s in sources]  # type: ignore[union-attr]
            base_label = base.label if base is not None else None
            try:
                method.check_base(base_label)
            except CocktailError as error:
                self.fail((*prefix, "merge", "method"), str(error))
            else:
                weights_given = [float(s.weight) for s in sources] if mode == "explicit" else None  # type: ignore
                try:
                    method.check_recipe(labels, weights_given, base_label)
                except CocktailError as error:
                    self.fail((*prefix, "models"), str(error), key=True)
        if len(self.problems) > before or mode is None or not complete or merge is None or not entries:
            return None
        return StepSpec(
            raw["name"],
            tuple(sources),
            mode,
            weights if mode == "examples" else None,  # type: ignore
            examples_path,
            merge,
            base,
        )

    def source(self, loc: Loc, entry: Any, earlier: list[Any], all_names: list[Any]) -> SourceSpec | None:
        if isinstance(entry, StepOutput):
            if entry.step not in earlier:
                known = [n for n in earlier if isinstance(n, str)]
                if entry.step in all_names:
                    message = f"step {entry.step!r} runs later (steps run in order); move it before this step"
                elif known:
                    message = f"unknown step {entry.step!r}; {did_you_mean(entry.step, known)}"
                else:
                    message = f"unknown step {entry.step!r}; only steps listed before this one can be used"
                self.fail((*loc, "step"), message)
                return None
            return SourceSpec(f"{STEP_PREFIX}{entry.step}", "step", entry.step, None, entry.weight)
        if isinstance(entry, str):
            reference, weight, revision = entry, None, None
            if not entry.startswith(LOCAL_PREFIXES) and "@" in entry:
                reference, _, revision = entry.partition("@")
        else:
            reference, weight, revision = entry.id, entry.weight, entry.revision
        label = f"{reference}@{revision}" if revision else reference
        if reference.startswith(LOCAL_PREFIXES):
            folder = self.path(loc if isinstance(entry, str) else (*loc, "id"), reference, kind="folder")
            if folder is None:
                return None
            return SourceSpec(label, "local", str(folder), None, weight)
        return SourceSpec(label, "hub", reference, revision, weight)

    def weights(
        self, prefix: Loc, weights: Any, sources: list[SourceSpec | None], given: list[bool], present: bool
    ) -> tuple[Any, Path | None]:
        """The step's weights mode; ``given`` says which valid entries carry a weight."""
        if present and weights is None:  # invalid 'weights:', already reported by the schema
            return None, None
        if weights is not None:
            if any(given):
                self.fail(
                    (*prefix, "weights"),
                    "per-model weights and 'weights:' cannot be combined; "
                    "remove the models' weights or 'weights:'",
                    key=True,
                )
                return None, None
            if weights == "uniform":
                return "uniform", None
            examples = self.examples((*prefix, "weights", "examples"), weights.examples)
            return ("examples", examples) if examples is not None else (None, None)
        if not any(given):
            if given:
                self.fail(
                    (*prefix, "models"),
                    "no weights: give every model a weight, or set 'weights: uniform' "
                    "or 'weights: {examples: FILE}'",
                    key=True,
                )
            return None, None
        missing = [i for i, s in enumerate(sources) if s is not None and s.weight is None]
        for i in missing:
            self.fail(
                (*prefix, "models", i),
                "missing weight: give every model of the step a weight (or none, with 'weights:')",
            )
        return ("explicit", None) if not missing else (None, None)

    def method(self, prefix: Loc, merge: MergeOptions):
        from cocktail_bot import methods

        known = list(methods.METHODS)
        if merge.method not in known:
            self.fail(
                (*prefix, "merge", "method"),
                f"unknown merge method {merge.method!r}; {did_you_mean(merge.method, known)}",
            )
            return None
        try:
            return methods.get_method(merge.method, merge.parameters)
        except CocktailError as error:
            self.fail((*prefix, "merge", "parameters"), str(error))
            return None

    # ---- eval and output -----------------------------------------------------------------------------------
    def check_eval(self, data: dict[str, Any]) -> dict[str, Path]:
        result: dict[str, Path] = {}
        for index, eval_set in enumerate(_try(EvalSet, e) for e in _as_list(data.get("eval"))):
            if eval_set is None:
                continue
            if eval_set.name in result:
                self.fail(("eval", index, "name"), f"duplicate eval set name {eval_set.name!r}; rename one")
            path = self.examples(("eval", index, "examples"), eval_set.examples)
            if path is not None:
                result.setdefault(eval_set.name, path)
        return result

    def check_card(self, data: dict[str, Any]) -> Path | None:
        card = data["output"].get("card") if isinstance(data.get("output"), dict) else None
        resolved = self.path(("output", "card"), card, kind="file") if isinstance(card, str) else None
        if resolved is not None:
            from cocktail_bot.templating import check_user_template

            try:
                check_user_template(resolved)
            except CocktailError as error:
                self.fail(("output", "card"), str(error))
                return None
        return resolved


ENTRY: TypeAdapter[Any] = TypeAdapter(ModelEntry)
REFERENCE: TypeAdapter[Any] = TypeAdapter(Reference)
WEIGHTS: TypeAdapter[Any] = TypeAdapter(WeightsSpec)


def _try(schema: type[BaseModel] | TypeAdapter[Any], data: Any) -> Any:
    """A part of a manifest that is valid on its own: its consistency is checked despite other errors."""
    try:
        if isinstance(schema, TypeAdapter):
            return schema.validate_python(data)
        return schema.model_validate(data)
    except ValidationError:
        return None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
