"""One memory model: the engine sizes its buffers with it, `plan` estimates with it, for every method."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cocktail_bot import engine
from cocktail_bot.manifest import load_manifest
from cocktail_bot.memory import merge_memory, runtime_baseline, scoring_memory
from cocktail_bot.methods import get_method
from cocktail_bot.model_files import largest_float_tensor
from cocktail_bot.plan import build_plan

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "linear": {},
    "task_arithmetic": {},
    "ties": {"density": 0.5},
    "dare_linear": {"density": 0.5},
    "dare_ties": {"density": 0.5},
    "slerp": {"t": 0.3},
    "breadcrumbs": {"density": 0.5},
    "della": {"density": 0.5},
    "model_stock": {},
    "nuslerp": {},
    "multislerp": {},
    "karcher": {},
    "sce": {"select_topk": 0.5},
}
MANIFEST = """\
version: 1
name: memory
type: decoder
models:
{models}
base: ./models/a
merge: {{method: {method}, parameters: {parameters}}}
"""


def _recipe(root: Path, models: list[Path], method: str) -> Path:
    (root / ".git").mkdir(parents=True, exist_ok=True)
    names = "abc"[: len(models)] if method != "slerp" else "ab"
    for name, folder in zip(names, models, strict=False):
        (root / "models").mkdir(exist_ok=True)
        shutil.copytree(folder, root / "models" / name)
    weight = 1 / len(names) if method != "slerp" else 0.5
    entries = "\n".join(f"  - {{id: ./models/{name}, weight: {weight}}}" for name in names)
    path = root / "cocktail.yml"
    path.write_text(MANIFEST.format(models=entries, method=method, parameters=METHODS[method] or "{}"))
    return path


@pytest.mark.parametrize("method", list(METHODS))
def test_plan_estimates_what_the_engine_holds(method, tmp_path: Path, tiny_llamas: list[Path]):
    """The same numbers, for every method: plan's merge estimate is the buffers the engine allocated."""
    manifest = load_manifest(_recipe(tmp_path / "repo", tiny_llamas, method))
    plan = build_plan(manifest)
    step = manifest.steps[0]
    paths = [Path(source.ref) for source in step.models]
    result = engine.merge(
        paths,
        step.explicit_weights,
        tmp_path / "out",
        model_type="decoder",
        base=paths[0],
        method=method,
        method_params=METHODS[method],
        progress=False,
    )
    assert plan.memory.merge_bytes == result.memory.total
    assert plan.peak_memory_bytes == runtime_baseline() + result.memory.total


@pytest.mark.parametrize("method", ["ties", "dare_linear", "dare_ties", "slerp"])
def test_whole_tensor_methods_hold_a_row_of_the_largest_tensor_per_input(method, tiny_llamas: list[Path]):
    largest = largest_float_tensor(tiny_llamas[0])
    assert largest is not None and largest > 0
    inputs = 2 if method == "slerp" else 3
    memory = merge_memory(
        get_method(method, METHODS[method]),
        inputs=inputs,
        input_itemsize=4,
        output_itemsize=4,
        largest_numel=largest,
        wide_itemsize=4,
    )
    assert memory.rows.total == inputs * largest * 4
    assert memory.temporaries >= largest * 4  # the method's whole-tensor temporaries and the output
    elementwise = merge_memory(
        get_method("linear"),
        inputs=3,
        input_itemsize=4,
        output_itemsize=4,
        largest_numel=largest,
        wide_itemsize=8,
    )
    assert elementwise.rows.total == 0 and elementwise.temporaries == 0
    assert memory.total > elementwise.total - elementwise.scratch.total


def test_the_quickstart_plan_counts_the_runtime_and_the_scoring_model():
    """#16 item 14: the quickstart (example weights, two eval sets) holds the interpreter, torch and the model
    that scoring runs; the merge of three tiny models is the smaller phase."""
    plan = build_plan(load_manifest(ROOT / "examples" / "quickstart" / "cocktail.yml"))
    weights = max(source.weight_bytes for source in plan.sources)
    assert plan.memory.baseline_bytes == runtime_baseline()
    assert plan.memory.scoring_bytes == scoring_memory(weights, 4) > weights
    assert plan.peak_memory_bytes == runtime_baseline() + max(
        plan.memory.merge_bytes, plan.memory.scoring_bytes
    )
    assert plan.peak_memory_bytes > 400 * 10**6  # it peaks at 0.4 to 0.8 GB; the old estimate said 2.6 MB
