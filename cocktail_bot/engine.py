"""The streaming merge: check everything, then read, merge and write one tensor (or chunk) at a time.

Methods whose every output entry depends only on the same entry of the inputs (``MergeMethod.elementwise``:
linear, task arithmetic, TIES and DARE at density 1) are merged in chunks: peak memory is a small multiple of
one chunk, whatever the model size or the number of models. The others (sparsification ranks or draws over a
whole tensor, SLERP takes whole-tensor norms) get each tensor of every input as one row of a single reused
buffer, widened model by model, and overwrite it in place (``MergeMethod.merge_``): peak memory is that buffer
(inputs x largest tensor) plus the method's few tensor-sized temporaries. Inputs are read by offset into reused
buffers (see ``checkpoint``). Linear merges sum in float64 and cast once to the output dtype, which keeps every
value within one ulp of the exact sum (float32 sums can lose more where terms cancel); on the CPU that is one
compiled pass per chunk (see ``fused``), not one torch kernel per step. Other methods get float32 values
(float64 for float64 inputs), as ``methods`` expects. Results are appended to safetensors files whose headers
were written first (see ``shards``). Reading, arithmetic and writing overlap (see ``overlap``). Everything
lands in a temporary folder beside the output, renamed into place only when complete.

A source may be a ``remote.HubModel``: its weights are read from the Hub by range requests (``open_checkpoint``)
and every such file's sha256 is checked (``verify``) before the merge counts as done. ``on_shard`` sees each
output shard as soon as its last byte is written (the publisher uploads it, and may delete it, while the next
shard is merged).
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cocktail_bot import tied
from cocktail_bot.atomic import move_files_into, replace_folder, staging_folder
from cocktail_bot.checkpoint import Checkpoint, TensorInfo, model_folder, open_checkpoint
from cocktail_bot.dtypes import DTYPE_BYTES, canonical_dtype
from cocktail_bot.errors import CocktailError
from cocktail_bot.memory import (
    BLOCK_ELEMENTS,
    CHUNK_ELEMENTS,
    FLOAT32,
    SUM_WORKERS,
    MergeMemory,
    chunk_elements,
    merge_memory,
)
from cocktail_bot.methods import MergeMethod, get_method
from cocktail_bot.model_files import (
    SAFETENSORS_INDEX,
    copy_files,
    file_sha256,
    is_weight_file,
    support_files,
    weight_dirs,
)
from cocktail_bot.model_types import ModelType
from cocktail_bot.overlap import BufferPool, Task, run_tasks
from cocktail_bot.parameter_values import SettingError, check_weight, layer_positions, weight_at
from cocktail_bot.remote import HubModel
from cocktail_bot.shards import Shard, ShardWriter, parse_shard_size, plan_shards, write_index
from cocktail_bot.sizes import format_size
from cocktail_bot.writable import check_writable

logger = logging.getLogger(__name__)

TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_BYTES}
MAX_LISTED = 8

Model = Path | HubModel  # a local folder, or a Hub model read in place


@dataclass(frozen=True)
class MergeResult:
    output: Path
    files: dict[str, str]  # relative POSIX path -> sha256 of every output file
    total_bytes: int
    dtype: str
    seconds: float
    memory: MergeMemory  # the buffers the merge held, as cocktail_bot.memory sized them


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    try:
        return TORCH_DTYPES[canonical_dtype(value)]
    except ValueError as error:
        raise CocktailError(str(error)) from None


def _split(items: range, parts: int) -> list[range]:
    """``items`` in at most ``parts`` contiguous, nearly equal ranges."""
    size = -(-len(items) // parts) if items else 1
    return [items[start : start + size] for start in range(0, len(items), size)]


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


class _Merge:
    """One merge's opened checkpoints, validated plan and execution (built only through ``merge``)."""

    def __init__(
        self,
        sources: list[Model],
        merged: list[int],
        weights: list[Any],
        base: Model,
        method: MergeMethod,
        dtype: torch.dtype | None,
        device: torch.device,
        model_type: ModelType,
        stack: ExitStack,
    ) -> None:
        self.sources = [model_folder(source) for source in sources]
        self.base, self.method = model_folder(base), method
        # the models whose tensors the method combines (methods with a base leave it out) and their weights
        self.merged = merged
        self.weights = [weights[index] for index in merged]  # numbers, or per-layer / filtered settings
        self.dtype, self.device = dtype, device
        self.base_index = next(
            (i for i, path in enumerate(self.sources) if path.resolve() == self.base.resolve()), None
        )
        self.dirs = weight_dirs(self.base, _remote_files(base))
        # checkpoints[dir] = (one per source..., base) ; the base shares a source's checkpoint when it is one
        self.checkpoints: dict[str, list[Checkpoint]] = {}
        for relative in self.dirs:
            opened = [stack.enter_context(open_checkpoint(source, relative)) for source in sources]
            base_checkpoint = (
                opened[self.base_index]
                if self.base_index is not None
                else stack.enter_context(open_checkpoint(base, relative))
            )
            self.checkpoints[relative] = [*opened, base_checkpoint]
            if not relative and any(set(c.names) != set(base_checkpoint.names) for c in opened):
                pairs = list(zip(self.sources, opened, strict=True))
                tied.reconcile((self.base, base_checkpoint), pairs, model_type)
        self._check()
        # each tensor's place over the layers, for per-layer parameter values (mergekit's t)
        self.positions = {
            relative: layer_positions(checkpoints[-1].names)
            for relative, checkpoints in self.checkpoints.items()
        }
        self._workers = stack.enter_context(ThreadPoolExecutor(SUM_WORKERS, "cocktail-sum"))

    def verify(self) -> None:
        """Every file read from the Hub had its pinned sha256 (reads what no tensor needed)."""
        for checkpoint in {id(c): c for cs in self.checkpoints.values() for c in cs}.values():
            checkpoint.verify()

    def _models(self, relative: str) -> list[tuple[str, Checkpoint]]:
        labels = [str(path / relative) for path in self.sources] + [str(self.base / relative)]
        return list(zip(labels, self.checkpoints[relative], strict=True))

    def _check(self) -> None:
        """Every model must have the base's tensors, with the base's shapes and kinds (float or not)."""
        problems = []
        for relative in self.dirs:
            *others, (base_label, base) = self._models(relative)
            expected = set(base.names)
            for label, checkpoint in others:
                missing = sorted(expected - set(checkpoint.names))
                extra = sorted(set(checkpoint.names) - expected)
                if missing or extra:
                    parts = ([f"missing {_listed(missing)}"] if missing else []) + (
                        [f"extra {_listed(extra)}"] if extra else []
                    )
                    problems.append(f"{label}: {'; '.join(parts)}")
            if problems:
                raise CocktailError(
                    f"the models do not have the same tensors as the base {base_label}:\n  "
                    + "\n  ".join(problems)
                )
            for name in base.names:
                wanted = base.info(name)
                for label, checkpoint in others:
                    info = checkpoint.info(name)
                    if info.shape != wanted.shape:
                        raise CocktailError(
                            f"tensor {name!r} has shape {list(info.shape)} in {label} but "
                            f"{list(wanted.shape)} in the base {base_label}: these models have different "
                            "architectures and cannot be merged"
                        )
                    if info.dtype.is_floating_point != wanted.dtype.is_floating_point:
                        raise CocktailError(
                            f"tensor {name!r} is {info.dtype} in {label} but {wanted.dtype} in the base "
                            f"{base_label}: re-save one of the models"
                        )

    def output_dtype_name(self) -> str:
        if self.dtype is not None:
            return str(self.dtype).removeprefix("torch.")
        sizes: dict[torch.dtype, int] = {}
        base = self.checkpoints[self.dirs[0]][-1]
        for name in base.names:
            info = base.info(name)
            if info.dtype.is_floating_point:
                sizes[info.dtype] = sizes.get(info.dtype, 0) + info.nbytes
        return str(max(sizes, key=lambda dtype: sizes[dtype]) if sizes else torch.float32).removeprefix(
            "torch."
        )

    def shards(self, relative: str, max_bytes: int) -> list[Shard]:
        base = self.checkpoints[relative][-1]
        planned = []
        for name in base.names:
            info = base.info(name)
            dtype = self.dtype if self.dtype is not None and info.dtype.is_floating_point else info.dtype
            planned.append((name, TensorInfo(dtype, info.shape)))
        return plan_shards(planned, max_bytes)

    def _inputs(self, relative: str) -> list[Checkpoint]:
        """The checkpoints the method reads, in the order ``_apply`` expects: the merged models, then the base
        if the method needs one."""
        checkpoints = self.checkpoints[relative]
        merged = [checkpoints[index] for index in self.merged]
        return [*merged, checkpoints[-1]] if self.method.needs_base else merged

    def _wide_dtype(self, inputs: list[Checkpoint], name: str) -> torch.dtype:
        """What the arithmetic runs in: float64 for linear sums (within one ulp of the exact sum) and float64
        inputs, float32 otherwise (what the methods, like mergekit, compute in)."""
        if self.method.name == "linear" or any(c.info(name).dtype == torch.float64 for c in inputs):
            return torch.float64
        return torch.float32

    def allocate_pools(self) -> list[BufferPool]:
        """Reused buffers, sized by :func:`cocktail_bot.memory.merge_memory` (which `plan` estimates with): input
        chunks (read ahead), per-worker scratch blocks, output chunks (written later) and, for methods that are
        not elementwise, one buffer for a whole tensor of every input."""
        count = len(self._inputs(self.dirs[0]))
        widest = max(
            (c.info(n).dtype.itemsize for cs in self.checkpoints.values() for c in cs for n in c.names),
            default=1,
        )
        floats = [
            (base.info(name).numel, self._wide_dtype(self._inputs(relative), name).itemsize)
            for relative, (*_, base) in self.checkpoints.items()
            for name in base.names
            if base.info(name).dtype.is_floating_point
        ]
        self.memory = merge_memory(
            self.method,
            inputs=count,
            input_itemsize=widest,
            output_itemsize=self.dtype.itemsize if self.dtype is not None else widest,
            largest_numel=max((numel for numel, _ in floats), default=0),
            wide_itemsize=max((itemsize for _, itemsize in floats), default=FLOAT32),
            chunk=CHUNK_ELEMENTS,
            block=BLOCK_ELEMENTS,
            workers=SUM_WORKERS,
        )
        self.inputs = BufferPool(self.memory.inputs.count, self.memory.inputs.nbytes)
        self._scratch = [
            [torch.empty(self.memory.scratch.nbytes, dtype=torch.uint8) for _ in range(count)]
            for _ in range(SUM_WORKERS)
        ]
        self.outputs = BufferPool(self.memory.outputs.count, self.memory.outputs.nbytes)
        pools = [self.inputs, self.outputs]
        if self.memory.rows.count:
            # one, not one per task in flight: a tensor's rows are read once the previous tensor is written
            self.rows = BufferPool(self.memory.rows.count, self.memory.rows.nbytes)
            pools.append(self.rows)
        return pools

    def chunk_elements(self) -> int:
        return chunk_elements(len(self._inputs(self.dirs[0])), CHUNK_ELEMENTS)

    def tasks(self, relative: str, shard: Shard, write: Callable[[torch.Tensor], None]) -> Iterator[Task]:
        checkpoints, inputs = self.checkpoints[relative], self._inputs(relative)
        for name, out in shard.tensors:
            if not out.dtype.is_floating_point:
                yield Task(
                    out.nbytes,
                    partial(_read_all, checkpoints, name),
                    partial(self._non_float_task, relative, name),
                    write,
                )
                continue
            wide = self._wide_dtype(inputs, name)
            # the parameters' and the weights' values for this tensor (per model, per layer, per filter)
            position = self.positions[relative][name]
            method = self.method.at(name, position, self.merged)
            weights = [weight_at(weight, name, position) for weight in self.weights]
            if self.method.elementwise:
                step = self.chunk_elements()
                for start in range(0, out.numel, step):
                    count = min(step, out.numel - start)
                    yield Task(
                        count * out.dtype.itemsize,
                        partial(self._read_chunk, inputs, name, start, count),
                        partial(self._merge_chunk, method, weights, name, dtype=out.dtype, wide=wide),
                        write,
                    )
            else:
                yield Task(
                    out.nbytes,
                    partial(self._read_rows, inputs, name, wide),
                    partial(self._merge_rows, method, weights, name, dtype=out.dtype, shape=out.shape),
                    write,
                )

    def _read_chunk(self, inputs: list[Checkpoint], name: str, start: int, count: int) -> list[torch.Tensor]:
        """One chunk of every input: mapped from its file where it can be (no copy), else read into a buffer."""
        chunks = []
        for checkpoint in inputs:
            chunk = checkpoint.map_flat(name, start, count)
            if chunk is None:
                dtype = checkpoint.info(name).dtype
                chunk = checkpoint.read_flat(
                    name, start, count, self.inputs.take(count * dtype.itemsize, dtype)
                )
            chunks.append(chunk)
        return chunks

    def _apply(
        self, method: MergeMethod, weights: list[float], name: str, rows: list[torch.Tensor]
    ) -> torch.Tensor:
        """The method (with its values and weights for this tensor) on the engine's own widened copies
        (``merge_`` may overwrite them)."""
        if method.needs_base:
            return method.merge_(rows[:-1], weights, rows[-1], key=name)
        return method.merge_(rows, weights, None, key=name)

    def _merge_chunk(
        self,
        method: MergeMethod,
        weights: list[float],
        name: str,
        chunks: list[torch.Tensor],
        dtype: torch.dtype,
        wide: torch.dtype,
    ) -> tuple[torch.Tensor, Callable[[], None]]:
        """An elementwise method on one chunk of every input, cast once to the output dtype."""
        count = chunks[0].numel()
        result = self.outputs.take(count * dtype.itemsize, dtype)
        if self.device.type == "cpu":
            # imported here, not with the engine: numba costs ~1.5 s of CPU and ~110 MB to import, which the
            # commands that import the engine without merging (`cocktail weights`) need not pay
            from cocktail_bot import fused

            fuse = self.method.name == "linear" and {dtype, *(c.dtype for c in chunks)} <= fused.DTYPES
            groups = _split(range(0, count, BLOCK_ELEMENTS), len(self._scratch))
            shares = [
                (self._merge_fused, (weights, chunks, result, group))
                if fuse
                else (self._merge_blocks, (method, weights, name, chunks, result, group, scratch, wide))
                for group, scratch in zip(groups, self._scratch, strict=False)
            ]
            if len(shares) == 1:
                shares[0][0](*shares[0][1])
            else:
                for future in [self._workers.submit(merge, *args) for merge, args in shares]:
                    future.result()
        else:  # move the inputs as stored (fewer bytes), widen them on the device
            result.copy_(
                self._apply(method, weights, name, [chunk.to(self.device).to(wide) for chunk in chunks])
            )
        for chunk in chunks:
            if self.inputs.owns(chunk):  # a mapped chunk is unmapped when the last view of it goes
                self.inputs.give(chunk)
        return result, lambda: self.outputs.give(result)

    def _merge_fused(
        self, weights: list[float], chunks: list[torch.Tensor], result: torch.Tensor, starts: range
    ) -> None:
        """A linear sum in one pass over one worker's share of a chunk (see ``fused``)."""
        from cocktail_bot import fused

        span = slice(starts.start, min(starts.stop, result.numel()))
        fused.linear_into(result[span], [chunk[span] for chunk in chunks], weights)

    def _merge_blocks(
        self,
        method: MergeMethod,
        weights: list[float],
        name: str,
        chunks: list[torch.Tensor],
        result: torch.Tensor,
        starts: range,
        scratch: list[torch.Tensor],
        wide: torch.dtype,
    ) -> None:
        """One worker's share of a chunk, block by block so that the widened scratch stays near the core: the
        chunk is read from memory once and written once, instead of once per step of the method."""
        for start in starts:
            end = min(start + BLOCK_ELEMENTS, result.numel())
            rows = [
                row.view(wide)[: end - start].copy_(chunk[start:end])
                for row, chunk in zip(scratch, chunks, strict=True)
            ]
            result[start:end].copy_(self._apply(method, weights, name, rows))

    def _read_rows(self, inputs: list[Checkpoint], name: str, wide: torch.dtype) -> torch.Tensor:
        """One tensor of every input, widened model by model into the rows of the reused buffer."""
        numel = inputs[0].info(name).numel
        rows = self.rows.take(len(inputs) * numel * wide.itemsize, wide).view(len(inputs), numel)
        step = self.chunk_elements()
        for row, checkpoint in zip(rows, inputs, strict=True):
            dtype = checkpoint.info(name).dtype
            if dtype == wide:
                checkpoint.read_flat(name, 0, numel, row)
                continue
            for start in range(0, numel, step):
                count = min(step, numel - start)
                chunk = checkpoint.read_flat(
                    name, start, count, self.inputs.take(count * dtype.itemsize, dtype)
                )
                row[start : start + count].copy_(chunk)
                self.inputs.give(chunk)
        return rows

    def _merge_rows(
        self,
        method: MergeMethod,
        weights: list[float],
        name: str,
        rows: torch.Tensor,
        dtype: torch.dtype,
        shape: Sequence[int],
    ) -> tuple[torch.Tensor, Callable[[], None]]:
        """A method that needs whole tensors (a tensor-wide statistic, or one per row), each row seen in the
        tensor's shape; the rows are reused once written, as the result may be one of them."""
        widened = [row.view(shape) for row in rows.to(self.device)]
        values = self._apply(method, weights, name, widened).to(dtype).cpu()
        return values, lambda: self.rows.give(rows)

    def _non_float_task(
        self, relative: str, name: str, tensors: list[torch.Tensor]
    ) -> tuple[torch.Tensor, None]:
        return self._non_float(relative, name, tensors), None

    def _non_float(self, relative: str, name: str, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Integer and bool buffers cannot be averaged: keep the base's, and say where sources disagree."""
        *others, base = tensors
        labels = [label for label, _ in self._models(relative)]
        differing = [
            label for label, tensor in zip(labels[:-1], others, strict=True) if not torch.equal(tensor, base)
        ]
        if differing:
            logger.warning(
                "tensor %r (%s) differs between the base %s and %s: keeping the base's values",
                name,
                base.dtype,
                labels[-1],
                ", ".join(differing),
            )
        return base


def _weight(weight: Any) -> Any:
    """A weight as the engine takes it: a number, or a per-layer list / filtered values (checked)."""
    if isinstance(weight, (list, dict)):
        try:
            return check_weight(weight)
        except SettingError as error:
            raise CocktailError(f"weight {weight!r}: {error}") from None
    return float(weight)


def _read_all(checkpoints: list[Checkpoint], name: str) -> list[torch.Tensor]:
    return [checkpoint.read(name) for checkpoint in checkpoints]


def _remote_files(model: Model) -> frozenset[str]:
    return frozenset(model.weights) if isinstance(model, HubModel) else frozenset()


def _check_output(output: Path, models: Sequence[Path], force: bool, into_existing: bool) -> None:
    resolved = output.resolve()
    for model in models:
        holds = resolved == model.resolve() or (resolved in model.resolve().parents and not into_existing)
        if holds:
            raise CocktailError(
                f"the output folder {output} holds the model {model}: choose another output folder"
            )
    if output.exists() and not output.is_dir():
        raise CocktailError(f"the output path {output} is a file, not a folder: choose another output folder")
    if output.exists() and not (force or into_existing):
        raise CocktailError(
            f"the output folder {output} already exists: choose another one or pass --force to replace it"
        )
    if output.exists() and force and not into_existing and Path.cwd().is_relative_to(resolved):
        raise CocktailError(
            f"the output folder {output} is (or contains) the current folder, which cannot be replaced: "
            "choose another output folder"
        )
    check_writable(output if into_existing and output.is_dir() else output.parent, "the merged model")


def _check_existing_files(output: Path, weight_dirs: Sequence[str], written: set[str]) -> None:
    """Writing into an existing folder keeps every file the merge does not write. Weights it would not replace
    (another shard layout) are refused: transformers could load them instead of the merge."""
    stale = sorted(
        path.relative_to(output).as_posix()
        for relative in weight_dirs
        if (output / relative).is_dir()
        for path in (output / relative).iterdir()
        if is_weight_file(path, output / relative) and path.relative_to(output).as_posix() not in written
    )
    if stale:
        raise CocktailError(
            f"the output folder {output} holds model weights this merge would not replace ({_listed(stale)}): "
            "transformers could load them instead of the merged model; remove them or choose another folder"
        )
    blocked = sorted(name for name in written if (output / name).exists() and not (output / name).is_file())
    if blocked:
        raise CocktailError(
            f"the output folder {output} has folders where the merged model has files ({_listed(blocked)}): "
            "choose another output folder"
        )


def _written_files(copied: Sequence[Path], layout: dict[str, list[Shard]]) -> set[str]:
    """The relative POSIX paths a merge writes: the copied files, the shards and their indexes."""
    names = {path.as_posix() for path in copied}
    for relative, shards in layout.items():
        names.update((Path(relative) / shard.filename).as_posix() for shard in shards)
        if len(shards) > 1:
            names.add((Path(relative) / SAFETENSORS_INDEX).as_posix())
    return names


@contextmanager
def _single_threaded_kernels() -> Iterator[None]:
    """One torch thread for the arithmetic: the reader and writer threads need the other cores, and
    memory-bound kernels split across busy cores wait on each other (2 threads on 2 cores: 5x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def _heap_frozen() -> Iterator[None]:
    """The objects that exist before the merge (torch, numba, transformers: a million or so) are left out of
    the garbage collector's passes while it runs. The merge's own small objects (futures, views, closures)
    still trigger collections, but a full one no longer walks the whole heap (measured: 3.5-3.7 -> 3.1-3.4 CPU
    s for a 2.2 GB merge, docs/benchmarks.md). Unfrozen after: nothing is kept from collection for good."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _usable_device(device: str) -> torch.device:
    try:
        torch_device = torch.device(device)
        torch.empty(1, device=torch_device)
    except (RuntimeError, AssertionError) as error:
        raise CocktailError(f"device {device!r} is not usable here ({error}): use --device cpu") from None
    return torch_device


@dataclass
class _Finisher:
    """Finishes each shard as its last bytes are written: hashed, sized, handed to ``on_shard``."""

    folder: Path
    files: dict[str, str]
    sizes: dict[str, int]
    on_shard: Callable[[str, Path, str], None] | None

    def writing(self, writer: ShardWriter) -> Callable[[torch.Tensor], None]:
        def write(values: torch.Tensor) -> None:
            writer.write(values)
            if writer.complete:
                self.finish(writer)

        return write

    def finish(self, writer: ShardWriter) -> None:
        """Once per shard (a shard of empty tensors gets no write: the engine finishes it at the end)."""
        name = writer.path.relative_to(self.folder).as_posix()
        if name in self.files:
            return
        self.files[name] = writer.finish()
        self.sizes[name] = writer.path.stat().st_size
        if self.on_shard is not None:
            self.on_shard(name, writer.path, self.files[name])


def _update_config_dtype(folder: Path, dtype: torch.dtype) -> None:
    """With --dtype, config.json must say so, or transformers would load the model in the base's dtype."""
    path = folder / "config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    name = str(dtype).removeprefix("torch.")
    changed = {key: name for key in ("torch_dtype", "dtype") if key in config and config[key] != name}
    if changed:
        config.update(changed)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_arguments(
    models: Sequence[Hashable],
    weights: Sequence[Any],
    *,
    base: Hashable | None = None,
    method: str = "linear",
    method_params: dict[str, Any] | None = None,
    model_params: Sequence[dict[str, Any] | None] | None = None,
    dtype: str | torch.dtype | None = None,
    shard_size: str | int = "5GB",
) -> tuple[MergeMethod, torch.dtype | None, int]:
    """The checks that need no model files (run them before downloading anything).

    ``models`` and ``base`` are anything comparable (paths, references): the method needs to know which listed
    model, if any, is its base.
    """
    if not models:
        raise CocktailError("no models to merge: give at least one model folder")
    if len(weights) != len(models):
        raise CocktailError(f"got {len(weights)} weights for {len(models)} models: give one weight per model")
    merge_method = get_method(method, method_params, model_params).for_base(base)
    merge_method.check_recipe(list(models), [_weight(weight) for weight in weights], base)
    return merge_method, parse_dtype(dtype), parse_shard_size(shard_size)


def merge(
    sources: Sequence[str | Model],
    weights: Sequence[Any],
    output: str | Path,
    *,
    model_type: ModelType | str,
    base: str | Model | None = None,
    method: str = "linear",
    method_params: dict[str, Any] | None = None,
    model_params: Sequence[dict[str, Any] | None] | None = None,
    dtype: str | torch.dtype | None = None,
    shard_size: str | int = "5GB",
    device: str = "cpu",
    force: bool = False,
    into_existing: bool = False,
    progress: bool = True,
    on_shard: Callable[[str, Path, str], None] | None = None,
) -> MergeResult:
    """Merge models (folders, or Hub models read in place) into ``output``; every check runs before anything
    is written.

    An existing ``output`` is refused, replaced as a whole (``force``), or, with ``into_existing``, written into
    file by file: its other files are kept (LM_Cocktail's behaviour, for the drop-in API).
    ``method_params`` and ``model_params`` (one mapping per model, of its per-model parameters) take values,
    per-layer lists and filtered values (:mod:`cocktail_bot.parameter_values`), resolved tensor by tensor; so
    do ``weights`` (one number per model, or, for methods with a base, such a setting).
    ``on_shard(name, path, sha256)`` runs as each weights file is complete, on the writer thread (it may block
    to hold the merge back, and may take the file away: ``output`` then lacks it).
    """
    started = time.perf_counter()
    ModelType.parse(model_type)
    models: list[Model] = [s if isinstance(s, HubModel) else Path(s) for s in sources]
    paths = [model_folder(model) for model in models]
    weights = [_weight(weight) for weight in weights]
    resolved = [path.resolve() for path in paths]
    base_model: Model | None = base if isinstance(base, HubModel) or base is None else Path(base)
    merge_method, out_dtype, max_shard_bytes = check_arguments(
        resolved,
        weights,
        base=model_folder(base_model).resolve() if base_model is not None else None,
        method=method,
        method_params=method_params,
        model_params=model_params,
        dtype=dtype,
        shard_size=shard_size,
    )
    weights = merge_method.normalised(weights)
    if base_model is None:
        base_model = models[0]
    base_path = model_folder(base_model)
    output = Path(output)
    _check_output(output, [*paths, base_path], force, into_existing)
    torch_device = _usable_device(device)

    with ExitStack() as stack:
        merged = merge_method.split_base(resolved, base_path.resolve())
        plan = _Merge(
            models,
            merged,
            weights,
            base_model,
            merge_method,
            out_dtype,
            torch_device,
            ModelType.parse(model_type),
            stack,
        )
        dtype_name = plan.output_dtype_name()
        layout = {relative: plan.shards(relative, max_shard_bytes) for relative in plan.dirs}
        copied = support_files(base_path, _remote_files(base_model))
        in_place = into_existing and output.is_dir()
        if in_place:
            _check_existing_files(output, plan.dirs, _written_files(copied, layout))
        output.parent.mkdir(parents=True, exist_ok=True)
        temporary = (
            staging_folder(output, ".cocktail-partial-")
            if in_place
            else staging_folder(output.parent, f".{output.name}.partial-")
        )
        writers: list[ShardWriter] = []
        try:
            files = copy_files(base_path, temporary, copied)
            if out_dtype is not None:
                _update_config_dtype(temporary, out_dtype)
                files["config.json"] = file_sha256(temporary / "config.json")
            sizes = {name: (temporary / name).stat().st_size for name in files}
            finisher = _Finisher(temporary, files, sizes, on_shard)
            parts = []
            for relative, shards in layout.items():
                (temporary / relative).mkdir(parents=True, exist_ok=True)
                if (index := write_index(temporary / relative, shards)) is not None:
                    files[index.relative_to(temporary).as_posix()] = file_sha256(index)
                    sizes[index.relative_to(temporary).as_posix()] = index.stat().st_size
                for shard in shards:
                    writers.append(ShardWriter(temporary / relative / shard.filename, shard))
                    parts.append((relative, shard, finisher.writing(writers[-1])))
            total = sum(shard.nbytes for shards in layout.values() for shard in shards)
            logger.info(
                "merging %d models (%s, %s of tensors, %s)",
                len(paths),
                dtype_name,
                format_size(total),
                merge_method.name,
            )
            with (
                tqdm(total=total, unit="B", unit_scale=True, desc="merging", disable=not progress) as bar,
                _single_threaded_kernels(),
                _heap_frozen(),
            ):
                tasks = (
                    task for relative, shard, write in parts for task in plan.tasks(relative, shard, write)
                )
                run_tasks(tasks, bar.update, plan.allocate_pools())
            for writer in writers:
                finisher.finish(writer)
            plan.verify()
            writers.clear()
            if in_place:
                move_files_into(temporary, output, sorted(files))
            else:
                replace_folder(temporary, output)
        except BaseException:
            for writer in writers:
                writer.abort()
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    files = dict(sorted(files.items()))
    total_bytes = sum(sizes.values())
    seconds = time.perf_counter() - started
    logger.debug("wrote %s (%s) in %.1f s", output, format_size(total_bytes), seconds)
    return MergeResult(output, files, total_bytes, dtype_name, seconds, plan.memory)
