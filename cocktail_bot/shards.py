"""Streaming safetensors output: the header first, then each tensor's bytes in header order.

``safetensors.torch.save_file`` needs a whole shard in memory; a merge of a 70B model cannot afford that.
Because every output tensor's dtype and shape are known before any arithmetic, the header (and so every
offset) is written up front and tensor bytes are appended as they are computed, in chunks, hashing the file on
the way. Layout and JSON serialisation are fixed, so the same tensors always give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from cocktail_bot.checkpoint import DTYPE_CODES, TensorInfo
from cocktail_bot.errors import CocktailError
from cocktail_bot.model_files import SAFETENSORS_FILE, SAFETENSORS_INDEX
from cocktail_bot.sizes import POSITIVE, parse_size
from cocktail_bot.writable import preallocate

METADATA = {"format": "pt"}
_HASHER = ThreadPoolExecutor(1, "cocktail-sha256")


def parse_shard_size(size: str | int) -> int:
    """Bytes in a shard size (:func:`cocktail_bot.sizes.parse_size`), or CocktailError saying what to write."""
    try:
        return parse_size(size)
    except ValueError as error:
        hint = (
            str(error) if str(error) == POSITIVE else "use a number of bytes or a size such as 5GB or 500MB"
        )
        raise CocktailError(f"invalid shard size {size!r}: {hint}") from None


@dataclass(frozen=True)
class Shard:
    """One output file and its tensors, in the order their bytes appear in the file."""

    filename: str
    tensors: tuple[tuple[str, TensorInfo], ...]

    @property
    def nbytes(self) -> int:
        return sum(info.nbytes for _, info in self.tensors)


def plan_shards(tensors: Sequence[tuple[str, TensorInfo]], max_shard_bytes: int) -> list[Shard]:
    """Split tensors (in name order) into files of at most ``max_shard_bytes``, as transformers does.

    A tensor bigger than the limit gets a file of its own. Within a file, tensors are ordered by decreasing
    item size then name (as safetensors does) so that every tensor starts at an offset aligned to its dtype.
    """
    groups: list[list[tuple[str, TensorInfo]]] = [[]]
    size = 0
    for name, info in sorted(tensors, key=lambda item: item[0]):
        if groups[-1] and size + info.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, info))
        size += info.nbytes
    count = len(groups)
    shards = []
    for number, group in enumerate(groups, start=1):
        filename = SAFETENSORS_FILE if count == 1 else f"model-{number:05d}-of-{count:05d}.safetensors"
        ordered = tuple(sorted(group, key=lambda item: (-item[1].dtype.itemsize, item[0])))
        shards.append(Shard(filename, ordered))
    return shards


def header_bytes(tensors: Sequence[tuple[str, TensorInfo]]) -> bytes:
    """The 8-byte length and JSON header for tensors stored back to back in this order (padded to 8 bytes)."""
    header: dict[str, object] = {"__metadata__": METADATA}
    offset = 0
    for name, info in tensors:
        header[name] = {
            "dtype": DTYPE_CODES[info.dtype],
            "shape": list(info.shape),
            "data_offsets": [offset, offset + info.nbytes],
        }
        offset += info.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def index_json(shards: Sequence[Shard]) -> str:
    """transformers' ``model.safetensors.index.json`` for a sharded output."""
    weight_map = {name: shard.filename for shard in shards for name, _ in shard.tensors}
    index = {
        "metadata": {"total_size": sum(shard.nbytes for shard in shards)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    return json.dumps(index, indent=2) + "\n"


def write_index(folder: Path, shards: Sequence[Shard]) -> Path | None:
    """Write the index a sharded output needs (a single file needs none); return its path if written."""
    if len(shards) < 2:
        return None
    path = folder / SAFETENSORS_INDEX
    path.write_text(index_json(shards))
    return path


class ShardWriter:
    """Writes one safetensors file sequentially, checking that exactly the planned bytes arrive; hashes it."""

    def __init__(self, path: Path, shard: Shard) -> None:
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed by finish(), which the engine always reaches or aborts
        self._hash = hashlib.sha256()
        self._remaining = shard.nbytes
        header = header_bytes(shard.tensors)
        self._size, self._reserved = len(header) + shard.nbytes, False
        self._emit(header)

    def _emit(self, data: bytes | memoryview) -> None:
        """Write and hash at once (both release the GIL): hashing at 1-2 GB/s would otherwise slow writing."""
        hashed = _HASHER.submit(self._hash.update, data)
        try:
            self._file.write(data)
        finally:
            hashed.result()

    def write(self, values: torch.Tensor) -> None:
        """Append the next chunk of tensor data (any dtype; its raw little-endian bytes are written)."""
        data = values.contiguous().reshape(-1).view(torch.uint8).numpy().data
        if len(data) > self._remaining:
            raise RuntimeError(f"{self.path}: more tensor bytes than the header declares")
        if not self._reserved:  # with the first tensor bytes, so that only the shards being written take disk
            preallocate(self._file.fileno(), self._size)
            self._reserved = True
        self._remaining -= len(data)
        self._emit(data)

    @property
    def complete(self) -> bool:
        """Every planned byte is written."""
        return not self._remaining

    def finish(self) -> str:
        """Close the file and return its sha256 (hex)."""
        self._file.close()
        if self._remaining:
            raise RuntimeError(f"{self.path}: {self._remaining} planned bytes were never written")
        return self._hash.hexdigest()

    def abort(self) -> None:
        self._file.close()
