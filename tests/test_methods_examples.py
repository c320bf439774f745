"""Example-based weights with every method that takes per-model weights (#19): the weights computed from examples
are the ones the method merges with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cocktail_bot.engine import merge
from cocktail_bot.methods import METHODS
from cocktail_bot.pipeline import run_manifest

MANIFEST = """\
version: 1
name: examples-{method}
type: decoder
models: [./models/llama-0, ./models/llama-1, ./models/llama-2]
base: ./models/llama-0
weights: {{examples: examples/train.jsonl, temperature: 2.0}}
merge: {{method: {method}, parameters: {parameters}}}
"""

WEIGHTED = {
    "breadcrumbs": {"density": 0.5},
    "breadcrumbs_ties": {"density": 0.5},
    "della": {"density": 0.5},
    "della_linear": {"density": 0.6},
    "nuslerp": {},
    "multislerp": {},
}


def test_every_new_method_that_takes_weights_is_listed():
    new = {"breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "model_stock", "nuslerp", "multislerp"}
    assert {name for name in new | {"karcher", "sce"} if METHODS[name].uses_weights} == set(WEIGHTED)


@pytest.mark.parametrize("method", list(WEIGHTED))
def test_example_weights_drive_the_method(method: str, tmp_path: Path, tiny_llamas: list[Path]) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    for index, folder in enumerate(tiny_llamas):
        shutil.copytree(folder, repo / "models" / f"llama-{index}")
    (repo / "examples").mkdir()
    records = [{"input": f"what is the {w}?", "output": f"the {w} is good"} for w in ("cat", "dog", "tree")]
    (repo / "examples" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    parameters = json.dumps(WEIGHTED[method])
    (repo / "cocktail.yml").write_text(MANIFEST.format(method=method, parameters=parameters))
    report = run_manifest(repo / "cocktail.yml", tmp_path / "out", progress=False)
    (step,) = report.steps
    assert step.weights_mode == "examples" and step.method == method and len(step.weights) == 3
    assert len(set(step.weights)) == 3 and sum(step.weights) == pytest.approx(1.0)  # computed, not uniform
    models = [repo / "models" / f"llama-{index}" for index in range(3)]
    merge(
        models,
        step.weights,
        tmp_path / "direct",
        model_type="decoder",
        base=models[0],
        method=method,
        method_params=WEIGHTED[method],
        progress=False,
    )
    built, direct = (
        load_file(tmp_path / "out" / "model.safetensors"),
        load_file(tmp_path / "direct" / "model.safetensors"),
    )
    assert all(torch.equal(built[name], direct[name]) for name in direct)
    # and the weights matter: others give another model
    merge(
        models,
        [step.weights[0], step.weights[2], step.weights[1]],
        tmp_path / "swapped",
        model_type="decoder",
        base=models[0],
        method=method,
        method_params=WEIGHTED[method],
        progress=False,
    )
    swapped = load_file(tmp_path / "swapped" / "model.safetensors")
    assert any(not torch.equal(swapped[name], direct[name]) for name in direct)
