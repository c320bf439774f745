"""One memory model: the engine sizes its buffers with it, `plan` estimates with it, for every method."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cocktail_bot import engine
from cocktail_bot.manifest import load_manifest
from cocktail_bot.memory import (
    CPU_TORCH_BASELINE_BYTES,
    WAVE_TOKENS,
    activation_bytes,
    merge_memory,
    runtime_baseline,
    scoring_memory,
    wave_tokens,
    waves,
)
from cocktail_bot.methods import get_method
from cocktail_bot.model_files import largest_float_shape, largest_float_tensor
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


def test_the_quickstart_plan_counts_the_runtime_and_block_streamed_scoring():
    """#16 item 14: the quickstart (example weights, two eval sets) holds the interpreter and its libraries and
    the block-streamed scoring of its models; the merge of three tiny models is the smaller phase."""
    plan = build_plan(load_manifest(ROOT / "examples" / "quickstart" / "cocktail.yml"))
    assert plan.memory.baseline_bytes == runtime_baseline()
    assert plan.memory.scoring_bytes > 0
    assert plan.peak_memory_bytes == runtime_baseline() + max(
        plan.memory.merge_bytes, plan.memory.scoring_bytes
    )
    assert plan.peak_memory_bytes > 500 * 10**6  # the run peaks near 0.6 GB; the old estimate said 2.6 MB


def _examples_recipe(root: Path, model: Path, examples: list[dict], rest: str = "") -> Path:
    (root / ".git").mkdir(parents=True)
    shutil.copytree(model, root / "models" / "a")
    shutil.copytree(model, root / "models" / "b")
    (root / "examples.jsonl").write_text("".join(json.dumps(example) + "\n" for example in examples))
    path = root / "cocktail.yml"
    path.write_text(
        "version: 1\nname: scored\ntype: decoder\nmodels: [./models/a, ./models/b]\n"
        f"weights: {{examples: examples.jsonl{rest}}}\n"
    )
    return path


def test_plan_scores_one_tensor_and_one_wave_of_the_examples(tmp_path: Path, tiny_llamas: list[Path]):
    """Block-streamed scoring: the largest tensor (three times), and the logits of the examples' tokens, each
    text counted as one token per UTF-8 byte plus three, batches padded to their longest."""
    examples = [
        {"input": "ab", "output": "cd"},  # 4 bytes: 7 tokens at most
        {"input": "h\u00e9llo", "output": "x"},  # 6 + 1 bytes: 10
        {"input": "abcdefghij", "output": "k"},  # 11 bytes: 14
    ]
    plan = build_plan(load_manifest(_examples_recipe(tmp_path / "repo", tiny_llamas[0], examples)))
    shape = largest_float_shape(tiny_llamas[0])
    assert shape is not None
    tokens = 2 * 10 + 1 * 14  # batches of 2 (the default), padded; both in one wave
    expected = scoring_memory(
        streamed=True,
        weight_numel=plan.sources[0].weight_bytes // 4,
        largest_numel=math.prod(shape),
        width=shape[0],
        tokens=tokens,
        stored_itemsize=4,
    )
    assert plan.memory.scoring_bytes == expected
    assert expected == 3 * math.prod(shape) * 4 + tokens * shape[0] * 12  # float32: no upcast of the logits


def test_a_bfloat16_compute_dtype_adds_the_upcast_logits(tmp_path: Path, tiny_llamas: list[Path]):
    examples = [{"input": "ab", "output": "cd"}]
    path = _examples_recipe(tmp_path / "repo", tiny_llamas[0], examples, rest=", dtype: bfloat16")
    plan = build_plan(load_manifest(path))
    shape = largest_float_shape(tiny_llamas[0])
    assert shape is not None
    # the weights in the wider of the stored (float32) and compute dtypes; logits 2 + 4 (upcast) + 4 + 4 bytes
    assert plan.memory.scoring_bytes == 3 * math.prod(shape) * 4 + 7 * shape[0] * 14


def test_streamed_scoring_follows_the_largest_tensor_and_whole_scoring_the_model():
    common = {"largest_numel": 10**8, "width": 50_000, "tokens": 0, "stored_itemsize": 2}
    small = scoring_memory(streamed=True, weight_numel=10**9, **common)
    large = scoring_memory(streamed=True, weight_numel=10**10, **common)
    assert small == large == 3 * 10**8 * 4  # float32 compute over bfloat16 weights
    whole = scoring_memory(streamed=False, weight_numel=10**9, **common)
    assert whole == int(10**9 * (2 + 4) * 1.1)  # as read and in float32, while from_pretrained loads
    assert scoring_memory(streamed=False, weight_numel=10**10, **common) > 9 * whole


def test_activations_are_one_waves_logits():
    assert activation_bytes(100, 32_000) == 100 * 32_000 * (4 + 4 + 4)
    assert activation_bytes(100, 32_000, compute_itemsize=2) == 100 * 32_000 * (2 + 4 + 4 + 4)


def test_waves_group_batches_as_scoring_runs_them():
    assert waves([3000, 1000, 3000], streamed=True) == [[0, 1], [2]]
    assert waves([5000, 10, 10], streamed=True) == [[0], [1, 2]]  # a batch over the cap runs alone
    assert waves([3000, 1000, 3000], streamed=False) == [[0], [1], [2]]
    assert wave_tokens([3000, 1000, 3000], streamed=False) == 3000
    assert wave_tokens([3000, 1000, 3000], streamed=True) == WAVE_TOKENS  # never more than the cap
    assert wave_tokens([5000, 10], streamed=True) == 5000  # or one larger batch
    assert wave_tokens([10, 20], streamed=True) == 30  # or all the batches
    assert wave_tokens([1000] * 20, streamed=True, counted=4) == 4 * WAVE_TOKENS


# Peak RSS of `cocktail weights`, block-streamed on CPU (float32), measured by #13 with bench/bench_weights.py
# (docs/benchmarks.md): the largest tensor's shape, its stored itemsize, and the peak.
MEASURED = {
    "3 x 1.7B bf16 (SmolLM2 shapes)": ((49152, 2048), 2, 1.61e9),
    "1 x 7B bf16 (Llama-2-7B shapes)": ((32000, 4096), 2, 1.37e9),
    "3 x 4-layer SmolLM2 shapes": ((49152, 2048), 2, 1.14e9),
}


@pytest.mark.parametrize("case", list(MEASURED))
def test_the_estimate_covers_the_peaks_measured_on_real_shapes(case: str):
    shape, stored, measured = MEASURED[case]
    estimate = CPU_TORCH_BASELINE_BYTES + scoring_memory(
        streamed=True,
        weight_numel=7 * 10**9,
        largest_numel=math.prod(shape),
        width=shape[0],
        tokens=0,  # four short examples: their logits are a few MB
        stored_itemsize=stored,
    )
    assert measured <= estimate <= 2 * measured


def test_a_real_scoring_run_peaks_below_the_estimate(tmp_path: Path, tiny_llamas: list[Path]):
    """`cocktail weights` on two tiny models in a fresh process: its peak RSS (ru_maxrss) is within the estimate,
    and the estimate is not absurdly above it (the runtime baseline is most of both)."""
    examples = [{"input": "the film was great", "output": " positive"}] * 4
    manifest = load_manifest(_examples_recipe(tmp_path / "repo", tiny_llamas[0], examples))
    plan = build_plan(manifest)
    repo = tmp_path / "repo"
    command = [
        sys.executable,
        "-m",
        "cocktail_bot",
        "-q",
        "weights",
        "--type",
        "decoder",
        "--examples",
        str(repo / "examples.jsonl"),
        str(repo / "models" / "a"),
        str(repo / "models" / "b"),
    ]
    # ru_maxrss of the children of a fresh process: the peak of this one command, not of pytest's children
    probe = (
        "import resource, subprocess, sys\n"
        f"subprocess.run({command!r}, check=True, capture_output=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    measured = int(done.stdout.split()[-1])
    estimate = plan.memory.baseline_bytes + plan.memory.scoring_bytes
    assert measured <= estimate <= 2 * measured, (measured, estimate)
