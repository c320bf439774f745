"""How much memory a run holds, as one model: the engine sizes its buffers with it and `cocktail plan` estimates
with it. Free of torch.

A run's peak is the process's baseline (the interpreter, torch and transformers, imported) plus the larger of
the two phases that hold weights, which never overlap:

* **merging** (:func:`merge_memory`): the engine's reused buffers (input chunks read ahead, per-worker scratch
  blocks, output chunks queued for the writer) and, for methods that need whole tensors (TIES, DARE, SLERP), one
  row buffer holding the largest tensor of every input, the method's whole-tensor temporaries
  (``MergeMethod.temporary_bytes``) and that tensor's output;
* **scoring** (:func:`scoring_memory`): the model that example weights and evaluation run. Block-streamed (what
  ``scoring.py`` does on CPU, and on a GPU the model does not fit whole) it holds one module's weights at a time,
  so its peak follows the largest tensor, not the model; loaded whole (``load="whole"``, a model that cannot be
  streamed, a GPU it fits in) it holds the model. Either way, the activations of the batches running together
  (one *wave*, :func:`wave_tokens`), the widest of which are a decoder's logits (:func:`activation_bytes`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
# Resident memory of a run besides the weights it holds: the interpreter, torch, transformers, numba and
# cocktail-bot imported, a first model run (threads, allocator arenas) and numba compiling the linear kernel.
# Measured with bench/bench_memory_model.py (docs/benchmarks.md): the quickstart peaks at 581 MB with the CPU
# build of torch (imports alone: 374 MB). The default (CUDA) build maps larger libraries: #16 measured 815 MB
# with it before numba came in (fused.py), which added ~160 MB to the CPU build's peak.
CPU_TORCH_BASELINE_BYTES = 650 * 10**6
CUDA_TORCH_BASELINE_BYTES = 1000 * 10**6
# Tokens of the batches that block-streamed scoring runs together (a wave), each weight read once for them all.
WAVE_TOKENS = 4096
CHARS_PER_TOKEN = 4  # how scoring counts a retrieval batch's tokens without tokenizing it
# Block-streamed scoring holds the largest tensor about three times in the compute dtype at its peak: as read
# from the checkpoint (its stored dtype), converted to the compute dtype, and the allocator's slack (blocks freed
# but not yet returned). Three copies cover the peaks measured on 1.7B and 7B shapes (docs/benchmarks.md).
STREAMED_TENSOR_COPIES = 3
# A model loaded whole: the allocator's slack and the tokenizer on top of its weights.
INFERENCE_OVERHEAD = 1.1


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


def scoring_memory(
    *,
    streamed: bool,
    weight_numel: int,
    largest_numel: int,
    width: int,
    tokens: int,
    stored_itemsize: int,
    compute_itemsize: int = FLOAT32,
) -> int:
    """Scoring one model (example weights, evaluation) of ``weight_numel`` values stored ``stored_itemsize``
    bytes each, computing in ``compute_itemsize``, on waves of up to ``tokens`` tokens (:func:`wave_tokens`).

    ``streamed``: one module's weights resident at a time, so the largest tensor (``largest_numel`` values)
    ``STREAMED_TENSOR_COPIES`` times in the wider of the two dtypes. Whole: the model as read and in the compute
    dtype (``from_pretrained`` holds both while loading), times ``INFERENCE_OVERHEAD``. Plus the activations:
    ``width`` is the widest activation row, a decoder's vocabulary (the largest tensor's first dimension).
    """
    if streamed:
        weights = STREAMED_TENSOR_COPIES * largest_numel * max(stored_itemsize, compute_itemsize)
    else:
        weights = int(weight_numel * (stored_itemsize + compute_itemsize) * INFERENCE_OVERHEAD)
    return weights + activation_bytes(tokens, width, compute_itemsize)


def activation_bytes(tokens: int, width: int, compute_itemsize: int = FLOAT32) -> int:
    """The widest activations of ``tokens`` tokens running together: a decoder's logits over a ``width``-word
    vocabulary in the compute dtype, their float32 copy for the loss (transformers upcasts; none when already
    float32), the loss's float32 log-softmax, and one float32 row of that width for the layer running (an MLP's
    intermediate rows are narrower than the vocabulary in the models measured)."""
    upcast = FLOAT32 if compute_itemsize != FLOAT32 else 0
    return tokens * width * (compute_itemsize + upcast + 2 * FLOAT32)


def waves(batch_tokens: Sequence[int], *, streamed: bool, wave: int = WAVE_TOKENS) -> list[list[int]]:
    """The batches (indices into ``batch_tokens``, each batch's size in tokens) that scoring runs together:
    block-streamed, in order while their sum stays within ``wave`` (a larger batch runs alone), so that each
    weight is read once per wave; loaded whole, one batch at a time."""
    groups: list[list[int]] = []
    total = 0
    for index, tokens in enumerate(batch_tokens):
        if not groups or not streamed or total + tokens > wave:
            groups.append([])
            total = 0
        groups[-1].append(index)
        total += tokens
    return groups


def wave_tokens(batch_tokens: Sequence[int], *, streamed: bool, counted: int = 1) -> int:
    """At most how many tokens scoring runs at once, over batches of at most ``batch_tokens`` tokens each:
    loaded whole, the largest batch; block-streamed, a wave (:func:`waves`: within ``WAVE_TOKENS``, or one
    larger batch), never more than all the batches. ``counted``: how many real tokens one token that scoring
    counts may stand for: it counts retrieval batches at ``CHARS_PER_TOKEN`` characters a token, and a text
    has about one token per character at most, so up to ``CHARS_PER_TOKEN``."""
    largest = max(batch_tokens, default=0)
    if not streamed:
        return largest
    return min(sum(batch_tokens), max(counted * WAVE_TOKENS, largest))


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
