"""Tiny models of real architectures (Llama, BERT, BERT cross-encoder), made from scratch with no network.

Used by the test fixtures, the bundled quickstart and the benchmarks, so that everything runs offline on real
transformers classes with real tokenizers and real checkpoint formats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    BertTokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

WORDS = (
    "the a an one two three four five six seven eight nine ten red green blue cat dog bird fish tree river city "
    "happy sad good bad great terrible movie book song news sport world business science tech game team win lose "
    "question answer yes no true false positive negative topic label review query passage document about is was "
    "what who where when why how and or not of to in on for with by from up down left right first last"
).split()


def corpus() -> list[str]:
    """Synthetic text covering WORDS, digits and punctuation, enough to train a small tokenizer."""
    lines = [" ".join(WORDS[i : i + 7]) for i in range(0, len(WORDS), 3)]
    lines += [" ".join(str(n) for n in range(k, k + 10)) for k in range(0, 100, 10)]
    lines += ["Question: what is the topic? Answer: sport.", "Review: great movie! Label: positive."]
    return lines


def make_llama_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Llama's special tokens and, like Llama, no pad token."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus() * 4, trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def make_bert_tokenizer(folder: Path) -> BertTokenizerFast:
    """A WordPiece tokenizer over WORDS, letters and digits, saved as BERT's vocab.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "!", ":"]
    vocab += list("abcdefghijklmnopqrstuvwxyz0123456789") + [
        f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"
    ]
    vocab += [word for word in WORDS if word not in vocab]
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True)  # transformers 5 reads `vocab`


def llama_config(vocab_size: int, **overrides) -> LlamaConfig:
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def save_llama(
    folder: Path,
    seed: int,
    *,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
    tokenizer: PreTrainedTokenizerFast | None = None,
    **config: Any,
) -> Path:
    """A randomly initialised tiny Llama causal LM with its tokenizer, saved as safetensors; ``config`` overrides
    ``llama_config`` (``tie_word_embeddings=True``: no stored head)."""
    tokenizer = tokenizer or make_llama_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(len(tokenizer), **config)).to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    tokenizer.save_pretrained(folder)
    return folder


def bert_config(vocab_size: int, **overrides) -> BertConfig:
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    settings.update(overrides)
    return BertConfig(**settings)


def save_bert_encoder(folder: Path, seed: int, *, pooling: str = "mean") -> Path:
    """A tiny BERT saved as a sentence-transformers model (Transformer, Pooling, Normalize)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer

    raw = folder.parent / f"{folder.name}-raw"
    tokenizer = make_bert_tokenizer(raw)
    torch.manual_seed(seed)
    BertModel(bert_config(len(tokenizer)), add_pooling_layer=False).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=64)
    pooler = Pooling(transformer.auto_model.config.hidden_size, pooling_mode=pooling)
    SentenceTransformer(modules=[transformer, pooler, Normalize()], device="cpu").save(str(folder))
    return folder


def save_bert_reranker(folder: Path, seed: int) -> Path:
    """A tiny BERT cross-encoder: sequence classification with one label, like BGE rerankers."""
    tokenizer = make_bert_tokenizer(folder)
    torch.manual_seed(seed)
    BertForSequenceClassification(bert_config(len(tokenizer), num_labels=1)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
