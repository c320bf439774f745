"""Scoring Hub sources in place: weights read by range through the remote checkpoint give the local folders'
losses bit for bit, for every model type and in `cocktail run`, and no weight file lands in the HF cache."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from cocktail_bot import hub_access
from cocktail_bot.pipeline import run_manifest
from cocktail_bot.remote import HubModel
from cocktail_bot.scoring import score_models
from cocktail_bot.sizes import format_size
from cocktail_bot.sources import resolve_source
from tests.test_scoring import DECODER_SETS, RETRIEVAL_SETS, save_mixtral


@pytest.fixture(autouse=True)
def no_retry_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_access, "RETRY_DELAYS", (0.0, 0.0, 0.0))


def on_the_hub(hub_server, folders: list[Path], name: str) -> list[HubModel]:
    """Each folder published as ``cocktail/NAME-i`` and resolved as `cocktail run` does: weights left there."""
    models = []
    for index, folder in enumerate(folders):
        hub_server.commit_folder(f"cocktail/{name}-{index}", folder)
        source = resolve_source(f"cocktail/{name}-{index}", stream=True)
        assert source.streamed is not None
        models.append(source.streamed)
    return models


def cached_weight_files() -> list[Path]:
    """Weight files in the Hugging Face cache (snapshot names; blobs are named by hash)."""
    from huggingface_hub import constants

    return [p for p in Path(constants.HF_HUB_CACHE).rglob("*") if p.name.endswith((".safetensors", ".bin"))]


def results(models, model_type: str, sets, **options) -> list[tuple[float, float | None, int]]:
    scoring = score_models(models, model_type, sets, device="cpu", progress=False, **options)
    assert scoring.streamed == (options.get("load", "auto") != "resident")
    return [(s[n].loss, s[n].accuracy, s[n].examples) for s in scoring.scores for n in sets]


def assert_hub_equals_local(hub_server, folders: list[Path], model_type: str, sets, **options) -> None:
    models = on_the_hub(hub_server, folders, model_type)
    assert not cached_weight_files()
    remote = results(models, model_type, sets, **options)
    assert remote == results(folders, model_type, sets, **options)  # bit for bit
    assert len({loss for loss, _, _ in remote}) == len(remote)  # the models really differ
    assert not cached_weight_files()  # only config, tokenizer and module configs were downloaded
    assert hub_server.seen("cdn")  # the weights came by range requests


def test_decoders_on_the_hub_score_like_local_folders(
    hub_server, tiny_llama_sharded: Path, tiny_llama_bf16: Path, tiny_llamas: list[Path]
) -> None:
    folders = [tiny_llama_sharded, tiny_llama_bf16, tiny_llamas[0]]
    assert_hub_equals_local(hub_server, folders, "decoder", DECODER_SETS)
    # the GPU fast path (resident: every weight read once by range and kept), run here on the CPU
    models = [resolve_source(f"cocktail/decoder-{index}", stream=True).streamed for index in range(3)]
    assert results(models, "decoder", DECODER_SETS, load="resident") == results(
        folders, "decoder", DECODER_SETS
    )
    assert not cached_weight_files()


def test_sentence_transformers_encoders_with_a_dense_module_on_the_hub(
    hub_server, trained_encoders: dict[str, Path], tmp_path: Path
) -> None:
    """The pipeline (pooling, Dense, Normalize) is built from the Hub model; the Dense weights come by range."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense

    folders = []
    for seed, name in enumerate(("animal", "object")):
        st = SentenceTransformer(str(trained_encoders[name]), device="cpu")
        modules = list(st)
        torch.manual_seed(seed)
        dense = Dense(st.get_sentence_embedding_dimension(), 8)
        folder = tmp_path / name
        SentenceTransformer(modules=[*modules[:-1], dense, modules[-1]], device="cpu").save(str(folder))
        assert list(folder.glob("*Dense/model.safetensors"))
        folders.append(folder)
    assert_hub_equals_local(hub_server, folders, "encoder", RETRIEVAL_SETS, neg_number=2)
    whole = score_models(
        folders, "encoder", RETRIEVAL_SETS, device="cpu", progress=False, load="whole", neg_number=2
    )
    losses = [loss for loss, _, _ in results(folders, "encoder", RETRIEVAL_SETS, neg_number=2)]
    assert losses == pytest.approx([s[n].loss for s in whole.scores for n in RETRIEVAL_SETS], abs=1e-6, rel=0)


def test_rerankers_on_the_hub_score_like_local_folders(
    hub_server, trained_rerankers: dict[str, Path]
) -> None:
    assert_hub_equals_local(
        hub_server, list(trained_rerankers.values()), "reranker", RETRIEVAL_SETS, batch_size=1
    )


def test_a_hub_model_that_cannot_be_streamed_is_downloaded_with_a_note(
    hub_server, llama_tokenizer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folders = [save_mixtral(tmp_path / f"moe-{seed}", seed, llama_tokenizer) for seed in (0, 1)]
    models = on_the_hub(hub_server, folders, "moe")
    with caplog.at_level(logging.WARNING, logger="cocktail_bot.scoring"):
        scoring = score_models(models, "decoder", DECODER_SETS, device="cpu", progress=False)
    assert not scoring.streamed
    assert caplog.messages[0].startswith(f"note: {models[0]} cannot be scored block by block (")
    assert caplog.messages[1:] == [
        f"note: downloading the weights of {model} ({format_size(model.total_bytes)}) to load it whole"
        for model in models
    ]
    local = score_models(folders, "decoder", DECODER_SETS, device="cpu", progress=False)
    assert scoring.scores == local.scores
    assert cached_weight_files()  # the fallback's download, as its note says


RECIPE = """\
version: 1
name: scored-in-place
type: decoder
models: [{models}]
weights: {{examples: examples.json, temperature: 2.0}}
eval:
  - {{name: heldout, examples: heldout.json}}
output: {{license: apache-2.0}}
"""


def recipe(root: Path, models: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "examples.json").write_text(json.dumps(DECODER_SETS["sentiment"]))
    (root / "heldout.json").write_text(json.dumps(DECODER_SETS["topic"]))
    (root / "cocktail.yml").write_text(RECIPE.format(models=", ".join(models)))
    return root / "cocktail.yml"


def test_cocktail_run_scores_and_evaluates_hub_sources_in_place(
    hub_server, tmp_path: Path, tiny_llamas: list[Path]
) -> None:
    for index in (0, 1):
        hub_server.commit_folder(f"cocktail/llama-{index}", tiny_llamas[index])
    hub = run_manifest(
        recipe(tmp_path / "hub", ["cocktail/llama-0", "cocktail/llama-1"]),
        tmp_path / "hub-out",
        progress=False,
    )
    assert not cached_weight_files()
    local_root = tmp_path / "local"
    for index in (0, 1):
        shutil.copytree(tiny_llamas[index], local_root / "models" / f"llama-{index}")
    local = run_manifest(
        recipe(local_root, ["./models/llama-0", "./models/llama-1"]), tmp_path / "local-out", progress=False
    )
    assert hub.steps[0].losses == local.steps[0].losses and hub.steps[0].weights == local.steps[0].weights
    assert hub.output is not None and local.output is not None
    model_files = {n: sha for n, sha in local.output.files.items() if n.endswith(".safetensors")}
    assert {n: sha for n, sha in hub.output.files.items() if n in model_files} == model_files
    assert [(e.model, e.loss) for e in hub.evals] == [
        (e.model.replace("./models/", "cocktail/"), e.loss) for e in local.evals
    ]
