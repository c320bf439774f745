"""The manifest's `type:` and each step's family against the sources' config.json: `validate` reads the local
folders' configs, `plan` (and `run`) the Hub's as well, before anything is downloaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from cocktail_bot.cli import main
from cocktail_bot.model_types import ModelType, config_type

HEADER = "version: 1\nname: typed\ntype: {type}\n"


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A causal LM of another family than the tiny Llamas (GPT-2, `GPT2LMHeadModel`)."""
    folder = tmp_path_factory.mktemp("gpt2")
    config = GPT2Config(vocab_size=384, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.fixture
def repo(tmp_path: Path, tiny_llamas, tiny_encoders, tiny_rerankers, tiny_gpt2) -> Path:
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    models = {
        "llama-0": tiny_llamas[0],
        "llama-1": tiny_llamas[1],
        "bert": tiny_encoders[0],
        "reranker": tiny_rerankers[0],
        "gpt2": tiny_gpt2,
    }
    for name, folder in models.items():
        shutil.copytree(folder, root / "models" / name)
    return root


def validate(repo: Path, text: str, capsys) -> tuple[int, list[str]]:
    (repo / "cocktail.yml").write_text(text)
    code = main(["validate", str(repo / "cocktail.yml")])
    return code, [
        line.removeprefix(f"{repo / 'cocktail.yml'}:") for line in capsys.readouterr().err.splitlines()[1:]
    ]


def test_validate_refuses_a_type_or_family_the_local_configs_contradict(repo: Path, capsys) -> None:
    llamas = "models: [./models/llama-0, ./models/llama-1]\nweights: uniform\n"
    assert validate(repo, HEADER.format(type="encoder") + llamas, capsys) == (
        2,
        [
            f"4: models[{index}]: ./models/llama-{index} is a decoder (its config.json has architectures "
            "[LlamaForCausalLM]), but the manifest says type: encoder: set 'type: decoder', or use encoder models"
            for index in (0, 1)
        ],
    )
    mixed = "models: [./models/llama-0, ./models/bert]\nweights: uniform\n"
    assert validate(repo, HEADER.format(type="decoder") + mixed, capsys) == (
        2,
        [
            "4: models[1]: ./models/bert is an encoder (its config.json has architectures [BertModel]), but the "
            "manifest says type: decoder: set 'type: encoder', or use decoder models"
        ],
    )
    family = "models: [./models/llama-0, ./models/gpt2]\nweights: uniform\n"
    assert validate(repo, HEADER.format(type="decoder") + family, capsys) == (
        2,
        [
            "4: models[1]: ./models/gpt2 is a gpt2 model (config.json model_type 'gpt2'), but the base "
            "./models/llama-0 is llama: models of one family merge (same architecture and shapes); use llama "
            "models here"
        ],
    )
    steps = (
        "steps:\n"
        "  - {name: one, models: [./models/llama-0, ./models/llama-1], weights: uniform}\n"
        "  - {name: two, models: [{step: one, weight: 0.5}, {id: ./models/gpt2, weight: 0.5}]}\n"
    )
    assert validate(repo, HEADER.format(type="decoder") + steps, capsys) == (
        2,
        [
            "6: steps[1].models[1]: ./models/gpt2 is a gpt2 model (config.json model_type 'gpt2'), but the base "
            "step:one is llama: models of one family merge (same architecture and shapes); use llama models here"
        ],
    )
    rerankers = "models: [./models/reranker]\nweights: uniform\n"
    assert validate(repo, HEADER.format(type="encoder") + rerankers, capsys)[1] == [
        "4: models[0]: ./models/reranker is a reranker (its config.json has architectures "
        "[BertForSequenceClassification]), but the manifest says type: encoder: set 'type: reranker', or use "
        "encoder models"
    ]
    for model_type, models in (
        ("decoder", llamas),
        ("encoder", "models: [./models/bert]\nweights: uniform\n"),
    ):
        assert validate(repo, HEADER.format(type=model_type) + models, capsys)[0] == 0


def test_plan_checks_the_hub_sources_configs_before_downloading(
    hub_server, tmp_path: Path, tiny_llamas, tiny_encoders, tiny_gpt2, capsys
) -> None:
    hub_server.commit_folder("cocktail/llama", tiny_llamas[0])
    hub_server.commit_folder("cocktail/bert", tiny_encoders[0])
    hub_server.commit_folder("cocktail/gpt2", tiny_gpt2)
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    manifest = repo / "cocktail.yml"
    manifest.write_text(
        HEADER.format(type="decoder")
        + "models: [cocktail/llama, cocktail/bert, cocktail/gpt2]\nweights: uniform\n"
    )
    assert main(["validate", str(manifest)]) == 0  # validate reads no Hub
    capsys.readouterr()
    assert main(["plan", str(manifest)]) == 2
    assert capsys.readouterr().err == (
        "error: cocktail/bert is an encoder (its config.json has architectures [BertModel]), but the manifest "
        "says type: decoder: set 'type: encoder', or use decoder models\n"
        "cocktail/gpt2 is a gpt2 model (config.json model_type 'gpt2'), but the base cocktail/llama is llama: "
        "models of one family merge (same architecture and shapes); use llama models here\n"
    )
    assert hub_server.seen("resolve") == []  # the Hub's model info said it: nothing was downloaded
    assert main(["run", str(manifest), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("architectures", "expected"),
    [
        (["LlamaForCausalLM"], (ModelType.DECODER, "LlamaForCausalLM")),
        (["GPT2LMHeadModel"], (ModelType.DECODER, "GPT2LMHeadModel")),
        (["XLMRobertaModel"], (ModelType.ENCODER, "XLMRobertaModel")),
        (["MistralModel"], (ModelType.ENCODER, "MistralModel")),  # an LLM-based embedder (e5-mistral)
        (
            ["XLMRobertaForSequenceClassification"],
            (ModelType.RERANKER, "XLMRobertaForSequenceClassification"),
        ),
        (["BertForMaskedLM"], None),  # says nothing about how it is used: not judged
        (["T5ForConditionalGeneration"], None),
        (None, None),
    ],
)
def test_the_type_an_architecture_says(architectures, expected) -> None:
    assert config_type({"architectures": architectures} if architectures else {}) == expected
