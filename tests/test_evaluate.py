"""Evaluation table: loss (and top-1 accuracy) of each model on each example set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cocktail_bot.errors import CocktailError
from cocktail_bot.evaluate import evaluate
from cocktail_bot.weights import DECIMALS, compute_weights
from tools import tiny_tasks


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_decoder_table_shows_each_model_best_on_its_own_task(trained_decoders, tmp_path, caplog) -> None:
    sets = {
        task: write(tmp_path / f"{task}.jsonl", tiny_tasks.make_examples(task, 4, seed=31))
        for task in ("sentiment", "topic")
    }
    models = {name: trained_decoders[name] for name in ("base", "sentiment", "topic")}

    with caplog.at_level("INFO", logger="cocktail_bot.scoring"):
        results = evaluate(models, "decoder", sets, progress=False)

    # the log names models by their labels (a merge's folder is a temporary path a user cannot place)
    assert [m.split(": loss")[0] for m in caplog.messages if ": loss" in m] == [
        f"{model} on {task}" for model in models for task in sets
    ]

    assert [(r.eval_set, r.model) for r in results] == [(s, m) for s in sets for m in models]
    assert all(r.accuracy is None and r.examples == 4 for r in results)
    loss = {(r.eval_set, r.model): r.loss for r in results}
    for task in sets:
        assert min(models, key=lambda model: loss[task, model]) == task
    # the same numbers the weights are computed from (which weights.py rounds to DECIMALS places)
    weights = compute_weights(list(models.values()), "decoder", sets["topic"], progress=False)
    assert [round(loss["topic", model], DECIMALS) for model in models] == weights.losses


@pytest.mark.parametrize("model_type", ["encoder", "reranker"])
def test_retrieval_accuracy_is_top1_of_the_positive(trained_encoders, trained_rerankers, model_type) -> None:
    trained = trained_encoders if model_type == "encoder" else trained_rerankers
    sets = {task: tiny_tasks.make_examples(task, 6, seed=32) for task in ("animal", "object")}
    results = evaluate(
        {name: trained[name] for name in ("animal", "object")}, model_type, sets, progress=False
    )
    accuracy = {(r.eval_set, r.model): r.accuracy for r in results}
    assert accuracy == {
        ("animal", "animal"): 1.0,
        ("animal", "object"): 0.0,
        ("object", "animal"): 0.0,
        ("object", "object"): 1.0,
    }


def test_bad_eval_set_names_the_file(trained_decoders, tmp_path) -> None:
    bad = write(tmp_path / "bad.jsonl", [{"input": "x"}])
    with pytest.raises(CocktailError) as caught:
        evaluate({"base": trained_decoders["base"]}, "decoder", {"held-out": bad})
    assert (
        str(caught.value)
        == f"{bad}: record 0 (line 1): the field 'output' is missing (decoder examples need it)"
    )


def test_nothing_to_evaluate() -> None:
    assert evaluate({}, "decoder", {}) == []
