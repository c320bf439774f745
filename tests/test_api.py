"""`from cocktail_bot import mix_models` behaves like LM_Cocktail 0.0.4's, on real tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cocktail_bot import mix_models, mix_models_by_layers
from cocktail_bot.errors import CocktailError


def weighted_sum(folders: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    states = [load_file(folder / "model.safetensors") for folder in folders]
    return {
        name: sum(w * state[name].double() for w, state in zip(weights, states, strict=True))
        for name in states[0]
    }


def assert_state_close(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(state[name].double(), value, rtol=2**-23, atol=1e-12)


def test_mix_models_returns_the_decoder_and_writes_it(tiny_llamas, tmp_path):
    output = tmp_path / "mixed_llm"
    model = mix_models(
        [str(path) for path in tiny_llamas],
        model_type="decoder",
        weights=[0.5, 0.3, 0.2],
        output_path=str(output),
    )
    assert type(model).__name__ == "LlamaForCausalLM"
    assert_state_close(model, weighted_sum(tiny_llamas, [0.5, 0.3, 0.2]))
    assert (output / "model.safetensors").is_file() and (output / "tokenizer.json").is_file()


def test_without_output_path_nothing_is_left_behind(tiny_llamas, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    model = mix_models(tiny_llamas[:2], "decoder", [0.5, 0.5])
    assert_state_close(model, weighted_sum(tiny_llamas[:2], [0.5, 0.5]))
    assert not list(tmp_path.iterdir())


def test_encoder_returns_automodel_and_keeps_mean_pooling(tiny_encoders, tmp_path):
    from sentence_transformers import SentenceTransformer

    output = tmp_path / "mixed_embedder"
    model = mix_models(tiny_encoders, "encoder", [0.4, 0.6], output_path=output)
    assert type(model).__name__ == "BertModel"
    assert json.loads((output / "1_Pooling/config.json").read_text()) == json.loads(
        (tiny_encoders[0] / "1_Pooling/config.json").read_text()
    )
    assert SentenceTransformer(str(output), device="cpu")[1].pooling_mode == "mean"


def test_reranker_returns_sequence_classifier(tiny_rerankers):
    model = mix_models(tiny_rerankers, "reranker", [0.3, 0.7])
    assert type(model).__name__ == "BertForSequenceClassification"
    assert_state_close(model, weighted_sum(tiny_rerankers, [0.3, 0.7]))


def test_mix_models_by_layers_gives_the_same_model(tiny_llamas, tmp_path):
    by_layers = mix_models_by_layers(tiny_llamas, "decoder", [0.2, 0.3, 0.5], output_path=tmp_path / "a")
    whole = mix_models(tiny_llamas, "decoder", [0.2, 0.3, 0.5], output_path=tmp_path / "b")
    for (name, left), (_, right) in zip(
        by_layers.state_dict().items(), whole.state_dict().items(), strict=True
    ):
        assert torch.equal(left, right), name


def test_existing_output_path_is_written_into_and_keeps_the_users_files(tiny_llamas, tmp_path):
    output = tmp_path / "precious"
    (output / "data").mkdir(parents=True)
    (output / "notes.txt").write_text("mine")
    (output / "data" / "train.csv").write_text("a,b\n")
    mix_models(tiny_llamas[:2], "decoder", [0.9, 0.1], output_path=output)
    model = mix_models(tiny_llamas[:2], "decoder", [0.1, 0.9], output_path=output)
    assert_state_close(model, weighted_sum(tiny_llamas[:2], [0.1, 0.9]))
    assert (output / "notes.txt").read_text() == "mine"
    assert (output / "data" / "train.csv").read_text() == "a,b\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["precious"]
    assert not [path for path in output.iterdir() if path.name.startswith(".")]


def test_lm_cocktail_keeps_the_same_files_in_an_existing_output_path(tiny_llamas, tmp_path):
    lm_cocktail = pytest.importorskip("LM_Cocktail")
    kept = {}
    for name, mix in (("ours", mix_models), ("theirs", lm_cocktail.mix_models)):
        output = tmp_path / name
        output.mkdir()
        (output / "notes.txt").write_text("mine")
        mix([str(path) for path in tiny_llamas[:2]], "decoder", [0.5, 0.5], output_path=str(output))
        kept[name] = (output / "notes.txt").read_text()
    assert kept == {"ours": "mine", "theirs": "mine"}


def test_output_path_dot_writes_into_the_current_folder(tiny_llamas, tmp_path, monkeypatch):
    for index, folder in enumerate(tiny_llamas[:2]):
        shutil.copytree(folder, tmp_path / "models" / str(index))
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    model = mix_models(["models/0", "models/1"], "decoder", [0.5, 0.5], output_path=".")
    assert_state_close(model, weighted_sum(tiny_llamas[:2], [0.5, 0.5]))
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "models",
        "notes.txt",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(path.name for path in (tmp_path / "models").iterdir()) == ["0", "1"]


def test_weights_the_merge_would_not_replace_are_refused(tiny_llamas, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "model-00001-of-00002.safetensors").write_bytes(b"old")
    with pytest.raises(CocktailError) as raised:
        mix_models(tiny_llamas[:2], "decoder", [0.5, 0.5], output_path=output)
    assert str(raised.value) == (
        f"the output folder {output} holds model weights this merge would not replace "
        "(model-00001-of-00002.safetensors): transformers could load them instead of the merged model; "
        "remove them or choose another folder"
    )
    assert [path.name for path in output.iterdir()] == ["model-00001-of-00002.safetensors"]


def test_the_output_path_may_not_be_a_source(tiny_llamas, tmp_path):
    source = tmp_path / "model"
    shutil.copytree(tiny_llamas[0], source)
    with pytest.raises(CocktailError, match="holds the model"):
        mix_models([source, tiny_llamas[1]], "decoder", [0.5, 0.5], output_path=source)
    assert (source / "model.safetensors").read_bytes() == (tiny_llamas[0] / "model.safetensors").read_bytes()


def test_weights_lm_cocktail_accepts_are_divided_by_their_sum(tiny_llamas, caplog):
    caplog.set_level("INFO")
    model = mix_models(tiny_llamas, "decoder", [0.33, 0.33, 0.33])
    assert_state_close(model, weighted_sum(tiny_llamas, [1 / 3] * 3))
    assert (
        "note: the linear weights [0.33, 0.33, 0.33] sum to 0.99, not 1: merging with them divided by their "
        "sum, [0.333333, 0.333333, 0.333333]" in caplog.messages
    )
    with pytest.raises(CocktailError, match=r"must sum to 1 \(within 0.001.*sums to 1.2"):
        mix_models(tiny_llamas[:2], "decoder", [0.6, 0.6])  # LM_Cocktail refuses these too


def test_agrees_with_lm_cocktail(tiny_llamas, tmp_path):
    lm_cocktail = pytest.importorskip("LM_Cocktail")
    weights = [0.5, 0.3, 0.2]
    theirs = lm_cocktail.mix_models([str(path) for path in tiny_llamas], "decoder", weights)
    ours = mix_models(tiny_llamas, "decoder", weights)
    exact = weighted_sum(tiny_llamas, weights)
    for name, value in ours.state_dict().items():
        torch.testing.assert_close(value, theirs.state_dict()[name], rtol=1e-6, atol=1e-7)
        # ours is within an ulp of the exact sum; theirs (float32 accumulation) may be further off
        assert (value.double() - exact[name]).abs().max() <= (
            theirs.state_dict()[name].double() - exact[name]
        ).abs().max()


def test_bad_weights_fail_before_loading(tiny_llamas):
    with pytest.raises(CocktailError, match="got 1 weights for 2 models: give one weight per model"):
        mix_models(tiny_llamas[:2], "decoder", [1.0])
    with pytest.raises(CocktailError, match="unknown model type 'llm'"):
        mix_models(tiny_llamas[:2], "llm", [0.5, 0.5])


def test_hub_references_are_read_by_range_and_merged_as_local_folders(hub_server, tiny_llamas, tmp_path):
    from huggingface_hub import constants

    hub_server.commit_folder("cocktail/tiny-llama", tiny_llamas[1])
    model = mix_models(
        [str(tiny_llamas[0]), "cocktail/tiny-llama"], "decoder", [0.5, 0.5], output_path=str(tmp_path / "hub")
    )
    assert_state_close(model, weighted_sum(tiny_llamas[:2], [0.5, 0.5]))
    mix_models([str(p) for p in tiny_llamas[:2]], "decoder", [0.5, 0.5], output_path=str(tmp_path / "local"))
    written = {p.name: p.read_bytes() for p in (tmp_path / "hub").iterdir()}
    assert "model.safetensors" in written
    assert written == {p.name: p.read_bytes() for p in (tmp_path / "local").iterdir()}
    assert not list(Path(constants.HF_HOME).rglob("*.safetensors"))  # the weights were never downloaded
    reads = hub_server.seen("cdn")
    assert reads and all(r.range for r in reads)
