"""`cocktail import-mergekit`: a mergekit (0.1.5) config translated into a cocktail.yml manifest.

What has an equivalent is translated: the models (Hub ids with their revisions, local folders), ``base_model``,
``merge_method``, every parameter (per model, per layer, filter-scoped: the same forms, see
:mod:`cocktail_bot.parameter_values`), ``dtype`` / ``out_dtype``, ``tokenizer_source: base``, and one slice that
spans every layer of each model (checked against each model's config.json: the same merge as ``models:``). What
cocktail-bot does not do is refused by name with its line: other ``slices``, ``modules`` and ``passthrough``
(layer stacking), LoRA references, tokenizer merging (``tokenizer_source: union`` or another model, added tokens),
chat templates, methods it does not have, per-layer weights for ``linear``. Differences that keep the result are
said as comments at the top of the manifest (mergekit's linear ``normalize``, dropped ``int8_mask``, the compute
dtype, a slice read as whole models).

Pure: text in, text out. Free of torch.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cocktail_bot.dtypes import canonical_dtype
from cocktail_bot.errors import CocktailError
from cocktail_bot.methods import EXACT_SUM, METHODS, MergeMethod, get_method
from cocktail_bot.parameter_values import SettingError, check_weight, is_scalar
from cocktail_bot.references import check_reference, is_local
from cocktail_bot.yaml_lines import Loc, NodeIndex, Problem, load

KEYS = (
    "models",
    "slices",
    "modules",
    "merge_method",
    "base_model",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "parameters",
)
OUTPUT_DTYPES = ("float32", "bfloat16", "float16")
DROPPED = {"int8_mask": "int8_mask (a memory saving of mergekit's; the result is the same)"}
NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class _Translator:
    nodes: NodeIndex
    folder: Path  # where local model paths are read from (the current folder)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    models_at: Loc = ("models",)  # where the model entries are written (a slice's sources, when translated)
    slice_reported: bool = False  # one slice that cannot be read as models: its problems said why

    def fail(self, loc: Loc, message: str, *, key: bool = False) -> None:
        self.problems.append(self.nodes.problem(loc, message, key=key))

    def reference(self, loc: Loc, value: Any) -> str | None:
        """A mergekit model reference as the manifest writes it: 'org/name@rev', or './path' for a folder."""
        if isinstance(value, dict):  # {model: {path: ..., revision: ...}, lora: ...}
            if value.get("lora") is not None:
                self.fail(
                    (*loc, "lora"),
                    "LoRA adapters are not merged by cocktail-bot: merge the adapter into "
                    "its model first (peft's merge_and_unload) and name that model",
                )
                return None
            inner = value.get("model")
            if not isinstance(inner, dict) or not isinstance(inner.get("path"), str):
                self.fail(loc, f"expected a model reference, got {_short(value)}")
                return None
            revision = inner.get("revision")
            value = inner["path"] + (f"@{revision}" if revision else "")
        if not isinstance(value, str) or not value:
            self.fail(loc, f"expected a model reference, got {_short(value)}")
            return None
        if "+" in value:
            self.fail(
                loc,
                f"{value!r} names a LoRA adapter ('model+lora'): cocktail-bot does not merge adapters; "
                "merge the adapter into its model first (peft's merge_and_unload) and name that model",
            )
            return None
        path = (self.folder / value).resolve()
        if path.exists():  # mergekit reads an existing path as a local folder, whatever it looks like
            relative = os.path.relpath(path, self.folder)
            if relative.startswith(".."):
                return str(path)
            return relative if is_local(relative) else f"./{relative}"
        try:
            return check_reference(value)
        except ValueError as error:
            self.fail(loc, str(error))
            return None

    def one_slice(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` with one slice that spans every layer of each model (``layer_range: [0, N]``, N its
        layers) read as ``models:``, the same merge; another slice layout is refused with the reason."""
        slices = data.get("slices")
        if not isinstance(slices, list) or len(slices) != 1 or data.get("models") or data.get("modules"):
            return data
        (piece,) = slices
        sources = piece.get("sources") if isinstance(piece, dict) else None
        if not isinstance(sources, list) or not sources or not all(isinstance(s, dict) for s in sources):
            return data
        loc: Loc = ("slices", 0)
        problems = len(self.problems)
        for key in piece:
            if key not in ("sources", "parameters", "base_model"):
                self.fail((*loc, key), f"unknown key {key!r} in a slice; remove it", key=True)
        ranges = [source.get("layer_range") for source in sources]
        ends = {tuple(r)[1] for r in ranges if isinstance(r, list) and len(r) == 2 and r[0] == 0}
        if len(ends) != 1 or any(not (isinstance(r, list) and len(r) == 2 and r[0] == 0) for r in ranges):
            self.fail(
                (*loc, "sources"),
                "cocktail-bot merges whole models: one slice is translated when every source's layer_range is "
                f"[0, N] with the same N (every layer), got {ranges}",
            )
            self.slice_reported = True
            return data
        (end,) = ends
        for index, source in enumerate(sources):
            layers = self.layer_count((*loc, "sources", index, "model"), source.get("model"))
            if layers is not None and layers != end:
                self.fail(
                    (*loc, "sources", index, "layer_range"),
                    f"layer_range [0, {end}] is not every layer of this model ({layers} layers): cocktail-bot "
                    "merges whole models, not layer ranges",
                )
        shared = dict(data.get("parameters") or {})
        for key in piece.get("parameters") or {}:
            if key in shared:
                self.fail(
                    (*loc, "parameters", key),
                    f"{key!r} is set for the slice and for the whole merge: keep one (the manifest has one place)",
                )
        base = piece.get("base_model")
        if base is not None and data.get("base_model") not in (None, base):
            self.fail((*loc, "base_model"), "the slice's base_model differs from the merge's: keep one")
        if len(self.problems) > problems:
            self.slice_reported = True
            return data
        self.models_at = (*loc, "sources")
        self.notes.append(
            f"one slice of every layer ([0, {end}]) of each model: the merge of the whole models"
        )
        models = [{k: v for k, v in source.items() if k != "layer_range"} for source in sources]
        rest = {key: value for key, value in data.items() if key != "slices"}
        return {
            **rest,
            "models": models,
            "parameters": {**shared, **(piece.get("parameters") or {})},
            "base_model": data.get("base_model") or base,
        }

    def layer_count(self, loc: Loc, reference: Any) -> int | None:
        """The number of layers in a model's config.json (a local folder, or the Hub's), or None with the
        problem recorded."""
        import json

        label = self.reference(loc, reference)
        if label is None:
            return None
        try:
            if is_local(label) or Path(label).is_absolute():
                config = json.loads((self.folder / label / "config.json").read_text())
            else:
                from huggingface_hub import hf_hub_download

                repo_id, _, revision = label.partition("@")
                path = hf_hub_download(repo_id, "config.json", revision=revision or None)
                config = json.loads(Path(path).read_text())
        except Exception as error:  # any reason the config cannot be read: said, with the model
            self.fail(
                loc,
                f"cannot read {label}'s config.json to check that the slice spans every layer "
                f"({type(error).__name__}); list the models under 'models:' instead",
            )
            return None
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(config.get(key), int):
                return int(config[key])
        self.fail(loc, f"{label}'s config.json names no layer count; list the models under 'models:' instead")
        return None

    def refuse(self, data: dict[str, Any]) -> None:
        """What cocktail-bot does not do, by name, at its line."""
        for key in data:
            if key not in KEYS:
                self.fail(
                    (key,), f"unknown mergekit key {key!r} (mergekit ignores it too); remove it", key=True
                )
        for key in ("slices", "modules"):
            if data.get(key) is not None and not (key == "slices" and self.slice_reported):
                self.fail(
                    (key,),
                    "cocktail-bot merges whole models of one architecture, not layer ranges or modules: only one "
                    "slice spanning every layer of each model (that merge) is translated",
                    key=True,
                )
        if data.get("merge_method") == "passthrough":
            self.fail(
                ("merge_method",),
                "passthrough stacks layers of several models (a frankenmerge): "
                "cocktail-bot merges models of one architecture tensor by tensor",
            )
        source = data.get("tokenizer_source")
        if source == "union":
            self.fail(
                ("tokenizer_source",),
                "union merges the models' tokenizers: "
                "cocktail-bot takes the base's tokenizer (remove the key, or use 'base')",
            )
        elif source not in (None, "base") and source != data.get("base_model"):
            self.fail(
                ("tokenizer_source",),
                f"{source!r}: cocktail-bot takes the tokenizer "
                "from the base model; make that model the base_model, or use 'base'",
            )
        tokenizer = data.get("tokenizer")
        if isinstance(tokenizer, dict):
            for key, value in tokenizer.items():
                if key == "source" and value in ("base", data.get("base_model")):
                    continue
                if key in ("tokens", "pad_to_multiple_of") and not value:
                    continue
                self.fail(
                    ("tokenizer", key),
                    "cocktail-bot takes the base's tokenizer as it "
                    "is (no merged vocabulary, no added tokens, no padding); remove it",
                )
        elif tokenizer is not None:
            self.fail(("tokenizer",), f"expected a mapping {{source: base}}, got {_short(tokenizer)}")
        if data.get("chat_template") is not None:
            self.fail(
                ("chat_template",),
                "cocktail-bot keeps the base's chat template (its "
                "tokenizer files); remove the key, or give the base the template you want",
            )

    def dtype(self, data: dict[str, Any]) -> str | None:
        key = "out_dtype" if data.get("out_dtype") is not None else "dtype"
        value = data.get(key)
        if value is None:
            return None
        try:
            name = canonical_dtype(str(value))
        except ValueError as error:
            self.fail((key,), str(error))
            return None
        if name not in OUTPUT_DTYPES:
            self.fail((key,), f"{value!r}: cocktail-bot writes {', '.join(OUTPUT_DTYPES)}")
            return None
        if key == "dtype" and name != "float32":
            self.notes.append(
                f"mergekit computes in dtype {name}; cocktail-bot computes in float32 and writes {name} "
                f"(values may differ by {name}'s rounding)"
            )
        return name


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: Any) -> Any:
    """YAML reads 1e-3 (no dot) as a string; mergekit's pydantic reads it as a number: so does the translation."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    if isinstance(value, list):
        return [_number(item) for item in value]
    if isinstance(value, dict):
        return {key: _number(item) for key, item in value.items()}
    return value


def translate(text: str, *, display: str, name: str, model_type: str, folder: Path | None = None) -> str:
    """The manifest for a mergekit config's text, or CocktailError listing ``FILE:LINE: key: message`` lines."""
    root, data, yaml_problems = load(text)
    if root is None or not isinstance(data, dict):
        problems = yaml_problems or [
            Problem(1, "(config)", "a mergekit config is a mapping (models, merge_method...)")
        ]
        raise _problems(display, problems)
    translator = _Translator(NodeIndex(root), (folder or Path.cwd()).resolve())
    data = translator.one_slice(data)
    translator.refuse(data)
    method_name = data.get("merge_method")
    method_class = METHODS.get(method_name) if isinstance(method_name, str) else None
    if method_name is None:
        translator.fail((), "no merge_method: mergekit needs one")
    elif method_class is None and method_name != "passthrough":
        translator.fail(
            ("merge_method",),
            f"merge method {method_name!r} is not one of cocktail-bot's ({', '.join(METHODS)})",
        )
    models = data.get("models")
    if not isinstance(models, list) or not models:
        if data.get("slices") is None and data.get("modules") is None:
            translator.fail(("models",), "no models: list them under 'models:'")
        raise _problems(display, translator.problems)
    base = translator.reference(("base_model",), data["base_model"]) if data.get("base_model") else None
    shared = _number(dict(data.get("parameters") or {}))
    default_weight = shared.pop("weight", None)
    for key, why in DROPPED.items():
        if shared.pop(key, None) is not None:
            translator.notes.append(f"dropped {why}")
    entries: list[dict[str, Any]] = []
    origin: list[int] = []  # each entry's index in the config's models
    for index, model in enumerate(models):
        loc: Loc = (*translator.models_at, index)
        if not isinstance(model, dict) or "model" not in model:
            translator.fail(loc, f"expected {{model: REFERENCE, parameters: {{...}}}}, got {_short(model)}")
            continue
        for key in model:
            if key not in ("model", "parameters"):
                translator.fail((*loc, key), f"unknown key {key!r} in a model entry; remove it", key=True)
        reference = translator.reference((*loc, "model"), model["model"])
        if reference is None:
            continue
        own = _number(dict(model.get("parameters") or {}))
        weight = own.pop("weight", default_weight)
        given_here = "weight" in (model.get("parameters") or {})
        where: Loc = (*loc, "parameters", "weight") if given_here else ("parameters", "weight")
        if weight is not None and not is_scalar(weight):  # a per-layer list or filtered values
            if method_name == "linear":
                translator.fail(
                    where,
                    "cocktail-bot's linear takes one weight per model (they sum to 1): per-layer or filtered "
                    "weights are for the methods with a base",
                )
                weight = None
            else:
                try:
                    weight = check_weight(weight)
                except SettingError as error:
                    translator.fail((*where, *error.where), f"weight: {error}")
                    weight = None
        elif weight is not None and (isinstance(weight, (bool, str)) or not math.isfinite(weight)):
            translator.fail(where, f"a weight is a finite number, got {_short(weight)}")
            weight = None
        entry: dict[str, Any] = {"id": reference}
        if weight is not None:
            entry["weight"] = weight if isinstance(weight, list) else float(weight)
        if own:
            entry["parameters"] = own
        if method_class is not None and method_class.needs_base and reference == base:
            continue  # the base is no task vector: the manifest's `base:` names it
        entries.append(entry)
        origin.append(index)
    manifest: dict[str, Any] = {"version": 1, "name": name, "type": model_type}
    if method_class is not None and method_class.needs_base and base is None:
        translator.fail(("merge_method",), f"merge method {method_name!r} needs base_model (mergekit's too)")
    if method_class is not None and not translator.problems:
        _weights(translator, method_class, entries, origin, shared, base, models)
        _check_method(translator, method_class.name, shared, entries, origin)
    if translator.problems:
        raise _problems(display, translator.problems)
    if base is not None:
        manifest["base"] = base
    manifest["models"] = [entry["id"] if list(entry) == ["id"] else entry for entry in entries]
    merge: dict[str, Any] = {"method": method_name}
    if shared:
        merge["parameters"] = shared
    dtype = translator.dtype(data)
    if translator.problems:
        raise _problems(display, translator.problems)
    if dtype is not None:
        merge["dtype"] = dtype
    manifest["merge"] = merge
    header = [f"# translated from {display} by `cocktail import-mergekit`"]
    header += [f"# note: {note}" for note in translator.notes]
    body = yaml.safe_dump(manifest, sort_keys=False, default_flow_style=None, width=110)
    return "\n".join(header) + "\n" + body


def _weights(
    translator: _Translator,
    method_class: type[MergeMethod],
    entries: list[dict[str, Any]],
    origin: list[int],
    shared: dict[str, Any],
    base: str | None,
    models: list[Any],
) -> None:
    """Weights as the manifest takes them: none for methods that use none; one per model otherwise (mergekit
    requires them too); mergekit's linear divides them by their sum unless ``normalize: false``."""
    if not method_class.uses_weights:
        if any("weight" in entry for entry in entries):
            translator.notes.append(f"dropped the models' weights: {method_class.name} does not use them")
        for entry in entries:
            entry.pop("weight", None)
        return
    for entry, index in zip(entries, origin, strict=True):
        if "weight" not in entry:
            translator.fail(
                (*translator.models_at, index),
                "no weight: mergekit needs one per model (parameters: {weight: ...})",
            )
    if translator.problems or method_class.name != "linear":
        return
    if base is not None and base not in [entry["id"] for entry in entries]:
        translator.fail(
            ("base_model",),
            "mergekit's linear merges the base_model too (it is added to the "
            "models): list it among the models with its weight",
        )
        return
    normalize = shared.pop("normalize", True)
    weights = [entry["weight"] for entry in entries]
    total = math.fsum(weights)
    if abs(total - 1.0) <= EXACT_SUM:
        return
    if normalize is not True:
        translator.fail(
            ("parameters", "normalize"),
            f"linear with normalize: false and weights summing to {total:g} "
            "is no weighted average: cocktail-bot's linear takes weights that sum to 1",
        )
        return
    for entry in entries:
        entry["weight"] = entry["weight"] / total
    translator.notes.append(
        f"mergekit's linear divides the weights by their sum ({total:g}): written divided"
    )


def _check_method(
    translator: _Translator,
    method: str,
    shared: dict[str, Any],
    entries: list[dict[str, Any]],
    origin: list[int],
) -> None:
    """The method takes these parameters, or each problem at its line in the config."""
    try:
        get_method(method, shared, [entry.get("parameters") for entry in entries])
    except SettingError as error:
        where = error.where
        if where[:1] == ("models",):
            where = (*translator.models_at, origin[int(where[1])], *where[2:])
        else:
            where = ("parameters", *where)
        translator.fail(where, str(error))
    except CocktailError as error:
        translator.fail(("merge_method",), str(error))


def _problems(display: str, problems: list[Problem]) -> CocktailError:
    problems = sorted(problems, key=lambda problem: problem.line)
    lines = [f"{display}:{p.line}: {p.loc}: {p.message}" for p in problems]
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    return CocktailError(f"{display} cannot be translated, {count}:\n" + "\n".join(lines))


def default_name(path: Path) -> str:
    """A manifest name from the config's file name."""
    name = NAME_CHARACTERS.sub("-", path.stem).strip("-._")
    return name[:96] or "merged"
