"""How much memory a run holds, as one model: the engine sizes its buffers with it and `cocktail plan` estimates
with it. Free of torch.

A run's peak is the process's baseline (the interpreter, torch and transformers, imported) plus the larger of
the two phases that hold weights, which never overlap:

* **merging** (:func:`merge_memory`): the engine's reused buffers (input chunks read ahead, per-worker scratch
  blocks, output chunks queued for the writer) and, for methods that need whole tensors (TIES, DARE, SLERP), one
  row buffer holding the largest tensor of every input, the method's whole-tensor temporaries
  (``MergeMethod.temporary_bytes``) and that tensor's output;
* **scoring** (:func:`scoring_memory`): the model that example weights and evaluation run, resident.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cocktail_bot.methods import MergeMethod

# Elements per chunk of an elementwise merge, summed over the inputs: bounds memory whatever the model count.
CHUNK_ELEMENTS = 16 * 2**20
PREFETCH = 2  # tasks read ahead of the arithmetic, and results queued for the writer
BLOCK_ELEMENTS = 2**18  # per input, a float64 scratch block of 2 MB: close to a core's cache
# DELLA ranks magnitudes within each row: rows are ranked and drawn this many entries at a time (at least one
# row), so its temporaries stay small
DELLA_BLOCK = 2**18
# Threads summing a chunk's blocks (torch releases the GIL). Half the cores, as reading, writing and hashing
# need the rest; on 2 cores the caller's thread alone does the sums.
SUM_WORKERS = max(1, min(8, (os.cpu_count() or 1) // 2))
FLOAT64 = 8
FLOAT32 = 4
# Resident memory of a run besides the weights it holds: the interpreter, torch, transformers and cocktail-bot
# imported and a first model run (threads, allocator arenas). Measured with bench/bench_memory_model.py
# (docs/benchmarks.md): the quickstart peaks at 418 MB with the CPU build of torch; #16 measured 815 MB with
# the default (CUDA) build, which maps its larger libraries.
CPU_TORCH_BASELINE_BYTES = 450 * 10**6
CUDA_TORCH_BASELINE_BYTES = 850 * 10**6
# Scoring a float32 model: its weights, plus activations and the tokenizer for a batch of short examples.
INFERENCE_OVERHEAD = 1.2


@dataclass(frozen=True)
class Pool:
    """``count`` reused buffers of ``nbytes`` each."""

    count: int
    nbytes: int

    @property
    def total(self) -> int:
        return self.count * self.nbytes


@dataclass(frozen=True)
class MergeMemory:
    """What one merge step holds at its peak, part by part."""

    inputs: Pool
    scratch: Pool
    outputs: Pool
    rows: Pool
    temporaries: int  # the method's whole-tensor temporaries and one tensor's output (whole-tensor methods)

    @property
    def total(self) -> int:
        return (
            self.inputs.total + self.scratch.total + self.outputs.total + self.rows.total + self.temporaries
        )


def chunk_elements(inputs: int, chunk: int = CHUNK_ELEMENTS) -> int:
    """Elements per input in one chunk: the chunk budget shared by the inputs."""
    return max(1, chunk // inputs)


def merge_memory(
    method: MergeMethod,
    *,
    inputs: int,
    input_itemsize: int,
    output_itemsize: int,
    largest_numel: int,
    wide_itemsize: int,
    chunk: int = CHUNK_ELEMENTS,
    block: int = BLOCK_ELEMENTS,
    workers: int = SUM_WORKERS,
) -> MergeMemory:
    """The engine's buffers for ``method`` over ``inputs`` tensors of each name (the merged models, and the base
    if the method needs one).

    ``input_itemsize`` is the widest stored dtype, ``output_itemsize`` the output's, ``largest_numel`` the
    largest floating-point tensor and ``wide_itemsize`` what the arithmetic runs in (float64 for linear sums
    and float64 inputs, else float32). ``chunk``, ``block`` and ``workers`` are the engine's settings.
    """
    # no buffer larger than the largest tensor needs: small models hold small buffers
    step = min(chunk_elements(inputs, chunk), max(largest_numel, 1))
    whole = not method.elementwise
    return MergeMemory(
        inputs=Pool(inputs * (PREFETCH + 1), step * input_itemsize),
        scratch=Pool(workers * inputs, block * FLOAT64),
        outputs=Pool(PREFETCH + 2, step * max(input_itemsize, output_itemsize)),
        rows=Pool(1 if whole else 0, inputs * largest_numel * wide_itemsize),
        temporaries=(
            method.temporary_bytes(largest_numel, wide_itemsize) + largest_numel * output_itemsize
            if whole
            else 0
        ),
    )


def scoring_memory(weight_bytes: int, itemsize: int | None) -> int:
    """Scoring one model of ``weight_bytes`` stored ``itemsize`` bytes per value: it is held in float32 with
    activations for a batch.

    The scoring module owns this number: when scoring keeps fewer weights resident (one transformer block at a
    time), this function says so and `plan` follows.
    """
    float32_bytes = weight_bytes * FLOAT32 // (itemsize or FLOAT32)
    return int(float32_bytes * INFERENCE_OVERHEAD)


@cache
def runtime_baseline() -> int:
    """The baseline for the installed torch (read from its package metadata: torch is not imported)."""
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return CUDA_TORCH_BASELINE_BYTES
    return CPU_TORCH_BASELINE_BYTES if version.endswith("+cpu") else CUDA_TORCH_BASELINE_BYTES


def peak_memory(merge_bytes: int, scoring_bytes: int) -> int:
    """A run's peak: the baseline plus the larger phase (scoring and merging never overlap)."""
    return runtime_baseline() + max(merge_bytes, scoring_bytes)
