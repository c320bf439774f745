"""Example-based weights on tiny models trained for different tasks: the model that knows the task wins."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch

from cocktail_bot.checkpoint import Checkpoint
from cocktail_bot.errors import CocktailError
from cocktail_bot.scoring import score_models
from cocktail_bot.weights import DECIMALS, compute_weights, rounded_weights, softmax_weights
from tools import tiny_models, tiny_tasks


def largest(result) -> str:
    return result.models[result.weights.index(max(result.weights))]


def test_softmax_weights_match_torch_and_temperature_sharpens() -> None:
    losses = [0.5, 2.0, 3.5]
    expected = torch.softmax(-torch.tensor(losses, dtype=torch.float64) / 5.0, -1).tolist()
    assert softmax_weights(losses, 5.0) == pytest.approx(expected, rel=1e-12)
    sharp, flat = softmax_weights(losses, 0.1), softmax_weights(losses, 500.0)
    assert sharp[0] > softmax_weights(losses, 5.0)[0] > flat[0] > 1 / 3
    assert sharp[0] == pytest.approx(1.0, abs=0.01) and flat == pytest.approx([1 / 3] * 3, abs=0.01)
    assert softmax_weights([1e4, 1e4 + 1], 1.0) == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.e)])


@pytest.mark.parametrize(
    ("losses", "temperature", "message"),
    [
        ([1.0], 0.0, "temperature must be a positive number, got 0.0"),
        ([1.0], -2.0, "temperature must be a positive number, got -2.0"),
        ([1.0, float("nan")], 5.0, "the loss of model 1 is nan: weights cannot be computed from it"),
        ([], 5.0, "no losses to turn into weights: give at least one model"),
    ],
)
def test_softmax_weights_refuses_bad_input(losses, temperature, message) -> None:
    with pytest.raises(CocktailError) as caught:
        softmax_weights(losses, temperature)
    assert str(caught.value) == message


@pytest.mark.parametrize("task", ["sentiment", "topic"])
def test_decoder_trained_on_the_examples_task_gets_the_largest_weight(
    trained_decoders, task, tmp_path
) -> None:
    examples = tmp_path / "examples.jsonl"
    examples.write_text("".join(json.dumps(r) + "\n" for r in tiny_tasks.make_examples(task, 5, seed=21)))
    models = [trained_decoders[name] for name in ("base", "sentiment", "topic")]
    result = compute_weights(models, "decoder", examples, device="cpu", progress=False)
    assert largest(result) == str(trained_decoders[task])
    assert sum(result.weights) == pytest.approx(1.0, abs=1e-12)
    assert result.weights == rounded_weights(result.losses, 5.0)
    assert [
        round(value, DECIMALS) for value in result.losses + result.weights
    ] == result.losses + result.weights


def test_temperature_sharpens_and_flattens_real_weights(trained_decoders) -> None:
    models = [trained_decoders[name] for name in ("base", "sentiment", "topic")]
    examples = tiny_tasks.make_examples("sentiment", 5, seed=22)
    sharp = compute_weights(models, "decoder", examples, temperature=1.0, progress=False)
    flat = compute_weights(models, "decoder", examples, temperature=50.0, progress=False)
    assert sharp.losses == flat.losses
    assert largest(sharp) == largest(flat) == str(trained_decoders["sentiment"])
    assert max(sharp.weights) > 0.9 > 0.4 > max(flat.weights) > 1 / 3


@pytest.mark.parametrize("task", ["animal", "object"])
def test_encoder_and_reranker_trained_on_the_task_get_the_largest_weight(
    trained_encoders, trained_rerankers, task
) -> None:
    examples = tiny_tasks.make_examples(task, 5, seed=23)
    for trained, model_type in ((trained_encoders, "encoder"), (trained_rerankers, "reranker")):
        models = [trained[name] for name in ("base", "animal", "object")]
        result = compute_weights(models, model_type, examples, progress=False)
        assert largest(result) == str(trained[task]), model_type


def test_weights_are_deterministic_when_negatives_are_sampled(trained_encoders, trained_rerankers) -> None:
    examples = [
        dict(e, neg=e["neg"] + [f"the {w}" for w in tiny_tasks.ANIMALS[:3]])
        for e in tiny_tasks.make_examples("object", 6, seed=24)
    ]  # 7 negatives, 3 sampled
    for trained, model_type in ((trained_encoders, "encoder"), (trained_rerankers, "reranker")):
        models = [trained[name] for name in ("animal", "object")]
        runs = [compute_weights(models, model_type, examples, neg_number=3, progress=False) for _ in range(2)]
        assert runs[0] == runs[1]
        # the seed draws the negatives: the unrounded losses differ (the rounded ones may not)
        losses = [
            [
                score["examples"].loss
                for score in score_models(
                    models, model_type, {"examples": examples}, neg_number=3, seed=seed, progress=False
                ).scores
            ]
            for seed in (0, 5)
        ]
        assert losses[0] != losses[1]
        assert [round(loss, DECIMALS) for loss in losses[0]] == runs[0].losses


def test_fewer_negatives_than_neg_number_are_used_and_reported(trained_rerankers, caplog) -> None:
    caplog.set_level(logging.INFO)
    examples = tiny_tasks.make_examples("animal", 3, seed=25)  # 4 negatives each
    result = compute_weights(
        [trained_rerankers["animal"], trained_rerankers["object"]],
        "reranker",
        examples,
        neg_number=7,
        progress=False,
    )
    assert result.weights[0] > result.weights[1]
    assert (
        "3 of 3 examples have fewer than neg_number=7 negatives: using the ones they have" in caplog.messages
    )


def test_inputs_never_exceed_the_position_table(
    trained_encoders, trained_rerankers, trained_decoders, caplog
) -> None:
    caplog.set_level(logging.INFO)
    long_text = " ".join(["the cat and the dog"] * 40)  # ~200 tokens, the tiny BERTs have 64 positions
    retrieval = [{"query": long_text, "pos": [long_text], "neg": ["the book"]}]
    for trained, model_type in ((trained_encoders, "encoder"), (trained_rerankers, "reranker")):
        result = compute_weights(
            [trained["animal"], trained["object"]], model_type, retrieval, progress=False
        )
        assert all(math.isfinite(loss) for loss in result.losses)
    assert (
        "inputs are capped at 64 tokens (the model's position table), below max_input_length=2048"
        in caplog.messages
    )
    decoder = [{"input": long_text * 2, "output": "positive"}]
    assert math.isfinite(
        compute_weights([trained_decoders["base"]], "decoder", decoder, progress=False).losses[0]
    )
    assert (
        "inputs are capped at 128 tokens (the model's position table), below max_input_length=2048"
        in caplog.messages
    )


def test_streamed_weights_equal_freshly_loaded_ones_across_dtypes(trained_decoders, tiny_llama_bf16) -> None:
    examples = tiny_tasks.make_examples("topic", 4, seed=26)
    forward = compute_weights(
        [trained_decoders["topic"], tiny_llama_bf16], "decoder", examples, progress=False
    )
    backward = compute_weights(
        [tiny_llama_bf16, trained_decoders["topic"]], "decoder", examples, progress=False
    )
    assert forward.losses == pytest.approx(backward.losses[::-1], abs=10**-DECIMALS)


def test_models_of_different_architectures_are_refused(trained_decoders, llama_tokenizer, tmp_path) -> None:
    from transformers import LlamaForCausalLM

    other = tmp_path / "wider"
    LlamaForCausalLM(tiny_models.llama_config(len(llama_tokenizer), intermediate_size=48)).save_pretrained(
        other
    )
    llama_tokenizer.save_pretrained(other)
    first = trained_decoders["base"]
    with pytest.raises(CocktailError) as caught:
        compute_weights([first, other], "decoder", tiny_tasks.make_examples("topic", 2, 1), progress=False)
    assert str(caught.value) == (
        f"{other}: tensor 'model.layers.0.mlp.down_proj.weight' has shape [32, 48] but {first} has [32, 64]: "
        "example-based weights need models of one architecture"
    )


def test_bad_arguments_are_refused_before_any_model_loads(trained_decoders, tmp_path: Path) -> None:
    """The model's weights are not a checkpoint: loading it would fail, so each argument error shows that the
    arguments were checked first."""
    broken = tmp_path / "broken"
    shutil.copytree(trained_decoders["base"], broken)
    (broken / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception) as loading:
        compute_weights([broken], "decoder", tiny_tasks.make_examples("topic", 2, 1))
    assert "temperature" not in str(loading.value)  # loading it does fail, and not with an argument error
    models = [broken]
    examples = tiny_tasks.make_examples("topic", 2, 1)
    with pytest.raises(CocktailError, match="temperature must be a positive number, got 0"):
        compute_weights(models, "decoder", examples, temperature=0)
    with pytest.raises(CocktailError, match="temperature must be a positive number, got inf"):
        compute_weights(models, "decoder", examples, temperature=float("inf"))
    with pytest.raises(CocktailError, match="batch_size must be 1 or more, got 0"):
        compute_weights(models, "decoder", examples, batch_size=0)
    with pytest.raises(
        CocktailError, match="max_input_length 0 is too small: allow at least 3 tokens per example"
    ):
        compute_weights(models, "encoder", [{"query": "q", "pos": ["p"], "neg": []}], max_input_length=0)
    with pytest.raises(CocktailError, match="unknown device 'tpu0': use auto, cpu, cuda or cuda:N"):
        compute_weights(models, "decoder", examples, device="tpu0")


# ------------------------------------------------------------------------------------------- MiniLM pooling


def test_minilm_loss_uses_its_own_mean_pooling(minilm_path: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from cocktail_bot.losses import info_nce

    examples = [
        {
            "query": "How do I bake bread?",
            "pos": ["Mix flour, water and yeast, let it rise, then bake."],
            "neg": ["The stock market fell today.", "Cats sleep for most of the day."],
        },
        {
            "query": "What is the capital of France?",
            "pos": ["Paris is the capital of France."],
            "neg": ["Bread needs yeast to rise.", "The Nile is a long river."],
        },
    ]
    ours = compute_weights([minilm_path], "encoder", examples, batch_size=2, progress=False).losses[0]

    def loss_of(embed) -> float:
        queries = embed([e["query"] for e in examples])
        passages = embed([text for e in examples for text in e["pos"][:1] + e["neg"]])
        return float(info_nce(queries, passages, [3, 3])[0])

    model = SentenceTransformer(str(minilm_path), device="cpu")
    assert type(model[1]).__name__ == "Pooling" and model[1].pooling_mode == "mean"
    mean_pooled = loss_of(lambda texts: model.encode(texts, convert_to_tensor=True))
    tokenizer, bert = AutoTokenizer.from_pretrained(minilm_path), AutoModel.from_pretrained(minilm_path)
    with torch.no_grad():
        cls_pooled = loss_of(
            lambda texts: bert(**tokenizer(texts, padding=True, return_tensors="pt")).last_hidden_state[:, 0]
        )
    assert ours == pytest.approx(mean_pooled, abs=10**-DECIMALS / 2)  # losses are rounded
    assert abs(ours - cls_pooled) > 1e-2

    plain = (
        tmp_path / "minilm-no-modules"
    )  # the same weights without a pooling config: CLS, as LM_Cocktail does
    plain.mkdir()
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ):
        (plain / name).symlink_to(minilm_path / name)
    assert compute_weights([plain], "encoder", examples, progress=False).losses[0] == pytest.approx(
        cls_pooled, rel=1e-4, abs=10**-DECIMALS / 2
    )


# ------------------------------------------------------------------------------------- mix_models_with_data


def test_mix_models_with_data_merges_with_the_computed_weights(trained_decoders, tmp_path, capsys) -> None:
    from cocktail_bot.api import mix_models_with_data

    names = [str(trained_decoders[name]) for name in ("base", "sentiment", "topic")]
    examples = tiny_tasks.make_examples("sentiment", 5, seed=27)
    expected = compute_weights(names, "decoder", examples, progress=False)
    output = tmp_path / "merged"
    model = mix_models_with_data(names, "decoder", example_ata=examples, output_path=str(output))

    printed = capsys.readouterr().out
    assert "***weight for each model***" in printed
    assert f"{names[1]} {expected.weights[1]}" in printed
    assert type(model).__name__ == "LlamaForCausalLM"
    key = "model.layers.0.mlp.down_proj.weight"
    sources = []
    for name in names:
        with Checkpoint(name) as checkpoint:
            sources.append(checkpoint.read(key))
    with Checkpoint(output) as checkpoint:
        merged = checkpoint.read(key)
    assert torch.allclose(
        merged, sum(w * t for w, t in zip(expected.weights, sources, strict=True)), atol=1e-6
    )

    with pytest.raises(
        CocktailError, match="both example_data and example_ata were given: pass the examples once"
    ):
        mix_models_with_data(names, "decoder", examples, example_ata=examples)


def test_mix_models_with_data_reads_hub_references_by_range(hub_server, trained_decoders, tmp_path) -> None:
    from huggingface_hub import constants

    from cocktail_bot.api import mix_models_with_data

    names = ("base", "sentiment", "topic")
    for name in names:
        hub_server.commit_folder(f"cocktail/{name}", trained_decoders[name])
    examples = tiny_tasks.make_examples("sentiment", 5, seed=27)
    hub, local = tmp_path / "hub", tmp_path / "local"
    mix_models_with_data([f"cocktail/{n}" for n in names], "decoder", examples, output_path=str(hub))
    mix_models_with_data(
        [str(trained_decoders[n]) for n in names], "decoder", examples, output_path=str(local)
    )
    assert {p.name: p.read_bytes() for p in hub.iterdir()} == {
        p.name: p.read_bytes() for p in local.iterdir()
    }
    assert not list(Path(constants.HF_HOME).rglob("*.safetensors"))  # scored and merged without downloading
    assert all(request.range for request in hub_server.seen("cdn"))


def test_bundled_quickstart_weights_favour_the_sentiment_model() -> None:
    """examples/quickstart (built by tools/make_quickstart.py): the fine-tune that knows the task wins."""
    root = Path(__file__).resolve().parent.parent / "examples" / "quickstart"
    models = [root / "models" / name for name in ("general", "sentiment", "topic")]
    result = compute_weights(models, "decoder", root / "data" / "sentiment-examples.jsonl", progress=False)
    assert largest(result) == str(models[1])
    assert min(result.weights) == result.weights[2]
