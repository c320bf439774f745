"""`cocktail plan`: what a run would do and need (pinned sources, steps, memory, disk), without downloading.

Sources are pinned with the Hub's metadata only (``resolve_source(download=False)``), so planning a 70B recipe
takes seconds. Disk sizes are estimates from file sizes; memory comes from :mod:`cocktail_bot.memory`, the model
the engine sizes its buffers with, over the tensor shapes in local sources' safetensors headers (Hub sources,
whose weights plan does not read, are assumed to have their largest tensor hold ``LARGEST_TENSOR_SHARE`` of the
model, as a vocabulary of ``UNKNOWN_ROW_WIDTH``-wide rows), and for scoring over the example files' texts (each
text at most one token per UTF-8 byte).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from cocktail_bot import __version__
from cocktail_bot.dtypes import DTYPE_BYTES
from cocktail_bot.manifest import load_manifest
from cocktail_bot.memory import (
    CHARS_PER_TOKEN,
    FLOAT32,
    FLOAT64,
    merge_memory,
    peak_memory,
    runtime_baseline,
    scoring_memory,
    wave_tokens,
)
from cocktail_bot.methods import get_method
from cocktail_bot.model_files import largest_float_shape
from cocktail_bot.model_types import PIPELINE_TAG, ModelType
from cocktail_bot.parameter_values import format_setting
from cocktail_bot.preflight import Machine, Needs, Preflight, check, measure
from cocktail_bot.recipe import Manifest, StepSpec
from cocktail_bot.records import PinnedSource, StepRecord
from cocktail_bot.references import STEP_PREFIX
from cocktail_bot.report import Provenance, Report, SourceReport, StepReport
from cocktail_bot.resolution import resolve_sources
from cocktail_bot.sizes import format_size, parse_size
from cocktail_bot.sources import ResolvedSource

WEIGHT_SUFFIXES = (".safetensors", ".bin")
# The largest tensor of a model whose shapes plan cannot read, as a share of its weights: an embedding or
# LM head is a few percent of an LLM's parameters, so this errs on the safe side.
LARGEST_TENSOR_SHARE = 1 / 8
# ... and its rows this wide, so that its first dimension stands for the vocabulary (real LLMs' rows are wider:
# fewer, so the logits are overestimated).
UNKNOWN_ROW_WIDTH = 1024
# What evaluation scores with (evaluate.evaluate's defaults, which the pipeline keeps).
EVAL_BATCH_SIZE = 2
EVAL_MAX_INPUT_LENGTH = 2048
EVAL_NEG_NUMBER = 7
SPECIAL_TOKENS = 3  # per text (or query-passage pair): BOS/EOS, CLS/SEP


class PlannedSource(PinnedSource):
    download_bytes: int = Field(
        description="bytes a run downloads: files not in the cache yet, weights only where they are not read"
        " in place (0 for local folders)"
    )
    weight_bytes: int


class PlannedStep(StepRecord):
    weights: str = Field(description="how the weights are found")
    output_bytes: int


class MemoryEstimate(BaseModel):
    """The parts of ``peak_memory_bytes`` (see :mod:`cocktail_bot.memory`)."""

    baseline_bytes: int = Field(description="the interpreter, torch and transformers, imported")
    merge_bytes: int = Field(description="the largest merge step's buffers")
    scoring_bytes: int = Field(
        description="example weights and evaluation: one tensor's weights at a time (block-streamed), and the"
        " activations of the examples scored together"
    )


class Plan(BaseModel):
    name: str
    model_type: str
    manifest: str
    manifest_sha256: str
    sources: list[PlannedSource]
    steps: list[PlannedStep]
    download_bytes: int
    output_bytes: int
    disk_bytes: int = Field(
        description="downloads plus every step's output (intermediate steps are deleted after)"
    )
    peak_memory_bytes: int = Field(
        description="estimated: the runtime baseline plus the larger of streaming merge and example inference"
    )
    memory: MemoryEstimate
    max_memory_bytes: int | None = None
    output_repo: str | None
    private: bool
    preflight: Preflight | None = Field(
        None, description="the run's needs against this machine's free disk, memory and GPU memory"
    )


def build_plan(manifest: Manifest, *, token: str | None = None, endpoint: str | None = None) -> Plan:
    resolved = resolve_sources(manifest, None, token=token, endpoint=endpoint, download=False)
    sources = [
        PlannedSource(
            **source.pinned(),
            download_bytes=_missing_bytes(source),
            weight_bytes=sum(size for name, size in source.sizes.items() if name.endswith(WEIGHT_SUFFIXES)),
        )
        for source in resolved.values()
    ]
    weight_bytes = {source.label: source.weight_bytes for source in sources}
    steps: list[PlannedStep] = []
    merge_peak = scoring_peak = 0
    shapes: dict[str, tuple[int, ...] | None] = {
        label: _largest_shape(source) for label, source in resolved.items()
    }
    eval_tokens = max(
        (
            _example_tokens(
                path, manifest.model_type, EVAL_BATCH_SIZE, EVAL_MAX_INPUT_LENGTH, EVAL_NEG_NUMBER
            )
            for path in manifest.eval_sets.values()
        ),
        default=0,
    )
    for step in manifest.steps:
        inputs = [weight_bytes.get(source.label, 0) for source in step.models]
        largest = max(inputs, default=0)
        source_dtype = _source_dtype(step, resolved)  # read once: both estimates below scale by it
        output = _scaled(largest, source_dtype, step.merge.dtype)
        weight_bytes[f"{STEP_PREFIX}{step.name}"] = output
        steps.append(
            PlannedStep(
                name=step.name,
                models=[s.label for s in step.models],
                method=step.merge.method,
                method_params=dict(step.merge.parameters),
                model_params=step.model_params if any(step.model_params) else None,
                weights=describe_weights(step, manifest),
                output_bytes=output,
            )
        )
        itemsize = (
            DTYPE_BYTES[source_dtype] if source_dtype else FLOAT32
        )  # unknown: as float32, the widest usual
        known = [shape for source in step.models if (shape := shapes.get(source.label)) is not None]
        shape = max(known, key=math.prod, default=None)
        if shape is None:
            numel = int(largest * LARGEST_TENSOR_SHARE) // itemsize
            shape = (max(1, numel // UNKNOWN_ROW_WIDTH), UNKNOWN_ROW_WIDTH)
        shapes[f"{STEP_PREFIX}{step.name}"] = shape
        merge_peak = max(merge_peak, _merge_bytes(step, itemsize, math.prod(shape)))
        scoring_peak = max(
            scoring_peak, _scoring_bytes(step, manifest, largest // itemsize, shape, itemsize, eval_tokens)
        )
    download = sum(source.download_bytes for source in sources)
    max_memory = manifest.steps[-1].merge.max_memory
    return Plan(
        name=manifest.name,
        model_type=manifest.model_type,
        manifest=manifest.relative_path,
        manifest_sha256=manifest.sha256,
        sources=sources,
        steps=steps,
        download_bytes=download,
        output_bytes=steps[-1].output_bytes,
        disk_bytes=download + sum(step.output_bytes for step in steps),
        peak_memory_bytes=peak_memory(merge_peak, scoring_peak),
        memory=MemoryEstimate(
            baseline_bytes=runtime_baseline(), merge_bytes=merge_peak, scoring_bytes=scoring_peak
        ),
        max_memory_bytes=None if max_memory == "auto" else parse_size(max_memory),
        output_repo=manifest.output.repo,
        private=manifest.output.private,
    )


def _missing_bytes(source: Any) -> int:
    """Bytes of a Hub source's files that the run downloads: those the local Hugging Face cache does not hold
    yet, weights left out since the run reads them in place (0 for a folder)."""
    if not source.repo_id:
        return 0
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> bool:
        return isinstance(
            try_to_load_from_cache(source.repo_id, name, revision=source.resolved_revision), str
        )

    return sum(
        size for name, size in source.sizes.items() if not name.endswith(WEIGHT_SUFFIXES) and not cached(name)
    )


def run_needs(plan: Plan, manifest: Manifest, out: Path | None, device: str | None = None) -> Needs:
    """What a run of ``plan`` writes where, and the memory (and GPU memory) it holds.

    Downloads land in the Hugging Face cache (only the small files of Hub sources: their safetensors weights
    are read in place). Every step's output is built in a work folder beside ``out``; with ``out=None`` (publish
    while merging) the final output passes through the temp folder about two shards at a time. The GPU is
    counted when the run is told to use one (``--device`` or ``merge.device``: cuda or cuda:N).
    """
    from huggingface_hub import constants

    *intermediate, final = plan.steps
    kept = sum(step.output_bytes for step in intermediate)
    disk = [("Hugging Face cache", Path(constants.HF_HUB_CACHE), plan.download_bytes)]
    if out is None:
        shard = min(final.output_bytes, parse_size(manifest.steps[-1].merge.shard_size))
        disk.append(("output shards before upload", Path(tempfile.gettempdir()), kept + 2 * shard))
    else:
        disk.append(("output", out.absolute().parent, kept + final.output_bytes))
    devices = [device] if device else [step.merge.device for step in manifest.steps]
    gpu = next((name for name in devices if name and name.startswith("cuda")), None)
    return Needs(
        disk=[item for item in disk if item[2]],
        memory=plan.peak_memory_bytes,
        gpu=gpu,
        gpu_memory=plan.peak_memory_bytes if gpu else 0,
    )


def with_preflight(
    plan: Plan,
    manifest: Manifest,
    out: Path | None,
    *,
    device: str | None = None,
    machine: Machine | None = None,
) -> Plan:
    """``plan`` with its needs checked against ``machine`` (default: this machine's numbers, read now)."""
    needs = run_needs(plan, manifest, out, device)
    return plan.model_copy(update={"preflight": check(needs, machine or measure(needs))})


def can_run_here(
    manifest_path: str | Path,
    out: str | Path | None = ".",
    *,
    device: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> tuple[bool, str]:
    """Whether this machine can run the manifest into ``out`` (None: publishing with no local copy), and why
    (for ``runner: auto``)."""
    manifest = load_manifest(manifest_path)
    plan = with_preflight(
        build_plan(manifest, token=token, endpoint=endpoint),
        manifest,
        Path(out) if out is not None else None,
        device=device,
    )
    assert plan.preflight is not None
    if plan.preflight.message is not None:
        return False, plan.preflight.message
    return True, "fits this machine: " + "; ".join(item.describe() for item in plan.preflight.checks)


def _largest_shape(source: ResolvedSource) -> tuple[int, ...] | None:
    """The shape of a local source's largest floating-point tensor, from its safetensors headers."""
    return largest_float_shape(source.path) if source.path is not None else None


def _scoring_bytes(
    step: StepSpec,
    manifest: Manifest,
    weight_numel: int,
    shape: tuple[int, ...],
    itemsize: int,
    eval_tokens: int,
) -> int:
    """Scoring this step's models block-streamed (what scoring does on CPU, and on a GPU a model does not fit
    whole): for example weights with the step's options, and on the eval sets (0 when neither runs)."""
    runs: list[tuple[int, int]] = []  # (tokens of the largest wave, compute itemsize)
    options = step.example_weights
    if step.weights_mode == "examples" and options is not None and step.examples_path is not None:
        tokens = _example_tokens(
            step.examples_path,
            manifest.model_type,
            options.batch_size,
            options.max_input_length,
            options.neg_number,
        )
        runs.append((tokens, DTYPE_BYTES[options.dtype] if options.dtype != "auto" else FLOAT32))
    if manifest.eval_sets:
        runs.append((eval_tokens, FLOAT32))
    return max(
        (
            scoring_memory(
                streamed=True,
                weight_numel=weight_numel,
                largest_numel=math.prod(shape),
                width=shape[0],
                tokens=tokens,
                stored_itemsize=itemsize,
                compute_itemsize=compute,
            )
            for tokens, compute in runs
        ),
        default=0,
    )


def _example_tokens(
    path: Path, model_type: str, batch_size: int, max_input_length: int, neg_number: int
) -> int:
    """Tokens of the largest wave of an example file, each text counted as at most one token per UTF-8 byte
    (byte-level and WordPiece tokenizers give no more) plus ``SPECIAL_TOKENS``, capped at ``max_input_length``,
    and each batch padded to its longest text; retrieval examples run the query, the first positive and up to
    ``neg_number`` negatives."""
    from cocktail_bot.examples import load_examples

    def tokens(*texts: str) -> int:
        return min(sum(len(text.encode()) for text in texts) + SPECIAL_TOKENS, max_input_length)

    sequences: list[list[int]] = []  # per example, the token counts of the texts it runs
    for example in load_examples(path, model_type):
        if model_type == ModelType.DECODER.value:
            sequences.append([tokens(example["input"], example["output"])])
            continue
        passages = [example["pos"][0], *example["neg"][:neg_number]]
        if model_type == ModelType.RERANKER.value:
            sequences.append([tokens(example["query"], text) for text in passages])
        else:
            sequences.append([tokens(text) for text in (example["query"], *passages)])
    batches = [sequences[start : start + batch_size] for start in range(0, len(sequences), batch_size)]
    padded = [sum(map(len, batch)) * max(max(counts) for counts in batch) for batch in batches]
    counted = 1 if model_type == ModelType.DECODER.value else CHARS_PER_TOKEN
    return wave_tokens(padded, streamed=True, counted=counted)


def _merge_bytes(step: StepSpec, itemsize: int, largest_numel: int) -> int:
    """The engine's buffers for this step (:func:`cocktail_bot.memory.merge_memory`)."""
    labels = [source.label for source in step.models]
    named_base = step.base.label if step.base is not None else None
    method = get_method(step.merge.method, step.merge.parameters, step.model_params).for_base(named_base)
    base = named_base if named_base is not None else labels[0]
    inputs = len(method.split_base(labels, base)) + (1 if method.needs_base else 0)
    wide = FLOAT64 if method.name == "linear" or itemsize == FLOAT64 else FLOAT32
    output = DTYPE_BYTES[step.merge.dtype] if step.merge.dtype else itemsize
    memory = merge_memory(
        method,
        inputs=inputs,
        input_itemsize=itemsize,
        output_itemsize=output,
        largest_numel=largest_numel,
        wide_itemsize=wide,
    )
    return memory.total


def _source_dtype(step: StepSpec, resolved: dict[str, Any]) -> str | None:
    """The first local source's config dtype (Hub configs are not downloaded by plan)."""
    for source in step.models:
        path = getattr(resolved.get(source.label), "path", None)
        if path is not None and (Path(path) / "config.json").is_file():
            config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
            dtype = config.get("dtype") or config.get("torch_dtype")
            if dtype in DTYPE_BYTES:
                return dtype
    return None


def _scaled(nbytes: int, source: str | None, target: str | None) -> int:
    """``nbytes`` of ``source`` tensors as ``target``; unchanged when either dtype is unknown."""
    if source is None or target is None:
        return nbytes
    return nbytes * DTYPE_BYTES[target] // DTYPE_BYTES[source]


def _relative(path: Path | None, manifest: Manifest) -> str | None:
    return path.relative_to(manifest.root).as_posix() if path is not None else None


def describe_weights(step: StepSpec, manifest: Manifest) -> str:
    if step.weights_mode == "explicit":
        return "given: " + ", ".join(format_setting(w) for w in step.explicit_weights or [])
    if step.weights_mode == "uniform":
        return f"uniform: 1/{len(step.models)} each"
    if step.weights_mode == "unused":
        return f"none: {step.merge.method} uses no per-model weights (its parameters set the mix)"
    assert step.example_weights is not None and step.examples_path is not None
    where = _relative(step.examples_path, manifest)
    return f"from examples {where} (softmax(-loss/{step.example_weights.temperature:g}))"


def render_plan(plan: Plan) -> str:
    """The plan as a person reads it in a terminal or a CI log."""
    steps = f"{len(plan.steps)} step" + ("s" if len(plan.steps) != 1 else "")
    lines = [f"{plan.manifest}: {plan.name} ({plan.model_type}), {steps}", "sources:"]
    for source in plan.sources:
        if source.repo_id:
            lines.append(
                f"  {source.label} -> {source.resolved_revision} "
                f"({format_size(source.download_bytes)} to download)"
            )
        else:
            lines.append(f"  {source.label} (local, {format_size(source.weight_bytes)} of weights)")
    lines.append("steps:")
    for number, step in enumerate(plan.steps, 1):
        lines.append(f"  {number}. {step.name}: {step.method} of {', '.join(step.models)}")
        lines.append(f"     weights {step.weights}; output ~{format_size(step.output_bytes)}")
        if step.method_params or step.model_params:
            lines.append(f"     parameters {_parameters_text(step)}")
    lines.append(
        f"estimates: download {format_size(plan.download_bytes)}, peak memory "
        f"~{format_size(plan.peak_memory_bytes)}, disk ~{format_size(plan.disk_bytes)}, "
        f"output ~{format_size(plan.output_bytes)}"
    )
    if plan.max_memory_bytes is not None and plan.peak_memory_bytes > plan.max_memory_bytes:
        lines.append(
            f"warning: the estimated peak memory exceeds merge.max_memory ({format_size(plan.max_memory_bytes)})"
        )
    if plan.preflight is not None:
        lines.append("this machine:")
        lines.extend(
            f"  {'ok' if item.fits else 'TOO SMALL'}: {item.describe()}" for item in plan.preflight.checks
        )
    target = f"{plan.output_repo} ({'private' if plan.private else 'public'})" if plan.output_repo else "none"
    lines.append(f"publish to: {target}")
    return "\n".join(lines) + "\n"


def plan_manifest(
    path: str | Path,
    *,
    provenance: Provenance | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> Report:
    """The plan as a Report (status "planned"), for the Action's plan mode and PR comment."""
    manifest = load_manifest(path)
    plan = build_plan(manifest, token=token, endpoint=endpoint)
    steps = [
        StepReport(
            **planned.model_dump(include=set(StepRecord.model_fields)),
            weights_mode=spec.weights_mode,
            weights=spec.explicit_weights or [],
            examples=_relative(spec.examples_path, manifest),
            temperature=spec.example_weights.temperature if spec.example_weights else None,
            base=spec.base.label if spec.base else spec.models[0].label,
            dtype=spec.merge.dtype or "as sources",
        )
        for spec, planned in zip(manifest.steps, plan.steps, strict=True)
    ]
    sources = [SourceReport(**s.pinned(), path="") for s in plan.sources]
    return manifest_report(
        manifest, status="planned", sources=sources, steps=steps, provenance=provenance or Provenance()
    )


def manifest_report(manifest: Manifest, **fields: Any) -> Report:
    """A report that names its manifest; a plan and a run each add what they found."""
    model_type = ModelType.parse(manifest.model_type)
    fields.setdefault("pipeline_tag", PIPELINE_TAG[model_type])
    return Report(
        name=manifest.name,
        model_type=model_type.value,
        tool_version=__version__,
        manifest_path=manifest.relative_path,
        manifest_sha256=manifest.sha256,
        manifest_text=manifest.text,
        **fields,
    )


def _parameters_text(step: PlannedStep) -> str:
    """The step's parameters as written: the merge's, then each model's own."""
    shared = [f"{name}={format_setting(value)}" for name, value in step.method_params.items()]
    own = [
        f"{model}: " + ", ".join(f"{name}={format_setting(value)}" for name, value in settings.items())
        for model, settings in zip(step.models, step.model_params or [], strict=False)
        if settings
    ]
    return "; ".join(([", ".join(shared)] if shared else []) + own)
