"""The linear merge's arithmetic alone: torch one kernel per step vs ``fused.linear_into``, in CPU seconds.

Three bf16 inputs of ``--elements`` entries each (in memory, no I/O) are summed with weights 0.5/0.3/0.2 into a
bf16 output, the way the engine did before ``fused`` (per 2 MB block: widen each input to float64, scale,
``add_(alpha=)``, cast back; one torch thread) and with the fused kernel. Each is timed in the CPU time of the
thread that runs it (``time.thread_time``), which a busy shared machine disturbs far less than wall time; the
results are checked to be the same bytes. The kernel is compiled (or loaded from numba's cache) untimed first.

    python bench/bench_fused.py --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cocktail_bot import fused  # noqa: E402

WEIGHTS = (0.5, 0.3, 0.2)
BLOCK = 2**18  # the engine's former BLOCK_ELEMENTS: 2 MB of float64 per input


def torch_blocks(out: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    scratch = [torch.empty(BLOCK, dtype=torch.float64) for _ in inputs]
    for start in range(0, out.numel(), BLOCK):
        end = min(start + BLOCK, out.numel())
        rows = [row[: end - start].copy_(x[start:end]) for row, x in zip(scratch, inputs, strict=True)]
        total = rows[0].mul_(WEIGHTS[0])
        for row, weight in zip(rows[1:], WEIGHTS[1:], strict=True):
            total.add_(row, alpha=weight)
        out[start:end].copy_(total)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--elements", type=int, default=2**25, help="entries per input (default 32M)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(args.elements, generator=generator).to(torch.bfloat16) for _ in WEIGHTS]
    expected, result = (torch.empty(args.elements, dtype=torch.bfloat16) for _ in range(2))
    fused.linear_into(result[:8], [x[:8] for x in inputs], WEIGHTS)  # compile or load, untimed
    ways = {
        "torch, one kernel per step": lambda: torch_blocks(expected, inputs),
        "fused.linear_into": lambda: fused.linear_into(result, inputs, WEIGHTS),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeat):
        for name, run in ways.items():
            started = time.thread_time()
            run()
            seconds[name].append(time.thread_time() - started)
    assert torch.equal(expected.view(torch.int16), result.view(torch.int16)), "the results differ"
    base = statistics.median(seconds["torch, one kernel per step"])
    print(f"{args.elements} entries x {len(WEIGHTS)} bf16 inputs -> bf16, median of {args.repeat} (CPU s)\n")
    print("| arithmetic | CPU time (s) | entries/s | vs torch |\n| --- | ---: | ---: | ---: |")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {args.elements / median / 1e9:.2f} G | {base / median:.1f}x |")


if __name__ == "__main__":
    main()
