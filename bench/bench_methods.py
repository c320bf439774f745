"""What the merge methods cost beside LM-Cocktail's `linear`, through the same streaming engine.

The case: three Llama models of SmolLM2-1.7B's shapes cut to one decoder layer (random bf16, ~330 MB each,
the largest tensor the tied 49152 x 2048 embedding), generated once by ``bench/make_llama_case.py``'s writer
into ``bench/work/methods-llama-1l``. Every method merges in its own subprocess, which reports its wall time
and its peak RSS (``ru_maxrss``), so one run cannot inflate the next one's numbers. The table says which path the
engine took: ``chunks`` for elementwise methods, ``rows`` (whole tensors) for the others.

* ``linear``: the three models, weights 0.2 / 0.3 / 0.5;
* task-vector methods: model-0 as the base and models 1 and 2 as task vectors, weights 0.6 / 0.4, density 0.5
  where the method sparsifies;
* ``slerp``: model-0 (base) to model-1, t = 0.5 (two inputs instead of three);
* ``breadcrumbs(_ties)``, ``della(_linear)``: as the task-vector methods (density 0.5); ``sce``: select_topk 0.5;
  ``model_stock``, ``nuslerp``, ``multislerp``: model-0 as the base, models 1 and 2 (0.6 / 0.4) merged;
  ``karcher``: the three models, no base.

``--mergekit`` also runs mergekit 0.1.5's ``run_merge`` on each case in its own subprocess (float32 arithmetic,
bf16 output, as the engine's), so the last column compares the two tools in the same run. ``linear`` always runs
first: every time is also given as a ratio to it, measured in the same run (the machine is shared and noisy).

    python bench/bench_methods.py              # prints a Markdown table
    python bench/bench_methods.py --repeat 3   # best of three runs per method
    python bench/bench_methods.py --mergekit                  # and mergekit on every case
    python bench/bench_methods.py --methods linear karcher sce --mergekit karcher   # mergekit on karcher only
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's bench/ and cocktail_bot

from bench.make_llama_case import smollm2_config, write_model  # noqa: E402
from cocktail_bot.methods import get_method  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "bench" / "work" / "methods-llama-1l"
MODELS = [CASE / f"model-{seed}" for seed in range(3)]

RUNS = {
    "linear": dict(sources=MODELS, weights=[0.2, 0.3, 0.5], base=None, params={}),
    "task_arithmetic": dict(sources=MODELS[1:], weights=[0.6, 0.4], base=MODELS[0], params={}),
    "ties": dict(sources=MODELS[1:], weights=[0.6, 0.4], base=MODELS[0], params={"density": 0.5}),
    "dare_linear": dict(sources=MODELS[1:], weights=[0.6, 0.4], base=MODELS[0], params={"density": 0.5}),
    "dare_ties": dict(sources=MODELS[1:], weights=[0.6, 0.4], base=MODELS[0], params={"density": 0.5}),
    "slerp": dict(sources=MODELS[1:2], weights=[1.0], base=MODELS[0], params={"t": 0.5}),
    "breadcrumbs": dict(sources=MODELS[1:], weights=[0.6, 0.4], base=MODELS[0], params={"density": 0.5}),
    "breadcrumbs_ties": dict(sources=MODELS[1:], weights=[0.6, 0.4], base=MODELS[0], params={"density": 0.5}),
    "della": dict(sources=MODELS[1:], weights=[0.6, 0.4], base=MODELS[0], params={"density": 0.5}),
    "della_linear": dict(sources=MODELS[1:], weights=[0.6, 0.4], base=MODELS[0], params={"density": 0.5}),
    "model_stock": dict(sources=MODELS[1:], weights=[0.5, 0.5], base=MODELS[0], params={}),
    "nuslerp": dict(sources=MODELS[1:], weights=[0.6, 0.4], base=MODELS[0], params={}),
    "multislerp": dict(sources=MODELS[1:], weights=[0.6, 0.4], base=MODELS[0], params={}),
    "karcher": dict(sources=MODELS, weights=[1 / 3] * 3, base=None, params={}),
    "sce": dict(sources=MODELS[1:], weights=[0.5, 0.5], base=MODELS[0], params={"select_topk": 0.5}),
}

CHILD = """
import json, resource, sys, time
from cocktail_bot.engine import merge
run = json.loads(sys.argv[1])
started = time.perf_counter()
merge(run["sources"], run["weights"], run["output"], model_type="decoder", base=run["base"],
      method=run["method"], method_params=run["params"], progress=False)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


MERGEKIT_CHILD = """
import json, resource, sys, time
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
run = json.loads(sys.argv[1])
entries = [{"model": run["base"]}] if run["base"] else []
entries += [{"model": m, **({"parameters": {"weight": w}} if run["uses_weights"] else {})}
            for m, w in zip(run["sources"], run["weights"])]
config = {"merge_method": run["method"], "models": entries, "dtype": "float32", "out_dtype": "bfloat16",
          "parameters": {k: v for k, v in run["params"].items() if k != "seed"}}
if run["base"]:
    config["base_model"] = run["base"]
started = time.perf_counter()
run_merge(MergeConfiguration.model_validate(config), run["output"], MergeOptions(quiet=True, random_seed=0))
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def make_case() -> None:
    config = smollm2_config(layers=1)
    for seed, folder in enumerate(MODELS):
        if not (folder / "model.safetensors").is_file():
            write_model(folder, config, seed)


def run_once(method: str, tool: str = "cocktail") -> dict:
    """One merge in a fresh interpreter, by cocktail-bot's engine or (``tool="mergekit"``) mergekit 0.1.5's
    run_merge (float32 arithmetic, bf16 output, as ours); its own wall time and peak RSS."""
    spec = RUNS[method]
    output = CASE / f"out-{tool}-{method}"
    payload = {
        "sources": [str(path) for path in spec["sources"]],
        "weights": spec["weights"],
        "base": str(spec["base"]) if spec["base"] else None,
        "method": method,
        "params": spec["params"],
        "output": str(output),
        "uses_weights": get_method(method, spec["params"]).uses_weights,
    }
    child = MERGEKIT_CHILD if tool == "mergekit" else CHILD
    command = [sys.executable, "-c", child, json.dumps(payload)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    finally:
        shutil.rmtree(output, ignore_errors=True)
    if done.returncode:
        raise SystemExit(f"{tool} {method} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; the fastest is reported")
    parser.add_argument("--methods", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument(
        "--mergekit",
        nargs="*",
        choices=list(RUNS),
        help="also time mergekit's run_merge on these cases (no names: every method run)",
    )
    args = parser.parse_args()
    make_case()
    size = sum((path / "model.safetensors").stat().st_size for path in MODELS) / 3
    print(f"three models of {size / 1e6:.0f} MB each (bf16), output bf16\n")
    columns = "| method | inputs read | path | wall time (s) | vs linear | peak RSS (MB) |"
    compared = set(args.methods if args.mergekit == [] else args.mergekit or [])
    if compared:
        columns += " mergekit time (s) | mergekit RSS (MB) | time vs mergekit |"
    print(columns)
    print("|" + " --- |" * (columns.count("|") - 1))
    linear_seconds = None
    for method in ["linear", *(m for m in args.methods if m != "linear")]:  # linear first: the floor
        best, peak = best_of(method, "cocktail", args.repeat)
        if method == "linear":
            linear_seconds = best
        ratio = f"{best / linear_seconds:.2f}x" if linear_seconds else "-"
        inputs = len(RUNS[method]["sources"]) + (RUNS[method]["base"] is not None)
        path = "chunks" if get_method(method, RUNS[method]["params"]).elementwise else "rows"
        row = f"| `{method}` | {inputs} | {path} | {best:.2f} | {ratio} | {peak:.0f} |"
        if method in compared:
            theirs, their_peak = best_of(method, "mergekit", args.repeat)
            row += f" {theirs:.2f} | {their_peak:.0f} | {best / theirs:.2f}x |"
        elif compared:
            row += " - | - | - |"
        print(row, flush=True)


def best_of(method: str, tool: str, repeat: int) -> tuple[float, float]:
    """The fastest of ``repeat`` runs (seconds) and the largest peak RSS (MB)."""
    runs = [run_once(method, tool) for _ in range(repeat)]
    return min(run["seconds"] for run in runs), max(run["peak_rss_kb"] for run in runs) / 1024


if __name__ == "__main__":
    main()
