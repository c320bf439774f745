"""Loss (and top-1 accuracy) of one loaded model on examples, with LM_Cocktail 0.0.4's numbers where it works.

LM_Cocktail's definitions are kept exactly (they are what its users' weights were tuned with); its failures
are not:

* decoder: causal-LM loss on the tokens of ``input + ' ' + output`` + EOS after the prompt's tokens, mean of
  per-batch means. Batches are padded to their longest sequence (not to ``max_input_length``), the attention
  mask comes from the lengths (so tokenizers without a pad token work), and long prompts are truncated from
  the left so every example keeps answer tokens (LM_Cocktail truncates from the right and gets NaN).
* encoder: InfoNCE (temperature 0.05) of each query against its positive, its sampled negatives and the other
  queries' passages in the batch, over normalized embeddings. Examples with fewer negatives than asked use
  what they have (LM_Cocktail raises), and group offsets follow the real group sizes.
* reranker (LM_Cocktail cannot): cross-entropy of the positive among [pos, negs], scored by the classification
  head, one group per query, mean of per-batch means.

The model-facing parts (embedding texts, scoring pairs) are passed in as functions, so this module holds only
the arithmetic and the batching, and does not care how a model was loaded or pooled.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cocktail_bot.errors import CocktailError

logger = logging.getLogger(__name__)

INFO_NCE_TEMPERATURE = 0.05  # LM_Cocktail's (and FlagEmbedding's) contrastive temperature
IGNORE_INDEX = -100  # label value that transformers' causal-LM loss skips

Embed = Callable[[list[str]], torch.Tensor]
"""texts -> one embedding per text (any scale: they are normalized here)."""
ScorePairs = Callable[[list[str], list[str]], torch.Tensor]
"""(queries, passages) -> one relevance logit per pair."""


@dataclass(frozen=True)
class Score:
    """One model on one example set."""

    loss: float
    accuracy: float | None
    examples: int


def combine_scores(scores: Sequence[Score]) -> Score:
    """The scores of consecutive batches as one: the mean of the batch losses (the order of the sum kept), and
    the accuracy over all examples; equal to scoring the batches in one call."""
    examples = sum(score.examples for score in scores)
    accuracy = None
    if scores[0].accuracy is not None:
        accuracy = sum(round((score.accuracy or 0.0) * score.examples) for score in scores) / examples
    return Score(loss=sum(score.loss for score in scores) / len(scores), accuracy=accuracy, examples=examples)


@dataclass(frozen=True)
class DecoderBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


# ------------------------------------------------------------------------------------------------- decoder


def decoder_sequence(
    example: Mapping[str, str], tokenizer, max_length: int
) -> tuple[list[int], list[int], bool]:
    """Token ids and labels of one example, as LM_Cocktail builds them, fitted into ``max_length`` tokens.

    Returns ``(input_ids, labels, truncated)``. When too long, the prompt loses tokens from the left (a
    leading BOS is kept) so that the answer survives; an answer that alone does not fit keeps its first
    tokens.
    """
    ids = tokenizer.encode(example["input"] + " " + example["output"])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    prompt_length = min(len(tokenizer.encode(example["input"])), len(ids))
    prompt, answer = ids[:prompt_length], ids[prompt_length:]
    if not answer:
        raise CocktailError(f"the output of the example {example!r} has no tokens: give a non-empty output")
    truncated = len(ids) > max_length
    if truncated:
        keep_bos = bool(prompt) and tokenizer.bos_token_id is not None and prompt[0] == tokenizer.bos_token_id
        prefix, body = prompt[: int(keep_bos)], prompt[int(keep_bos) :]
        room = max_length - len(prefix)
        answer = answer[: room - 1 if body else room]
        kept_body = room - len(answer)
        prompt = prefix + (body[len(body) - kept_body :] if kept_body else [])
    return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, truncated


def decoder_batches(
    examples: Sequence[Mapping[str, str]], tokenizer, max_length: int, batch_size: int
) -> list[DecoderBatch]:
    """Examples in order, ``batch_size`` at a time, right-padded to each batch's longest sequence."""
    if max_length < 3:
        raise CocktailError(
            f"max_input_length {max_length} is too small: allow at least 3 tokens per example"
        )
    sequences = [decoder_sequence(example, tokenizer, max_length) for example in examples]
    truncated = sum(was_truncated for _, _, was_truncated in sequences)
    if truncated:
        logger.info(
            "%d of %d examples are longer than %d tokens: their prompts were truncated from the left",
            truncated,
            len(sequences),
            max_length,
        )
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    batches = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(len(ids) for ids, _, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, row_labels, _) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(row_labels)
            attention_mask[row, : len(ids)] = 1
        batches.append(DecoderBatch(input_ids, attention_mask, labels))
    return batches


@torch.no_grad()
def decoder_score(model, batches: Sequence[DecoderBatch], device: torch.device | str) -> Score:
    """Causal-LM loss on the answer tokens: transformers' token mean per batch, then the mean over batches."""
    losses = []
    for batch in batches:
        output = model(
            input_ids=batch.input_ids.to(device),
            attention_mask=batch.attention_mask.to(device),
            labels=batch.labels.to(device),
        )
        losses.append(float(output.loss))
    return Score(
        loss=sum(losses) / len(losses), accuracy=None, examples=sum(len(b.input_ids) for b in batches)
    )


# ------------------------------------------------------------------------------------------------- retrieval


def sample_negatives(examples: Sequence[Mapping], neg_number: int, seed: int) -> list[list[str]]:
    """``neg_number`` negatives per example, drawn with a seeded generator so that weights are reproducible.

    Examples with fewer negatives use all they have, and one log line says how many did.
    """
    if neg_number < 0:
        raise CocktailError(f"neg_number must be 0 or more, got {neg_number}")
    rng = random.Random(seed)
    chosen, short = [], 0
    for example in examples:
        negatives = list(example["neg"])
        if len(negatives) > neg_number:
            negatives = rng.sample(negatives, neg_number)
        short += len(negatives) < neg_number
        chosen.append(negatives)
    if short:
        logger.info(
            "%d of %d examples have fewer than neg_number=%d negatives: using the ones they have",
            short,
            len(examples),
            neg_number,
        )
    return chosen


def query_groups(examples: Sequence[Mapping], negatives: Sequence[list[str]]) -> list[tuple[str, list[str]]]:
    """(query, [positive, *negatives]) per example: LM_Cocktail uses the first positive."""
    return [
        (example["query"], [example["pos"][0], *negs])
        for example, negs in zip(examples, negatives, strict=True)
    ]


def _batched(items: Sequence, size: int) -> list[Sequence]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _group_starts(sizes: Sequence[int]) -> list[int]:
    """The index of each group's first item (its positive) when groups of ``sizes`` are laid end to end."""
    return [0, *itertools.accumulate(sizes)][: len(sizes)]


def _top1(scores: torch.Tensor) -> bool:
    """The positive (index 0) ranks first; ties go to the positive, as argmax keeps the first maximum."""
    return int(torch.argmax(scores)) == 0


def info_nce(
    queries: torch.Tensor, passages: torch.Tensor, sizes: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(InfoNCE loss, score matrix) of queries against all passages of the batch, grouped ``sizes`` per query.

    Each query's target is the first passage of its own group (its positive); the other groups' passages act
    as in-batch negatives. Differentiable, so training (tools/tiny_tasks.py) uses the loss it is judged by.
    """
    scores = (
        F.normalize(queries.float(), dim=-1) @ F.normalize(passages.float(), dim=-1).T / INFO_NCE_TEMPERATURE
    )
    starts = torch.tensor(_group_starts(sizes), device=scores.device)
    return F.cross_entropy(scores, starts), scores


def group_cross_entropy(
    logits: torch.Tensor, sizes: Sequence[int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(mean over groups of the cross-entropy of each group's first item, the groups' logits)."""
    groups = list(torch.split(logits.float(), list(sizes)))
    target = torch.zeros(1, dtype=torch.long, device=logits.device)
    return torch.stack([F.cross_entropy(group[None], target) for group in groups]).mean(), groups


@torch.no_grad()
def encoder_score(
    embed: Embed, examples: Sequence[Mapping], negatives: Sequence[list[str]], batch_size: int
) -> Score:
    """InfoNCE with in-batch negatives, and top-1 accuracy of the positive among the query's own passages."""
    losses, hits = [], 0
    for batch in _batched(query_groups(examples, negatives), batch_size):
        sizes = [len(group) for _, group in batch]
        loss, scores = info_nce(
            embed([query for query, _ in batch]), embed([t for _, g in batch for t in g]), sizes
        )
        losses.append(float(loss))
        hits += sum(
            _top1(scores[row, start : start + size])
            for row, (start, size) in enumerate(zip(_group_starts(sizes), sizes, strict=True))
        )
    return Score(loss=sum(losses) / len(losses), accuracy=hits / len(examples), examples=len(examples))


@torch.no_grad()
def reranker_score(
    score_pairs: ScorePairs, examples: Sequence[Mapping], negatives: Sequence[list[str]], batch_size: int
) -> Score:
    """Cross-entropy of the positive among [pos, negs] per query (mean per batch, then over batches)."""
    losses, hits = [], 0
    for batch in _batched(query_groups(examples, negatives), batch_size):
        logits = score_pairs(
            [query for query, group in batch for _ in group], [t for _, g in batch for t in g]
        )
        loss, scored = group_cross_entropy(logits, [len(group) for _, group in batch])
        losses.append(float(loss))
        hits += sum(_top1(group) for group in scored)
    return Score(loss=sum(losses) / len(losses), accuracy=hits / len(examples), examples=len(examples))
