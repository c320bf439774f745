"""Checkpoint reads real transformers checkpoints tensor by tensor, exactly as stored."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cocktail_bot.checkpoint import Checkpoint, TensorInfo
from cocktail_bot.errors import CocktailError


def all_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    state = {}
    for path in sorted(folder.glob("*.safetensors")):
        state.update(load_file(path))
    return state


@pytest.mark.parametrize("fixture", ["tiny_llamas", "tiny_llama_sharded", "tiny_llama_bf16"])
def test_reads_every_tensor_exactly(fixture, request):
    folder = request.getfixturevalue(fixture)
    folder = folder[0] if isinstance(folder, list) else folder
    expected = all_safetensors(folder)
    with Checkpoint(folder) as checkpoint:
        assert checkpoint.names == sorted(expected)
        for name, tensor in expected.items():
            assert checkpoint.info(name) == TensorInfo(tensor.dtype, tuple(tensor.shape))
            value = checkpoint.read(name)
            assert value.dtype == tensor.dtype and torch.equal(value, tensor)


def test_sharded_checkpoint_covers_the_index(tiny_llama_sharded):
    index = json.loads((tiny_llama_sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    with Checkpoint(tiny_llama_sharded) as checkpoint:
        assert checkpoint.names == sorted(index["weight_map"])


def test_read_flat_returns_a_slice(tiny_llama_bf16):
    with Checkpoint(tiny_llama_bf16) as checkpoint:
        name = "model.embed_tokens.weight"
        whole = checkpoint.read(name).reshape(-1)
        assert torch.equal(checkpoint.read_flat(name, 100, 77), whole[100:177])
        assert checkpoint.read_flat(name, 5, 0).numel() == 0


def test_map_flat_maps_the_same_slice_at_unaligned_offsets(tiny_llama_bf16, tiny_llamas):
    """Chunks start anywhere in a file, not at page boundaries: the mapping starts at the page below."""
    for folder in (tiny_llama_bf16, tiny_llamas[0]):
        with Checkpoint(folder) as checkpoint:
            for name in checkpoint.names:
                count = checkpoint.info(name).numel
                for start, length in ((0, count), (1, count - 1), (count // 3, count // 3)):
                    mapped = checkpoint.map_flat(name, start, length)
                    assert mapped is not None and mapped.dtype == checkpoint.info(name).dtype
                    assert torch.equal(mapped, checkpoint.read_flat(name, start, length))
            assert checkpoint.map_flat(name, 0, 0) is None


def test_a_mapped_chunk_outlives_its_checkpoint(tiny_llama_bf16):
    """The mapping, not the file descriptor, holds the pages: closing the checkpoint leaves the chunk valid."""
    with Checkpoint(tiny_llama_bf16) as checkpoint:
        name = "model.embed_tokens.weight"
        expected = checkpoint.read_flat(name, 3, 1000)
        mapped = checkpoint.map_flat(name, 3, 1000)
    assert mapped is not None and torch.equal(mapped, expected)


def test_a_file_cut_short_after_opening_is_read_not_mapped(tiny_llama_bf16, tmp_path):
    """Mapping pages past the end of a file would kill the process (SIGBUS) when they are read; the read says
    what happened instead."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama_bf16, folder)
    with Checkpoint(folder) as checkpoint:
        name = max(checkpoint.names, key=lambda n: checkpoint.info(n).numel)
        count = checkpoint.info(name).numel
        assert checkpoint.map_flat(name, 0, count) is not None
        weights = folder / "model.safetensors"
        with open(weights, "r+b") as file:
            file.truncate(weights.stat().st_size // 2)
        last = max(checkpoint.names, key=lambda n: checkpoint._entries[n].start)
        assert checkpoint.map_flat(last, 0, checkpoint.info(last).numel) is None
        with pytest.raises(CocktailError, match=f"{weights} ends before byte .*: it was cut short"):
            checkpoint.read_flat(last, 0, checkpoint.info(last).numel)


def copy_config(source: Path, target: Path) -> Path:
    target.mkdir()
    shutil.copy(source / "config.json", target / "config.json")
    return target


def test_pickle_checkpoint_loads_with_a_warning(tiny_llamas, tmp_path, caplog):
    state = all_safetensors(tiny_llamas[0])
    folder = copy_config(tiny_llamas[0], tmp_path / "bin")
    torch.save(state, folder / "pytorch_model.bin")
    with caplog.at_level(logging.WARNING), Checkpoint(folder) as checkpoint:
        assert checkpoint.names == sorted(state)
        for name, tensor in state.items():
            assert torch.equal(checkpoint.read(name), tensor)
        name = "model.norm.weight"
        assert torch.equal(checkpoint.read_flat(name, 3, 4), state[name][3:7])
        assert checkpoint.map_flat(name, 3, 4) is None  # pickles are read, not mapped
    assert "pickle weights (pytorch_model.bin)" in caplog.text
    assert "torch.load(weights_only=True)" in caplog.text


def test_sharded_pickle_checkpoint(tiny_llamas, tmp_path):
    state = all_safetensors(tiny_llamas[0])
    folder = copy_config(tiny_llamas[0], tmp_path / "bin-sharded")
    names = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": names[:5], "pytorch_model-00002-of-00002.bin": names[5:]}
    for filename, part in halves.items():
        torch.save({name: state[name] for name in part}, folder / filename)
    weight_map = {name: filename for filename, part in halves.items() for name in part}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with Checkpoint(folder) as checkpoint:
        assert checkpoint.names == names
        assert torch.equal(checkpoint.read(names[7]), state[names[7]])


class NotATensor:
    """Any class but a tensor: a pickle carrying it could run code on load, so it must be refused."""


def test_unsafe_pickle_is_refused(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"weight": NotATensor()}, folder / "pytorch_model.bin")
    with pytest.raises(CocktailError) as error:
        Checkpoint(folder)
    assert str(error.value) == (
        f"{folder / 'pytorch_model.bin'} holds objects other than tensors, and loading it could run code: "
        "refused; "
        "convert the model to safetensors where you trust it"
    )


def test_folder_without_weights(tmp_path):
    with pytest.raises(CocktailError) as error:
        Checkpoint(tmp_path)
    assert str(error.value) == (
        f"no model weights in {tmp_path}: expected model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin or pytorch_model.bin.index.json"
    )


def test_missing_folder(tmp_path):
    with pytest.raises(CocktailError) as error:
        Checkpoint(tmp_path / "nope")
    assert str(error.value) == f"model folder {tmp_path / 'nope'} does not exist: check the path"


def test_truncated_safetensors(tiny_llamas, tmp_path):
    folder = copy_config(tiny_llamas[0], tmp_path / "truncated")
    data = (tiny_llamas[0] / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CocktailError, match=r"model.safetensors has a malformed entry for tensor '.*': re-download"
    ):
        Checkpoint(folder)


def test_index_naming_a_missing_shard(tiny_llama_sharded, tmp_path):
    folder = tmp_path / "partial"
    shutil.copytree(tiny_llama_sharded, folder)
    missing = sorted(folder.glob("model-*.safetensors"))[-1]
    missing.unlink()
    with pytest.raises(CocktailError) as error:
        Checkpoint(folder)
    assert str(error.value) == (
        f"{folder / 'model.safetensors.index.json'} names the shard {missing.name}, which is missing: "
        "download the complete model"
    )
