"""Merge benchmark: cocktail vs LM_Cocktail 0.0.4 vs mergekit 0.1.5 `linear`, against the I/O floor.

Merges the three models made by ``make_llama_case.py`` (weights 0.5/0.3/0.2, bf16 output) with each tool, each
in its own child process, and reports wall time and the child's peak RSS (``os.wait4``'s rusage). Before every
run the inputs are read once, untimed, so that every tool starts with the same page cache. The floor is the
time to read every input once and write one output of the merged model's size, with no arithmetic. With
``--repeat N`` the tools run in N rounds, each tool's time divided by the floor of its own round (the machine
may be shared: a ratio within one round is what compares). cocktail's compiled kernel is built once, untimed,
before the first round (as on any machine after its first merge). "merge alone" is the time cocktail reports for
the merge itself ("wrote ... in N s"), without starting Python and importing torch and numba.

    python bench/make_llama_case.py && python bench/bench_merge.py            # the 3 x 3.4 GB case
    python bench/make_llama_case.py --quick && python bench/bench_merge.py --quick
    python bench/bench_merge.py --tools floor cocktail --repeat 5
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work"
WEIGHTS = (0.5, 0.3, 0.2)
TOOLS = ("floor", "cocktail", "mergekit", "lm_cocktail")
BLOCK = 2**20


def weight_files(models: list[Path]) -> list[Path]:
    return [model / "model.safetensors" for model in models]


def floor(models: list[Path], output: Path) -> None:
    """Read every input once and write one output as large as the merge's (a copy of the first input), the
    cheapest way found here: 1 MiB reads (a buffer that stays in the core's cache; 64 MiB ones went at half
    the speed) into a file whose blocks are reserved first, as the engine's are (``writable.preallocate``)."""
    from cocktail_bot.writable import preallocate

    output.mkdir(parents=True)
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    files = weight_files(models)
    with open(output / "model.safetensors", "wb", buffering=0) as out:
        preallocate(out.fileno(), files[0].stat().st_size)
        for index, path in enumerate(files):
            with open(path, "rb", buffering=0) as source:
                while count := source.readinto(buffer):
                    if index == 0:
                        out.write(view[:count])


def command(tool: str, models: list[Path], output: Path) -> list[str]:
    names = [str(model) for model in models]
    if tool == "floor":
        return [sys.executable, __file__, "--floor-child", str(output), *names]
    if tool == "cocktail":
        return [
            sys.executable,
            "-m",
            "cocktail_bot",
            "-q",
            "mix",
            *names,
            "--weights",
            *map(str, WEIGHTS),
            "--type",
            "decoder",
            "--out",
            str(output),
        ]
    if tool == "lm_cocktail":
        code = (
            "import sys; from LM_Cocktail import mix_models; "
            f"mix_models({names!r}, 'decoder', {list(WEIGHTS)!r}, output_path={str(output)!r})"
        )
        return [sys.executable, "-c", code]
    if tool == "mergekit":
        config = output.parent / "mergekit.yml"
        entries = "".join(
            f"  - model: {name}\n    parameters: {{weight: {weight}}}\n"
            for name, weight in zip(names, WEIGHTS, strict=True)
        )
        config.write_text(f"merge_method: linear\ndtype: bfloat16\nmodels:\n{entries}")
        return [
            str(Path(sys.executable).parent / "mergekit-yaml"),
            str(config),
            str(output),
            "--no-cuda",
            "--quiet",
        ]
    raise ValueError(tool)


def warm_page_cache(models: list[Path]) -> None:
    buffer = bytearray(BLOCK)
    for path in weight_files(models):
        with open(path, "rb", buffering=0) as source:
            while source.readinto(buffer):
                pass


def measure(tool: str, models: list[Path], output: Path) -> dict:
    shutil.rmtree(output, ignore_errors=True)
    warm_page_cache(models)
    log = output.parent / f"{tool}.log"
    started = time.perf_counter()
    with open(log, "wb") as stderr:
        child = subprocess.Popen(
            command(tool, models, output),
            cwd=ROOT,
            stdout=stderr,
            stderr=stderr,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        _, status, usage = os.wait4(
            child.pid, 0
        )  # this child's own rusage, unlike RUSAGE_CHILDREN's running max
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
        raise SystemExit(f"{tool} failed with exit code {child.returncode}")
    size = sum(path.stat().st_size for path in output.rglob("*.safetensors"))
    # cocktail's own report of the merge's time ("wrote ... in N s"): without start-up and imports
    engine = (
        re.search(r" in ([0-9.]+) s$", log.read_text(errors="replace").strip())
        if tool == "cocktail"
        else None
    )
    return {
        "tool": tool,
        "seconds": seconds,
        "engine_seconds": float(engine.group(1)) if engine else None,
        "peak_rss_gb": usage.ru_maxrss / 2**20,
        "output_gb": size / 1e9,
    }


def table(rounds: list[list[dict]]) -> str:
    """One row per tool: median wall time, the median and range of its ratio to the floor of the same round,
    and the largest peak RSS."""
    lines = [
        "| tool | wall time (s), median | vs floor, median | vs floor, range | merge alone (s), median "
        "| merge alone vs floor, median | peak RSS (GiB) | output (GB) |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for tool in [result["tool"] for result in rounds[0]]:
        runs = [next(r for r in results if r["tool"] == tool) for results in rounds]
        ratios = [
            run["seconds"] / next(r["seconds"] for r in results if r["tool"] == "floor")
            for run, results in zip(runs, rounds, strict=True)
            if any(r["tool"] == "floor" for r in results)
        ]
        ratio = f"{statistics.median(ratios):.2f}x" if ratios else ""
        spread = f"{min(ratios):.2f}x-{max(ratios):.2f}x" if ratios else ""
        alone = engine = ""
        if all(run["engine_seconds"] is not None for run in runs):
            alone = f"{statistics.median(run['engine_seconds'] for run in runs):.1f}"
            engine = (
                f"{statistics.median(run['engine_seconds'] / run['seconds'] * ratio for run, ratio in zip(runs, ratios, strict=True)):.2f}x"
                if ratios
                else ""
            )
        lines.append(
            f"| {tool} | {statistics.median(r['seconds'] for r in runs):.1f} | {ratio} | {spread} | {alone} | "
            f"{engine} | {max(r['peak_rss_gb'] for r in runs):.2f} | {runs[0]['output_gb']:.2f} |"
        )
    return "\n".join(lines)


def warm_up_cocktail() -> None:
    """Compile (or load from numba's cache) the fused kernel for this case's dtypes, untimed."""
    code = (
        "import torch; from cocktail_bot import fused; "
        "x = torch.zeros(8, dtype=torch.bfloat16); "
        f"fused.linear_into(torch.empty(8, dtype=torch.bfloat16), [x, x, x], {list(WEIGHTS)!r})"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the 4-layer case (make_llama_case.py --quick)")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every tool (default 1)")
    parser.add_argument("--floor-child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_child:
        output, *models = args.floor_child
        floor([Path(model) for model in models], Path(output))
        return
    case = WORK / ("llama-quick" if args.quick else "llama-1.7b")
    models = [case / f"model-{index}" for index in range(3)]
    if not all(path.is_file() for path in weight_files(models)):
        raise SystemExit(
            f"no benchmark models in {case}: run python bench/make_llama_case.py{' --quick' * args.quick}"
        )
    if "cocktail" in args.tools:
        warm_up_cocktail()
    rounds = []
    for number in range(1, args.repeat + 1):
        results = []
        for tool in args.tools:
            result = measure(tool, models, case / f"out-{tool}")
            print(
                f"round {number}: {tool}: {result['seconds']:.1f} s, peak RSS {result['peak_rss_gb']:.2f} GiB",
                flush=True,
            )
            results.append(result)
            shutil.rmtree(case / f"out-{tool}", ignore_errors=True)
        rounds.append(results)
    input_gb = sum(path.stat().st_size for path in weight_files(models)) / 1e9
    report = (
        f"{platform.node()}: {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
        f"inputs {input_gb:.2f} GB ({case.name}), {args.repeat} round(s), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n" + table(rounds)
    )
    print(report)
    (WORK / f"merge-{case.name}.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
