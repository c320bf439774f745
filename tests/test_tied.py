"""Tied word embeddings: merged as mergekit 0.1.5 and LM_Cocktail 0.0.4 merge them, refused only where right."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cocktail_bot.engine import merge
from cocktail_bot.errors import CocktailError
from tools import tiny_models

HEAD, EMBEDDING = "lm_head.weight", "model.embed_tokens.weight"


@pytest.fixture(scope="session")
def tied_llama(model_cache: Path, llama_tokenizer) -> Path:
    """A tiny Llama of the tiny_llamas' shape whose head is its embedding: no lm_head.weight is stored."""
    return tiny_models.save_llama(
        model_cache / "llama-tied", 7, tokenizer=llama_tokenizer, tie_word_embeddings=True
    )


@pytest.fixture(scope="session")
def tied_llama_pickled(model_cache: Path, tied_llama: Path) -> Path:
    """The same tied model as ``torch.save(model.state_dict())`` keeps it: with its redundant lm_head.weight."""
    from transformers import LlamaForCausalLM

    folder = model_cache / "llama-tied-pickled"
    shutil.copytree(tied_llama, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    state = LlamaForCausalLM.from_pretrained(tied_llama).state_dict()
    assert HEAD in state
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def weighted(
    folders_and_states: list[dict[str, torch.Tensor]], weights: list[float], name: str
) -> torch.Tensor:
    return sum(w * state[name].double() for w, state in zip(weights, folders_and_states, strict=True))


def test_untied_base_with_a_tied_source_matches_lm_cocktail(tiny_llamas, tied_llama, tmp_path):
    lm_cocktail = pytest.importorskip("LM_Cocktail")
    untied = tiny_llamas[0]
    merge([untied, tied_llama], [0.6, 0.4], tmp_path / "ours", model_type="decoder", progress=False)
    ours = load_file(tmp_path / "ours" / "model.safetensors")
    theirs = lm_cocktail.mix_models([str(untied), str(tied_llama)], "decoder", [0.6, 0.4]).state_dict()
    assert sorted(ours) == sorted(theirs)
    for name, value in ours.items():
        torch.testing.assert_close(value, theirs[name], rtol=1e-6, atol=1e-7, msg=name)
    states = [load_file(untied / "model.safetensors"), load_file(tied_llama / "model.safetensors")]
    expected_head = 0.6 * states[0][HEAD].double() + 0.4 * states[1][EMBEDDING].double()
    torch.testing.assert_close(ours[HEAD].double(), expected_head, rtol=2**-23, atol=0)
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["tie_word_embeddings"] is False


def test_untied_base_with_a_tied_source_matches_mergekit(tiny_llamas, tied_llama, tmp_path):
    pytest.importorskip("mergekit")
    from tests.test_methods_mergekit import run_mergekit, run_ours

    base, other = tiny_llamas[0], tiny_llamas[1]
    params = {"lambda": 1.0}
    ours = run_ours("task_arithmetic", base, [other, tied_llama], [0.5, 0.3], params, tmp_path / "ours")
    theirs = run_mergekit("task_arithmetic", base, [other, tied_llama], [0.5, 0.3], params, tmp_path / "mk")
    assert sorted(ours) == sorted(theirs)
    for name, value in ours.items():
        torch.testing.assert_close(value, theirs[name], rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("order", ["pickled-first", "safetensors-first"])
def test_a_tied_model_with_its_redundant_head_merges_beside_itself(
    tied_llama, tied_llama_pickled, tmp_path, order
):
    folders = (
        [tied_llama_pickled, tied_llama] if order == "pickled-first" else [tied_llama, tied_llama_pickled]
    )
    merge(folders, [0.5, 0.5], tmp_path / "out", model_type="decoder", progress=False)
    merged = load_file(tmp_path / "out" / "model.safetensors")
    original = load_file(tied_llama / "model.safetensors")
    assert sorted(merged) == sorted(original)  # no lm_head.weight: the merged model is tied like its base
    for name, value in original.items():
        torch.testing.assert_close(merged[name], value, rtol=2**-23, atol=0, msg=name)


def test_an_untied_source_beside_a_tied_base_is_refused_naming_tie_word_embeddings(
    tiny_llamas, tied_llama, tmp_path
):
    with pytest.raises(CocktailError) as raised:
        merge(
            [tied_llama, tiny_llamas[0]], [0.5, 0.5], tmp_path / "out", model_type="decoder", progress=False
        )
    assert str(raised.value) == (
        f"{tiny_llamas[0]} has its own {HEAD} (tie_word_embeddings: false) but the base {tied_llama} ties its "
        f"head to {EMBEDDING} (tie_word_embeddings: true): the merged model, with the base's config, would "
        f"have no head to hold it; make {tiny_llamas[0]} (or another untied model) the base"
    )
    assert not (tmp_path / "out").exists()
