"""Read a model folder's weights tensor by tensor, never a whole model at once.

safetensors files are read by offset: the header (8 bytes of little-endian length, then JSON) gives each
tensor's byte range, and ``os.preadv`` copies just that range into a buffer, or ``map_flat`` maps just that
range (the merge's chunks: its arithmetic reads the page cache, with no copy). Files are never mapped whole, so
pages of the input files live in the kernel's page cache, not in the process's resident memory, and peak RSS
stays a small multiple of the largest tensor (or chunk) read. A Hub model's weights are read the same way from the Hub
by HTTP range requests (``RemoteCheckpoint``, see ``remote``); ``open_checkpoint`` picks the reader. Pickle checkpoints (``pytorch_model.bin``) are only
opened with ``torch.load(weights_only=True)``, memory-mapped where the format allows it, and with a warning.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import pickle
import struct
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from cocktail_bot.errors import CocktailError
from cocktail_bot.model_files import (
    PICKLE_FILE,
    PICKLE_INDEX,
    SAFETENSORS_FILE,
    SAFETENSORS_INDEX,
    no_weights_error,
)
from cocktail_bot.remote import HubModel, RemoteFile

logger = logging.getLogger(__name__)


# safetensors dtype codes <-> torch dtypes (the format is little-endian, like the hosts torch supports here).
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_CODES: dict[torch.dtype, str] = {dtype: code for code, dtype in DTYPES.items()}

MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class _Entry:
    """Where one tensor lives in a safetensors file (a local path, or a file's name in a Hub repo)."""

    file: Path | str
    info: TensorInfo
    start: int  # absolute byte offset of the tensor's first byte in the file


def read_safetensors_header(path: Path) -> tuple[int, dict]:
    """Return (offset of the data section, header dict) of a safetensors file; entries are checked by the caller."""
    try:
        with open(path, "rb") as file:
            prefix = file.read(8)
            if len(prefix) != 8:
                raise ValueError("file is shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"header length {length} is implausible")
            raw = file.read(length)
            if len(raw) != length:
                raise ValueError("file ends inside the header")
            header = json.loads(raw)
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise CocktailError(
            f"{path} is not a readable safetensors file ({error}): re-download or re-save it"
        ) from None
    return 8 + length, header


def _header_entries(
    where: str, file: Path | str, data_start: int, size: int, header: dict
) -> dict[str, _Entry]:
    """Each tensor's dtype, shape and absolute offset, every entry checked against the file's size."""
    entries = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry.get("data_offsets", (None, None))
        if entry.get("dtype") not in DTYPES or begin is None or not 0 <= begin <= end <= size - data_start:
            raise CocktailError(
                f"{where} has a malformed entry for tensor {name!r}: re-download or re-save it"
            )
        info = TensorInfo(DTYPES[entry["dtype"]], tuple(entry["shape"]))
        if end - begin != info.nbytes:
            raise CocktailError(
                f"{where}: tensor {name!r} has {end - begin} bytes but its shape needs {info.nbytes}"
            )
        entries[name] = _Entry(file, info, data_start + begin)
    return entries


def _safetensors_entries(path: Path) -> dict[str, _Entry]:
    data_start, header = read_safetensors_header(path)
    return _header_entries(str(path), path, data_start, path.stat().st_size, header)


def _index_files(
    folder: Path, index_name: str, remote: dict[str, tuple[int, str]] | None = None, prefix: str = ""
) -> list[Path]:
    """The shard files an index names, each checked to exist (locally, or in ``remote`` under ``prefix``)."""
    index_path = folder / index_name
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CocktailError(
            f"{index_path} is not a valid weights index ({error!r}): re-download the model"
        ) from None
    files = []
    for shard in sorted(set(weight_map.values())):
        path = folder / shard
        if not (path.is_file() if remote is None else prefix + shard in remote):
            raise CocktailError(
                f"{index_path} names the shard {shard}, which is missing: download the complete model"
            )
        files.append(path)
    return files


def _read_exact(fd: int, buffer: memoryview, offset: int, path: Path | str) -> None:
    """Fill ``buffer`` from ``fd`` at ``offset``; preadv may return short counts, so loop."""
    done = 0
    total = len(buffer)
    while done < total:
        count = os.preadv(fd, [buffer[done:]], offset + done)
        if count <= 0:
            raise CocktailError(
                f"{path} ends before byte {offset + total}: it was cut short or replaced while being read; "
                "re-download or re-save it"
            )
        done += count


def _load_pickle(path: Path) -> object:
    """``torch.load`` limited to tensors and plain containers; memory-mapped unless the format is legacy."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CocktailError(
            f"{path} holds objects other than tensors, and loading it could run code: refused; "
            "convert the model to safetensors where you trust it"
        ) from None
    except (OSError, EOFError, RuntimeError) as error:
        raise CocktailError(f"cannot read {path} ({str(error).splitlines()[0]}): re-download it") from None


class Checkpoint:
    """The weights of one model folder, readable tensor by tensor (use as a context manager)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CocktailError(f"model folder {self.folder} does not exist: check the path")
        self._entries: dict[str, _Entry] = {}
        self._pickled: dict[str, torch.Tensor] = {}
        self._fds: dict[Path | str, int] = {}
        if (self.folder / SAFETENSORS_INDEX).is_file():
            files = _index_files(self.folder, SAFETENSORS_INDEX)
        elif (self.folder / SAFETENSORS_FILE).is_file():
            files = [self.folder / SAFETENSORS_FILE]
        elif (self.folder / PICKLE_INDEX).is_file() or (self.folder / PICKLE_FILE).is_file():
            self._load_pickles()
            files = []
        else:
            raise no_weights_error(self.folder)
        for path in files:
            self._add(_safetensors_entries(path))
        self.names: list[str] = sorted(self._entries or self._pickled)

    def _add(self, entries: dict[str, _Entry]) -> None:
        for name, entry in entries.items():
            if name in self._entries:
                raise CocktailError(
                    f"tensor {name!r} appears in two shards of {self.folder}: re-save the model"
                )
            self._entries[name] = entry

    def _load_pickles(self) -> None:
        files = (
            _index_files(self.folder, PICKLE_INDEX)
            if (self.folder / PICKLE_INDEX).is_file()
            else [self.folder / PICKLE_FILE]
        )
        logger.warning(
            "%s has pickle weights (%s): loading them with torch.load(weights_only=True); "
            "convert the model to safetensors for faster, memory-bounded merges",
            self.folder,
            ", ".join(path.name for path in files),
        )
        for path in files:
            state = _load_pickle(path)
            if not isinstance(state, dict):
                raise CocktailError(f"{path} does not hold a state dict: convert it to safetensors")
            self._pickled.update(
                {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}
            )

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._pickled.clear()

    def alias(self, name: str, target: str) -> None:
        """Make ``name`` read ``target``'s values (a tied model's embedding standing in for its head)."""
        if target in self._entries:
            self._entries[name] = self._entries[target]
        else:
            self._pickled[name] = self._tensor(target)
        self.names = sorted(self._entries or self._pickled)

    def drop(self, name: str) -> None:
        """Leave ``name`` out (a redundant copy of a tied tensor)."""
        self._entries.pop(name, None)
        self._pickled.pop(name, None)
        self.names = sorted(self._entries or self._pickled)

    def verify(self) -> None:
        """Check that the bytes read were the pinned ones: a local folder's files were hashed when resolved."""

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._pickled

    def info(self, name: str) -> TensorInfo:
        if name in self._entries:
            return self._entries[name].info
        tensor = self._tensor(name)
        return TensorInfo(tensor.dtype, tuple(tensor.shape))

    def read(self, name: str) -> torch.Tensor:
        """The whole tensor, in its stored dtype and shape, in memory this process owns."""
        info = self.info(name)
        return self.read_flat(name, 0, info.numel).view(info.shape)

    def read_flat(self, name: str, start: int, count: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Elements ``[start, start + count)`` of the flattened tensor, into ``out`` if given.

        Reading big tensors in chunks like this keeps a merge's memory independent of tensor size.
        """
        info = self.info(name)
        if out is None:
            out = torch.empty(count, dtype=info.dtype)
        elif out.dtype != info.dtype or out.numel() != count:
            raise ValueError(
                f"buffer for {name!r} must hold {count} {info.dtype}, not {out.numel()} {out.dtype}"
            )
        if name not in self._entries:
            return out.copy_(self._tensor(name).reshape(-1)[start : start + count])
        entry = self._entries[name]
        if count:
            view = out.view(torch.uint8).numpy().data
            self._read_into(entry.file, view, entry.start + start * info.dtype.itemsize)
        return out

    def map_flat(self, name: str, start: int, count: int) -> torch.Tensor | None:
        """Elements ``[start, start + count)`` as a read-only view of the file's pages, mapped and faulted in
        here (the reader thread), not by whoever reads them; None where only ``read_flat`` can read them (a
        pickle, a Hub file, a filesystem that cannot map, a file cut short since it was opened: reading its
        missing pages would kill the process with SIGBUS, where ``read_flat`` says what happened). Writing to it
        would crash the process.

        The mapping lives as long as the tensor: resident memory holds only the chunks in flight, as with
        ``read_flat``, without the copy (reading 3.4 GB of page cache: 0.4-0.5 CPU s mapped, 1.8 s copied).
        """
        entry = self._entries.get(name)
        if entry is None or not count:
            return None
        dtype = entry.info.dtype
        first = entry.start + start * dtype.itemsize
        aligned = first - first % mmap.ALLOCATIONGRANULARITY
        fd = self._fd(entry.file)
        if os.fstat(fd).st_size < first + count * dtype.itemsize:
            return None
        try:
            mapped = mmap.mmap(
                fd,
                first - aligned + count * dtype.itemsize,
                flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                prot=mmap.PROT_READ,
                offset=aligned,
            )
        except OSError:
            return None
        with warnings.catch_warnings():  # torch warns, once, that the buffer is read-only: it is meant to be
            warnings.simplefilter("ignore", UserWarning)
            return torch.frombuffer(mapped, dtype=dtype, count=count, offset=first - aligned)

    def _read_into(self, file: Path | str, view: memoryview, offset: int) -> None:
        _read_exact(self._fd(file), view, offset, file)

    def _tensor(self, name: str) -> torch.Tensor:
        try:
            return self._pickled[name]
        except KeyError:
            raise CocktailError(f"{self.folder} has no tensor named {name!r}") from None

    def _fd(self, path: Path | str) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]


class RemoteCheckpoint(Checkpoint):
    """A Hub model's safetensors weights (root or a sentence-transformers module folder ``relative``), read
    by range requests at the pinned commit; the headers come from ``HfApi.parse_safetensors_file_metadata``
    and the shard list from the downloaded index. ``verify`` checks every file's sha256."""

    def __init__(self, model: HubModel, relative: str = "") -> None:
        from huggingface_hub import HfApi

        from cocktail_bot.hub_access import hub_errors, with_retries

        self.folder = model.folder / relative
        self._entries, self._pickled, self._fds = {}, {}, {}
        self._files: dict[str, RemoteFile] = {}
        prefix = f"{relative}/" if relative else ""
        if (self.folder / SAFETENSORS_INDEX).is_file():
            names = [
                prefix + path.name
                for path in _index_files(self.folder, SAFETENSORS_INDEX, model.weights, prefix)
            ]
        elif prefix + SAFETENSORS_FILE in model.weights:
            names = [prefix + SAFETENSORS_FILE]
        else:
            raise no_weights_error(self.folder)
        api = HfApi(endpoint=model.endpoint, token=model.token)
        for name in names:
            where = f"{model.repo_id}@{model.revision[:12]}: {name}"
            with hub_errors(model.repo_id, model.revision, reading=True, token=model.token):
                parsed = with_retries(
                    partial(
                        api.parse_safetensors_file_metadata,
                        model.repo_id,
                        name,
                        revision=model.revision,
                        token=model.token,
                    ),
                    f"reading the header of {where}",
                )
            size = model.weights[name][0]
            header = {
                tensor: {"dtype": t.dtype, "shape": t.shape, "data_offsets": list(t.data_offsets)}
                for tensor, t in parsed.tensors.items()
            }
            # safetensors data runs to the end of the file: the header's length follows (checked on the wire)
            data_start = size - max((t.data_offsets[1] for t in parsed.tensors.values()), default=0)
            self._files[name] = RemoteFile(model, name, data_start)
            self._add(_header_entries(where, name, data_start, size, header))
        self.names = sorted(self._entries)

    def close(self) -> None:
        for file in self._files.values():
            file.close()
        self._pickled.clear()

    def verify(self) -> None:
        """Read what the merge did not need and check each file's sha256 against the pinned one."""
        for file in self._files.values():
            file.verify()
        extra = sum(file.extra_bytes for file in self._files.values())
        if extra:
            logger.debug("%s: %d bytes were read twice (tensors read out of file order)", self.folder, extra)

    def map_flat(self, name: str, start: int, count: int) -> None:
        """Nothing to map: the bytes come over HTTP (``read_flat``)."""
        return None

    def _read_into(self, file: Path | str, view: memoryview, offset: int) -> None:
        self._files[str(file)].read_into(offset, view)


def open_checkpoint(model: Path | HubModel, relative: str = "") -> Checkpoint:
    """The weights of a local folder or a Hub model (``relative``: a sentence-transformers module folder)."""
    if isinstance(model, HubModel):
        return RemoteCheckpoint(model, relative)
    return Checkpoint(Path(model) / relative)


def model_folder(model: Path | HubModel) -> Path:
    """Where a model's config, tokenizer and module files are."""
    return model.folder if isinstance(model, HubModel) else Path(model)
