"""The manifest's consistency checks that a schema cannot express (weights, step references, merge methods,
files inside the repository), and the schema's errors in the manifest's words.

Each check runs on every part that passed the schema, so one run of `cocktail validate` lists every problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from cocktail_bot.errors import CocktailError
from cocktail_bot.manifest_schema import (
    ENTRY,
    FIELD_CLASS,
    REFERENCE,
    STEP_KEYS,
    WEIGHTS,
    EvalSet,
    ExampleWeights,
    HubOrLocalModel,
    ManifestDocument,
    MergeOptions,
    StepOutput,
)
from cocktail_bot.methods import METHODS, MergeMethod, get_method
from cocktail_bot.model_files import has_weights
from cocktail_bot.model_types import MODEL_TYPES, config_problems, read_config
from cocktail_bot.parameter_values import SettingError, check_weight
from cocktail_bot.recipe import SINGLE_STEP_NAME, SourceSpec, StepSpec
from cocktail_bot.references import STEP_PREFIX, is_local, split_revision
from cocktail_bot.suggest import did_you_mean
from cocktail_bot.yaml_lines import Loc, NodeIndex, Problem

TAGGED: dict[str, type[BaseModel]] = {
    "HubOrLocalModel": HubOrLocalModel,
    "StepOutput": StepOutput,
    "ExampleWeights": ExampleWeights,
}


def _model_class_at(loc: Loc) -> type[BaseModel]:
    """The schema class whose keys are allowed at ``loc`` (the parent of an unknown key)."""
    for part in reversed(loc):
        if isinstance(part, str):
            if part in TAGGED:
                return TAGGED[part]
            return FIELD_CLASS.get(part, ManifestDocument)
    return ManifestDocument


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def schema_message(error: ErrorDetails) -> str:
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


class Checker:
    """Consistency checks that the schema cannot express; runs on every part that passed the schema."""

    def __init__(
        self, nodes: NodeIndex, folder: Path, root: Path, model_type: str, *, outside_folders: bool = False
    ) -> None:
        self.nodes, self.folder, self.root, self.model_type = nodes, folder, root, model_type
        self.outside_folders = outside_folders  # model folders may be outside the repository (local runs)
        self.problems: list[Problem] = []
        self.step_configs: dict[str, dict[str, Any] | None] = {}  # a step's output: its base's config.json

    def fail(self, loc: Loc, message: str, *, key: bool = False) -> None:
        self.problems.append(self.nodes.problem(loc, message, key=key))

    # ---- paths ---------------------------------------------------------------------------------------------
    def path(self, loc: Loc, value: str, *, kind: Literal["file", "folder"]) -> Path | None:
        """Resolve a manifest path (symlinks too) and require it present, and inside the repository unless it
        is a model folder of a local run (``outside_folders``): the Action reads nothing outside its checkout."""
        resolved = (self.folder / value).resolve()
        confined = kind == "file" or not self.outside_folders
        if confined and not resolved.is_relative_to(self.root):
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
        merge = _try(MergeOptions, raw.get("merge", {}))
        own = [getattr(entry, "parameters", None) for entry in entries]
        method = self.method(prefix, merge, own) if merge is not None else None
        if merge is None and isinstance(raw.get("merge"), dict):
            # Another merge option is wrong (the schema said which): the method and its parameters still
            # get checked, so that one run of `validate` lists every problem.
            chosen = {key: raw["merge"][key] for key in ("method", "parameters") if key in raw["merge"]}
            partial = _try(MergeOptions, chosen)
            if partial is not None:
                self.method(prefix, partial, own)
        self.configs(prefix, raw.get("name"), sources, base)
        weights = _try(WEIGHTS, raw.get("weights"))
        given = [getattr(entry, "weight", None) is not None for entry in entries if entry is not None]
        chosen_method = (
            raw["merge"].get("method", "linear") if isinstance(raw.get("merge"), dict) else "linear"
        )
        method_class = METHODS.get(chosen_method) if isinstance(chosen_method, str) else None
        mode, examples_path = self.weights(
            prefix, weights, sources, given, raw.get("weights") is not None, method_class
        )
        complete = None not in entries and None not in sources
        present = [source for source in sources if source is not None]
        if method is not None and mode is not None and complete:
            labels = [s.label for s in present]
            base_label = base.label if base is not None else None
            try:
                method.check_base(base_label)
            except CocktailError as error:
                self.fail((*prefix, "merge", "method"), str(error))
            else:
                weights_given = [s.weight for s in sources] if mode == "explicit" else None  # type: ignore
                try:
                    method.check_recipe(labels, weights_given, base_label)
                except CocktailError as error:
                    self.fail((*prefix, "models"), str(error), key=True)
        if len(self.problems) > before or mode is None or not complete or merge is None or not entries:
            return None
        return StepSpec(
            raw["name"],
            tuple(present),
            mode,
            weights if mode == "examples" else None,
            examples_path,
            merge,
            base,
        )

    def source(self, loc: Loc, entry: Any, earlier: list[Any], all_names: list[Any]) -> SourceSpec | None:
        weight = getattr(entry, "weight", None)
        if isinstance(weight, (list, dict)):  # a per-layer list or filtered values (mergekit's forms)
            try:
                entry = entry.model_copy(update={"weight": check_weight(weight)})
            except SettingError as error:
                self.fail((*loc, "weight", *error.where), f"weight: {error}")
                return None
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
            return SourceSpec(
                f"{STEP_PREFIX}{entry.step}", "step", entry.step, None, entry.weight, entry.parameters
            )
        parameters = None
        if isinstance(entry, str):
            weight = None
            reference, revision = split_revision(entry)
        else:
            reference, weight, revision, parameters = entry.id, entry.weight, entry.revision, entry.parameters
        label = f"{reference}@{revision}" if revision else reference
        if not is_local(reference) and not revision and (self.folder / reference).is_dir():
            self.fail(
                loc if isinstance(entry, str) else (*loc, "id"),
                f"{reference!r} is read as a Hub repo id, but {self.folder / reference} is a folder: write "
                f"'./{reference}' for the folder, or '{reference}@main' for the Hub repo",
            )
            return None
        if is_local(reference):
            folder = self.path(loc if isinstance(entry, str) else (*loc, "id"), reference, kind="folder")
            if folder is None:
                return None
            return SourceSpec(label, "local", str(folder), None, weight, parameters)
        return SourceSpec(label, "hub", reference, revision, weight, parameters)

    def configs(
        self, prefix: Loc, name: Any, sources: list[SourceSpec | None], base: SourceSpec | None
    ) -> None:
        """Each local model's config.json against the manifest's type and the base's family; Hub sources are
        checked when `plan` or `run` pins them (:func:`cocktail_bot.resolution.resolve_sources`)."""
        present = [(index, source) for index, source in enumerate(sources) if source is not None]
        if self.model_type not in MODEL_TYPES or not present:
            return
        base = base or present[0][1]
        configs = {source.label: self.config_of(source) for source in (*(s for _, s in present), base)}
        problems = config_problems(self.model_type, list(configs.items()), base.label)
        for index, source in present:
            if source.label in problems:
                self.fail((*prefix, "models", index), problems.pop(source.label))
        if base.label in problems:
            self.fail((*prefix, "base"), problems[base.label])
        if isinstance(name, str):
            self.step_configs[name] = configs[base.label]

    def config_of(self, source: SourceSpec) -> dict[str, Any] | None:
        if source.kind == "step":
            return self.step_configs.get(source.ref)
        return read_config(Path(source.ref)) if source.kind == "local" else None

    def weights(
        self,
        prefix: Loc,
        weights: Any,
        sources: list[SourceSpec | None],
        given: list[bool],
        present: bool,
        method: type[MergeMethod] | None,
    ) -> tuple[Any, Path | None]:
        """The step's weights mode; ``given`` says which valid entries carry a weight. A method that uses no
        per-model weights (slerp) needs none; computing them from examples would be work thrown away."""
        if present and weights is None:  # invalid 'weights:', already reported by the schema
            return None, None
        if method is not None and not method.uses_weights and weights in (None, "uniform") and not any(given):
            return "unused", None
        if method is not None and not method.uses_weights and weights not in (None, "uniform"):
            self.fail(
                (*prefix, "weights"),
                f"merge method {method.name!r} does not use per-model weights (its parameters set the "
                "mix), so there is nothing to compute from examples: remove 'weights:'",
                key=True,
            )
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

    def method(
        self, prefix: Loc, merge: MergeOptions, own: list[dict[str, Any] | None]
    ) -> MergeMethod | None:
        """The step's method with its parameters (the merge's, and each model's ``own``), or its problem at the
        line of the value that is wrong."""
        known = list(METHODS)
        if merge.method not in known:
            self.fail(
                (*prefix, "merge", "method"),
                f"unknown merge method {merge.method!r}; {did_you_mean(merge.method, known)}",
            )
            return None
        try:
            return get_method(merge.method, merge.parameters, own)
        except SettingError as error:
            where = error.where
            loc = (*prefix, *where) if where[:1] == ("models",) else (*prefix, "merge", "parameters", *where)
            self.fail(loc, str(error), key=_names_key(loc, error))
            return None
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


def _names_key(loc: Loc, error: Exception) -> bool:
    """Point at the key, not the value, for an unknown parameter name."""
    return str(error).startswith(("unknown parameter", "parameter ")) and isinstance(loc[-1], str)


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
