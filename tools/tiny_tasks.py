"""Synthetic tasks and a few seconds of training, to make tiny models that are each good at one thing.

Example-based weights are only testable with models that differ in what they know: a model trained on the task
the examples come from must get the largest weight. The tasks use the words of :mod:`tools.tiny_models` so the
tiny tokenizers cover them; every generator and every training run is seeded, so the models are the same on
every run.

Decoder tasks give ``{"input", "output"}`` records; retrieval tasks give ``{"query", "pos", "neg"}`` records
and train both sentence-transformers encoders (InfoNCE) and cross-encoder rerankers (cross-entropy over each
group), with the same loss functions that :mod:`cocktail_bot.losses` judges them by.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import torch

from cocktail_bot.losses import decoder_batches, group_cross_entropy, info_nce, query_groups, sample_negatives

POSITIVE = ("happy", "good", "great", "win", "yes", "true")
NEGATIVE = ("sad", "bad", "terrible", "lose", "no", "false")
THINGS = ("movie", "book", "song", "game", "city", "team", "news", "tree")
TOPICS = {
    "sport": ("game", "team", "win", "lose", "first", "last"),
    "science": ("tree", "river", "bird", "fish", "cat", "dog"),
    "business": ("city", "world", "news", "up", "down", "two"),
}
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
ANIMALS = ("cat", "dog", "bird", "fish", "tree", "river")
OBJECTS = ("movie", "book", "song", "game", "city", "team")
QUERY_WORDS = ("what", "who", "where", "which", "how", "why")


def sentiment(rng: random.Random) -> dict:
    """Review of a thing with a positive or negative word -> its label."""
    label = rng.choice(("positive", "negative"))
    word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
    return {"input": f"review: {word} {rng.choice(THINGS)}. label:", "output": label}


def topic(rng: random.Random) -> dict:
    """Three words of one topic -> the topic."""
    name = rng.choice(sorted(TOPICS))
    words = rng.sample(TOPICS[name], 3)
    return {"input": f"news: {' '.join(words)}. topic:", "output": name}


def count(rng: random.Random) -> dict:
    """Three consecutive numbers -> the next one."""
    start = rng.randrange(len(NUMBERS) - 3)
    return {"input": f"count: {' '.join(NUMBERS[start : start + 3])}", "output": NUMBERS[start + 3]}


DECODER_TASKS: dict[str, Callable[[random.Random], dict]] = {
    "sentiment": sentiment,
    "topic": topic,
    "count": count,
}
RETRIEVAL_TASKS = {
    "animal": (ANIMALS, OBJECTS),
    "object": (OBJECTS, ANIMALS),
}  # task -> (positives, negatives)


def retrieval(task: str, rng: random.Random, neg_count: int = 4) -> dict:
    """A question; the relevant passage names a word of the task's kind, the negatives the other kind."""
    relevant, other = RETRIEVAL_TASKS[task]
    return {
        "query": f"{rng.choice(QUERY_WORDS)} is it",
        "pos": [f"the {rng.choice(relevant)}"],
        "neg": [f"the {word}" for word in rng.sample(other, neg_count)],
    }


def make_examples(task: str, count_: int, seed: int) -> list[dict]:
    """``count_`` records: decoder task (sentiment, topic, count, mix) or retrieval task (animal, object)."""
    rng = random.Random(seed)
    if task in RETRIEVAL_TASKS:
        return [retrieval(task, rng) for _ in range(count_)]
    generators = list(DECODER_TASKS.values()) if task == "mix" else [DECODER_TASKS[task]]
    return [rng.choice(generators)(rng) for _ in range(count_)]


def _optimise(parameters, steps: int, lr: float, loss_of_step: Callable[[int], torch.Tensor]) -> float:
    """AdamW for ``steps`` steps on one thread: on models this small, thread synchronisation costs more than
    it saves (several times more on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        optimizer = torch.optim.AdamW(parameters, lr=lr)
        loss = torch.tensor(float("nan"))
        for step in range(steps):
            optimizer.zero_grad()
            loss = loss_of_step(step)
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return float(loss.detach())


def train_decoder(
    source: Path,
    output: Path,
    task: str,
    *,
    steps: int = 20,
    lr: float = 1e-2,
    seed: int = 0,
    batch_size: int = 8,
) -> Path:
    """Fine-tune the causal LM in ``source`` on ``task`` (answer tokens only) and save it to ``output``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.eval()  # no dropout: a few deterministic steps
    batches = decoder_batches(make_examples(task, steps * batch_size, seed), tokenizer, 64, batch_size)

    def loss_of_step(step: int) -> torch.Tensor:
        batch = batches[step]
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss

    _optimise(model.parameters(), steps, lr, loss_of_step)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


def train_encoder(
    source: Path,
    output: Path,
    task: str,
    *,
    steps: int = 15,
    lr: float = 1e-2,
    seed: int = 0,
    batch_size: int = 8,
) -> Path:
    """Fine-tune the sentence-transformers model in ``source`` on retrieval ``task`` with InfoNCE."""
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(seed)
    model = SentenceTransformer(str(source), device="cpu")
    model.eval()  # no dropout: a few deterministic steps
    batches = _retrieval_batches(task, steps, batch_size, seed)

    def embed(texts: list[str]) -> torch.Tensor:
        return model(model.preprocess(texts))["sentence_embedding"]

    def loss_of_step(step: int) -> torch.Tensor:
        groups = batches[step]
        passages = [text for _, group in groups for text in group]
        return info_nce(embed([query for query, _ in groups]), embed(passages), [len(g) for _, g in groups])[
            0
        ]

    _optimise(model.parameters(), steps, lr, loss_of_step)
    model.save(str(output))
    return output


def train_reranker(
    source: Path,
    output: Path,
    task: str,
    *,
    steps: int = 15,
    lr: float = 1e-2,
    seed: int = 0,
    batch_size: int = 8,
) -> Path:
    """Fine-tune the cross-encoder in ``source`` on retrieval ``task``: the positive must win its group."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, dtype=torch.float32)
    model.eval()  # no dropout: a few deterministic steps
    batches = _retrieval_batches(task, steps, batch_size, seed)

    def loss_of_step(step: int) -> torch.Tensor:
        groups = batches[step]
        tokens = tokenizer(
            [q for q, group in groups for _ in group],
            [t for _, group in groups for t in group],
            padding=True,
            return_tensors="pt",
        )
        return group_cross_entropy(model(**tokens).logits[:, 0], [len(g) for _, g in groups])[0]

    _optimise(model.parameters(), steps, lr, loss_of_step)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


def _retrieval_batches(
    task: str, steps: int, batch_size: int, seed: int
) -> list[list[tuple[str, list[str]]]]:
    examples = make_examples(task, steps * batch_size, seed)
    groups = query_groups(examples, sample_negatives(examples, 4, seed))
    return [groups[step * batch_size : (step + 1) * batch_size] for step in range(steps)]
