"""Block-streamed scoring: the same losses as the model loaded whole, for every model type, and the fallbacks."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from cocktail_bot.checkpoint import Checkpoint
from cocktail_bot.errors import CocktailError
from cocktail_bot.scoring import (
    fallback_refusal,
    resolve_dtype,
    score_models,
    stays_resident,
)
from cocktail_bot.streamed import Wave
from tools import tiny_models, tiny_tasks

DECODER_SETS = {task: tiny_tasks.make_examples(task, 5, seed=41) for task in ("sentiment", "topic")}
RETRIEVAL_SETS = {task: tiny_tasks.make_examples(task, 5, seed=42) for task in ("animal", "object")}


def losses(folders, model_type, sets, load, **options) -> list[float]:
    """Each model's loss on each set, models outermost."""
    scoring = score_models(folders, model_type, sets, load=load, device="cpu", progress=False, **options)
    assert scoring.streamed == (load == "streamed") and scoring.dtype == "float32"
    return [score[name].loss for score in scoring.scores for name in sets]


def assert_streamed_equals_whole(folders, model_type, sets, **options) -> None:
    streamed = losses(folders, model_type, sets, "streamed", **options)
    whole = losses(folders, model_type, sets, "whole", **options)
    assert streamed == pytest.approx(whole, abs=1e-6, rel=0)
    assert len(set(streamed)) == len(streamed)  # the models really differ


@pytest.fixture(scope="module")
def tied_llamas(model_cache: Path, llama_tokenizer) -> list[Path]:
    """Tiny Llamas whose LM head is the input embedding: the checkpoint holds it once, under the embedding."""
    folders = [
        tiny_models.save_llama(
            model_cache / f"llama-tied-{seed}", seed, tokenizer=llama_tokenizer, tie_word_embeddings=True
        )
        for seed in (5, 6)
    ]
    with Checkpoint(folders[0]) as checkpoint:
        assert "lm_head.weight" not in checkpoint.names
    return folders


def test_decoder_streamed_equals_whole(tiny_llamas) -> None:
    assert_streamed_equals_whole(tiny_llamas, "decoder", DECODER_SETS)


def test_tied_embedding_decoder_streamed_equals_whole(tied_llamas) -> None:
    assert_streamed_equals_whole(tied_llamas, "decoder", DECODER_SETS, batch_size=3)


@pytest.mark.parametrize("kind", ["decoder", "tied", "encoder"])
def test_resident_equals_streamed_exactly(kind, tiny_llamas, tied_llamas, trained_encoders) -> None:
    """The GPU fast path: the same module with every weight read once and kept (run here on the CPU)."""
    folders, model_type, sets = {
        "decoder": (tiny_llamas, "decoder", DECODER_SETS),
        "tied": (tied_llamas, "decoder", DECODER_SETS),
        "encoder": (list(trained_encoders.values()), "encoder", RETRIEVAL_SETS),
    }[kind]
    assert losses(folders, model_type, sets, "resident") == losses(folders, model_type, sets, "streamed")


def test_sharded_and_bf16_decoders_streamed_equal_whole(tiny_llama_sharded, tiny_llama_bf16, tiny_llamas):
    assert_streamed_equals_whole(
        [tiny_llama_sharded, tiny_llama_bf16, tiny_llamas[0]], "decoder", DECODER_SETS
    )


def test_sentence_transformers_encoder_streamed_equals_whole(trained_encoders) -> None:
    assert_streamed_equals_whole(list(trained_encoders.values()), "encoder", RETRIEVAL_SETS, neg_number=2)


def test_cls_encoder_without_pooling_config_streamed_equals_whole(trained_encoders, tmp_path) -> None:
    plain = []
    for name in ("animal", "object"):
        folder = tmp_path / name
        folder.mkdir()
        for path in trained_encoders[name].iterdir():
            if path.is_file() and path.name != "modules.json":
                (folder / path.name).write_bytes(path.read_bytes())
        plain.append(folder)
    assert_streamed_equals_whole(plain, "encoder", RETRIEVAL_SETS)


def test_reranker_streamed_equals_whole(trained_rerankers) -> None:
    assert_streamed_equals_whole(list(trained_rerankers.values()), "reranker", RETRIEVAL_SETS, batch_size=1)


def save_mixtral(folder: Path, seed: int, tokenizer) -> Path:
    """A tiny mixture of experts: its checkpoint keeps each expert apart, transformers fuses them on load."""
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    MixtralForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_model_that_cannot_be_streamed_is_loaded_whole_with_a_note(llama_tokenizer, tmp_path, caplog) -> None:
    folders = [save_mixtral(tmp_path / f"moe-{seed}", seed, llama_tokenizer) for seed in (0, 1)]
    with caplog.at_level(logging.WARNING, logger="cocktail_bot.scoring"):
        scoring = score_models(folders, "decoder", DECODER_SETS, device="cpu", progress=False)
    assert not scoring.streamed
    assert caplog.messages == [
        f"note: {folders[0]} cannot be scored block by block (its checkpoint has no tensor for the parameter "
        "'model.layers.0.mlp.experts.down_proj'): loading it whole instead"
    ]
    whole = losses(folders, "decoder", DECODER_SETS, "whole")
    assert [s[name].loss for s in scoring.scores for name in DECODER_SETS] == whole


def test_fallback_refuses_with_the_numbers_when_the_model_does_not_fit() -> None:
    folder, cpu = Path("models/big"), torch.device("cpu")
    assert fallback_refusal(folder, "why", 10**9, 2 * 10**9, torch.float32, cpu) is None
    assert fallback_refusal(folder, "why", 10**9, None, torch.float32, cpu) is None
    assert fallback_refusal(
        folder, "its code reads a weight", 28 * 10**9, 20 * 10**9, torch.float32, cpu
    ) == (
        "models/big cannot be scored block by block (its code reads a weight), and loading it whole in float32 "
        "needs 28.0 GB of CPU memory, more than the 20.0 GB free: use a machine with more memory, or a smaller "
        "dtype (weights: {dtype: ...})"
    )


def test_gpu_keeps_models_that_fit_resident_and_streams_the_rest() -> None:
    assert stays_resident("cuda", 14 * 10**9, 80 * 10**9)
    assert not stays_resident("cuda", 14 * 10**9, 15 * 10**9)  # no room left for the activations
    assert not stays_resident("cpu", 10**6, 80 * 10**9)  # CPU memory stays bounded whatever the machine


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (device: cuda)")
@pytest.mark.parametrize("load", ["resident", "streamed"])
@pytest.mark.parametrize("kind", ["decoder", "tied", "encoder", "reranker"])
def test_cuda_float32_losses_equal_the_cpus(
    kind, load, tiny_llamas, tied_llamas, trained_encoders, trained_rerankers
) -> None:
    """#13 item 3: on CUDA, resident (the fast path) and block-streamed, float32 losses are the CPU's to 1e-4."""
    folders, model_type, sets = {
        "decoder": (tiny_llamas, "decoder", DECODER_SETS),
        "tied": (tied_llamas, "decoder", DECODER_SETS),
        "encoder": (list(trained_encoders.values()), "encoder", RETRIEVAL_SETS),
        "reranker": (list(trained_rerankers.values()), "reranker", RETRIEVAL_SETS),
    }[kind]
    cpu = losses(folders, model_type, sets, "streamed")
    gpu = score_models(folders, model_type, sets, load=load, device="cuda", dtype="float32", progress=False)
    assert gpu.dtype == "float32" and gpu.streamed == (load == "streamed")
    assert [score[name].loss for score in gpu.scores for name in sets] == pytest.approx(cpu, abs=1e-4, rel=0)


def test_dtype_auto_is_float32_on_cpu_and_the_checkpoints_on_gpu(tiny_llama_bf16) -> None:
    assert resolve_dtype("auto", torch.device("cpu"), tiny_llama_bf16) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda"), tiny_llama_bf16) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu"), tiny_llama_bf16) == torch.float16
    with pytest.raises(CocktailError, match="unknown dtype 'int8': use auto, float32, bfloat16, float16"):
        resolve_dtype("int8", torch.device("cpu"), tiny_llama_bf16)


def test_bfloat16_losses_are_close_to_float32_and_say_their_dtype(tiny_llamas) -> None:
    scorings = {
        dtype: score_models(tiny_llamas, "decoder", DECODER_SETS, device="cpu", dtype=dtype, progress=False)
        for dtype in ("float32", "bfloat16")
    }
    assert scorings["bfloat16"].dtype == "bfloat16" and scorings["bfloat16"].streamed
    for low, high in zip(scorings["bfloat16"].scores, scorings["float32"].scores, strict=True):
        for name in DECODER_SETS:
            assert low[name].loss == pytest.approx(high[name].loss, rel=2e-2)
            assert low[name].loss != high[name].loss


def test_a_wave_whose_batches_call_different_modules_fails_instead_of_hanging() -> None:
    def batch(wave: Wave, module: int):
        return lambda: wave.step(("load", module), lambda: None)

    wave = Wave(2)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(wave.run, batch(wave, module)) for module in (1, 2)]
        errors = [future.exception(timeout=60) for future in futures]
    assert sorted(type(error).__name__ for error in errors) == ["BrokenBarrierError", "NotStreamable"]

    wave, ran = Wave(2), []
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(wave.run, lambda: wave.step(("load", 1), lambda: ran.append(1))) for _ in "ab"]
        assert [future.result(timeout=60) for future in futures] == [None, None]
    assert ran == [1]  # the load ran once for both batches
