"""Which parts of a model folder are weights to merge and which are files to copy from the base as they are.

A merged model must behave like its base in everything but its parameters: the same config, tokenizer, chat
template and, for sentence-transformers models, the same module list, pooling and normalisation (a mean-pooled
model stays mean-pooled). Module folders that carry weights (Dense layers, or a ``0_Transformer`` folder in
older models) are merged like the root weights; everything else in them is copied.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import shutil
from collections.abc import Collection
from pathlib import Path

from cocktail_bot.errors import CocktailError

# Weight files, in the order a folder's checkpoint is looked for. Kept here, free of torch, so that resolving
# sources and planning stay fast to import.
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS_INDEX, SAFETENSORS_FILE, PICKLE_INDEX, PICKLE_FILE)

# Files at the top of a model folder that describe the model rather than hold its parameters.
ROOT_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",  # sentencepiece: tokenizer.model, spiece.model, sentencepiece.bpe.model
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_*_config.json",
)
ROOT_DIRS = ("additional_chat_templates",)


def no_weights_error(folder: Path) -> CocktailError:
    """The one message for a folder without weights, whether planning or reading finds it."""
    return CocktailError(
        f"no model weights in {folder}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, "
        f"{PICKLE_FILE} or {PICKLE_INDEX}"
    )


def has_weights(folder: Path) -> bool:
    return any((Path(folder) / name).is_file() for name in WEIGHT_FILES)


def module_dirs(base: Path) -> list[str]:
    """The sentence-transformers module folders (relative) that the base's ``modules.json`` lists, if any."""
    path = base / "modules.json"
    if not path.is_file():
        return []
    try:
        modules = json.loads(path.read_text())
        return [module["path"] for module in modules if module.get("path")]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CocktailError(f"{path} is not a valid sentence-transformers module list ({error!r})") from None


def weight_dirs(base: Path, remote: Collection[str] = ()) -> list[str]:
    """Folders (relative; ``""`` is the root) whose weights are merged: the root and modules with weights.

    ``remote``: weight files (paths relative to ``base``) read from the Hub rather than stored in ``base``.
    """
    dirs = [
        relative
        for relative in ["", *module_dirs(base)]
        if has_weights(base / relative)
        or any(f"{relative}/{name}".lstrip("/") in remote for name in WEIGHT_FILES)
    ]
    if not dirs:
        raise no_weights_error(base)
    return dirs


def is_weight_file(path: Path, folder: Path) -> bool:
    """Weights of ``folder`` (merged, never copied): the known names and the shards their indexes list."""
    if path.parent != folder:
        return False
    return (
        path.name in WEIGHT_FILES
        or fnmatch.fnmatch(path.name, "*.safetensors")
        or fnmatch.fnmatch(path.name, "pytorch_model-*.bin")
    )


def support_files(base: Path, remote: Collection[str] = ()) -> list[Path]:
    """The base's files to copy unchanged into the merged model, relative to ``base``, sorted (``remote``: as
    for ``weight_dirs``)."""
    files = [
        path
        for path in base.iterdir()
        if path.is_file() and any(fnmatch.fnmatch(path.name, pattern) for pattern in ROOT_FILE_PATTERNS)
    ]
    merged = set(weight_dirs(base, remote))
    for relative in [*ROOT_DIRS, *module_dirs(base)]:
        folder = base / relative
        if not folder.is_dir():
            continue
        files += [
            path
            for path in folder.rglob("*")
            if path.is_file() and not (relative in merged and is_weight_file(path, folder))
        ]
    return sorted(path.relative_to(base) for path in files)


def copy_files(base: Path, target: Path, files: list[Path]) -> dict[str, str]:
    """Copy files (relative to ``base``) into ``target`` and return their sha256 by relative POSIX path."""
    hashes = {}
    for relative in files:
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(base / relative, destination)
        hashes[relative.as_posix()] = file_sha256(destination)
    return hashes


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def largest_float_tensor(folder: Path) -> int | None:
    """Values in the largest floating-point tensor of a folder's root safetensors weights (see
    :func:`largest_float_shape`)."""
    shape = largest_float_shape(folder)
    return math.prod(shape) if shape is not None else None


def largest_float_shape(folder: Path) -> tuple[int, ...] | None:
    """The shape of the largest floating-point tensor of a folder's root safetensors weights, read from the files'
    headers only; None when the folder has none (pickled weights cannot be read without loading them)."""
    largest: tuple[int, ...] | None = None
    for path in sorted(Path(folder).glob("*.safetensors")):
        with open(path, "rb") as stream:
            length = int.from_bytes(stream.read(8), "little")
            header = json.loads(stream.read(length))
        for name, entry in header.items():
            if name != "__metadata__" and str(entry.get("dtype", "")).startswith(("F", "BF")):
                shape = tuple(entry["shape"])
                if largest is None or math.prod(shape) > math.prod(largest):
                    largest = shape
    return largest
