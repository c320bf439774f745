"""Loss definitions: LM_Cocktail 0.0.4's numbers where it works, and none of its failures."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pytest
import torch

from cocktail_bot.errors import CocktailError
from cocktail_bot.losses import (
    IGNORE_INDEX,
    decoder_batches,
    decoder_sequence,
    group_cross_entropy,
    info_nce,
    sample_negatives,
)
from cocktail_bot.weights import DECIMALS, compute_weights
from tools import tiny_tasks

LONG_PROMPT = {"input": "review: " + "good movie and a great book " * 20 + "label:", "output": "positive"}


def test_decoder_sequence_masks_the_prompt_like_lm_cocktail(llama_tokenizer) -> None:
    example = tiny_tasks.sentiment(__import__("random").Random(0))
    ids, labels, truncated = decoder_sequence(example, llama_tokenizer, 2048)
    full = llama_tokenizer.encode(example["input"] + " " + example["output"]) + [llama_tokenizer.eos_token_id]
    prompt = llama_tokenizer.encode(example["input"])
    assert not truncated
    assert ids == full
    assert labels == [IGNORE_INDEX] * len(prompt) + full[len(prompt) :]


def test_long_prompt_is_cut_from_the_left_keeping_bos_and_answer(llama_tokenizer) -> None:
    full, _, _ = decoder_sequence(LONG_PROMPT, llama_tokenizer, 10_000)
    ids, labels, truncated = decoder_sequence(LONG_PROMPT, llama_tokenizer, 16)
    answer = [label for label in labels if label != IGNORE_INDEX]
    assert truncated and len(ids) == 16
    assert ids[0] == llama_tokenizer.bos_token_id
    assert ids[1:] == full[len(full) - 15 :]  # the end of the prompt, then the whole answer and EOS
    assert answer[-1] == llama_tokenizer.eos_token_id and ids[-len(answer) :] == answer


def test_answer_longer_than_the_limit_keeps_its_first_tokens_and_one_prompt_token(llama_tokenizer) -> None:
    example = {"input": "review:", "output": "good movie " * 20}
    ids, labels, _ = decoder_sequence(example, llama_tokenizer, 8)
    assert len(ids) == 8 and labels[:2] == [IGNORE_INDEX] * 2 and IGNORE_INDEX not in labels[2:]


def test_batches_pad_to_their_longest_without_a_pad_token(llama_tokenizer) -> None:
    assert llama_tokenizer.pad_token is None  # like Llama's own tokenizer
    examples = [
        {"input": "a", "output": "b"},
        {"input": "review: good movie. label:", "output": "positive"},
        {"input": "x", "output": "y"},
    ]
    batches = decoder_batches(examples, llama_tokenizer, 2048, batch_size=2)
    lengths = [len(decoder_sequence(example, llama_tokenizer, 2048)[0]) for example in examples]
    assert [tuple(batch.input_ids.shape) for batch in batches] == [(2, max(lengths[:2])), (1, lengths[2])]
    first = batches[0]
    assert first.attention_mask.sum(dim=1).tolist() == lengths[:2]
    assert (first.labels[0, lengths[0] :] == IGNORE_INDEX).all()


def test_max_input_length_too_small(llama_tokenizer) -> None:
    with pytest.raises(
        CocktailError, match="max_input_length 2 is too small: allow at least 3 tokens per example"
    ):
        decoder_batches([{"input": "a", "output": "b"}], llama_tokenizer, 2, 2)


def test_negative_sampling_is_seeded_and_fewer_negatives_are_used_as_they_are(caplog) -> None:
    examples = [
        {"query": "q", "pos": ["p"], "neg": [f"n{i}" for i in range(10)]},
        {"query": "q", "pos": ["p"], "neg": ["only"]},
    ]
    caplog.set_level(logging.INFO, logger="cocktail_bot.losses")
    first = sample_negatives(examples, 3, seed=1)
    assert first == sample_negatives(examples, 3, seed=1)
    assert len(first[0]) == 3 and set(first[0]) <= set(examples[0]["neg"]) and first[1] == ["only"]
    assert (
        "1 of 2 examples have fewer than neg_number=3 negatives: using the ones they have" in caplog.messages
    )
    assert sample_negatives(examples, 3, seed=1) != sample_negatives(examples, 3, seed=2)


def test_info_nce_against_a_hand_computation() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    passages = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 1.0], [3.0, 0.0]])
    loss, scores = info_nce(queries, passages, [2, 3])
    normalized = torch.nn.functional.normalize(passages, dim=-1)
    expected_scores = torch.nn.functional.normalize(queries, dim=-1) @ normalized.T / 0.05
    expected = (
        torch.logsumexp(expected_scores[0], 0)
        - expected_scores[0, 0]
        + torch.logsumexp(expected_scores[1], 0)
        - expected_scores[1, 2]
    ) / 2
    assert torch.allclose(scores, expected_scores)
    assert float(loss) == pytest.approx(float(expected))


def test_group_cross_entropy_scores_the_first_of_each_group() -> None:
    loss, groups = group_cross_entropy(torch.tensor([2.0, 0.0, 1.0, 1.0, 1.0]), [2, 3])
    expected = (math.log(1 + math.exp(-2)) + math.log(3)) / 2
    assert float(loss) == pytest.approx(expected)
    assert [group.tolist() for group in groups] == [[2.0, 0.0], [1.0, 1.0, 1.0]]


# ---------------------------------------------------------------------------------- parity with LM_Cocktail


@pytest.fixture(scope="module")
def lm_cocktail():
    return pytest.importorskip("LM_Cocktail.utils")


def test_decoder_losses_and_weights_match_lm_cocktail(lm_cocktail, trained_decoders) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folders = [trained_decoders[name] for name in ("base", "sentiment", "topic")]
    examples = tiny_tasks.make_examples("mix", 5, seed=11)
    tokenizer = AutoTokenizer.from_pretrained(folders[0])
    tokenizer.pad_token = tokenizer.unk_token  # LM_Cocktail needs a pad token; ours does without
    data = lm_cocktail.preprocess_data_for_llm(examples, tokenizer, torch.device("cpu"), 2, 64)
    models = [AutoModelForCausalLM.from_pretrained(folder) for folder in folders]
    expected_losses = [lm_cocktail.llm_loss(model, data) for model in models]
    expected_weights = lm_cocktail.compute_weights(
        models[0],
        tokenizer,
        [m.state_dict() for m in models],
        "decoder",
        examples,
        temperature=5.0,
        batch_size=2,
        max_input_length=64,
    )

    result = compute_weights(folders, "decoder", examples, max_input_length=64, device="cpu", progress=False)

    # weights.py rounds losses and weights to DECIMALS places (#16 item 3); the largest weight takes the rest
    assert result.losses == pytest.approx(expected_losses, abs=10**-DECIMALS / 2)
    assert result.weights == pytest.approx(expected_weights, abs=2 * 10**-DECIMALS)


def cls_copy(st_folder: Path, target: Path) -> Path:
    """The transformer of a sentence-transformers folder without its modules: a plain BERT that pools CLS."""
    target.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (st_folder / name).exists():
            shutil.copy(st_folder / name, target / name)
    return target


def test_encoder_losses_and_weights_match_lm_cocktail_on_cls_models(
    lm_cocktail, trained_encoders, tmp_path: Path
) -> None:
    from transformers import AutoModel, AutoTokenizer

    folders = [cls_copy(trained_encoders[name], tmp_path / name) for name in ("base", "animal", "object")]
    examples = tiny_tasks.make_examples("animal", 5, seed=12)  # 4 negatives each, all of them used
    tokenizer = AutoTokenizer.from_pretrained(folders[0])
    data = lm_cocktail.preprocess_data_for_embedder(
        examples, tokenizer, torch.device("cpu"), 2, 64, neg_number=4
    )
    models = [AutoModel.from_pretrained(folder) for folder in folders]
    expected_losses = [lm_cocktail.embedder_loss(model, data) for model in models]
    expected_weights = lm_cocktail.compute_weights(
        models[0],
        tokenizer,
        [m.state_dict() for m in models],
        "encoder",
        examples,
        batch_size=2,
        max_input_length=64,
        neg_number=4,
    )

    result = compute_weights(
        folders, "encoder", examples, neg_number=4, max_input_length=64, device="cpu", progress=False
    )

    # weights.py rounds losses and weights to DECIMALS places (#16 item 3); the largest weight takes the rest
    assert result.losses == pytest.approx(expected_losses, abs=10**-DECIMALS / 2)
    assert result.weights == pytest.approx(expected_weights, abs=2 * 10**-DECIMALS)


def test_where_lm_cocktail_fails_we_do_not(lm_cocktail, trained_decoders, trained_encoders) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folders = [trained_decoders["base"], trained_decoders["sentiment"]]
    tokenizer = AutoTokenizer.from_pretrained(folders[0])
    with pytest.raises(TypeError):  # no pad token: LM_Cocktail pads with None
        lm_cocktail.preprocess_data_for_llm([LONG_PROMPT], tokenizer, torch.device("cpu"), 2, 16)
    tokenizer.pad_token = tokenizer.unk_token
    data = lm_cocktail.preprocess_data_for_llm([LONG_PROMPT], tokenizer, torch.device("cpu"), 2, 16)
    assert math.isnan(lm_cocktail.llm_loss(AutoModelForCausalLM.from_pretrained(folders[0]), data))

    result = compute_weights(
        folders, "decoder", [LONG_PROMPT], max_input_length=16, device="cpu", progress=False
    )
    assert all(math.isfinite(loss) for loss in result.losses)

    few = [{"query": "what is it", "pos": ["the cat"], "neg": ["the book"]}]
    with pytest.raises(ValueError):  # random.sample of 7 from 1
        lm_cocktail.preprocess_data_for_embedder(few, tokenizer, torch.device("cpu"), 2, 64, neg_number=7)
    encoders = [trained_encoders["base"], trained_encoders["animal"]]
    assert all(
        math.isfinite(loss) for loss in compute_weights(encoders, "encoder", few, progress=False).losses
    )
