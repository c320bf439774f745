"""Per-model parameters, per-layer lists and filter-scoped values: their rules (mergekit 0.1.5's), the
manifest's forms with their lines, and the engine's merge against mergekit's on tiny Llamas."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cocktail_bot.engine import merge
from cocktail_bot.errors import CocktailError
from cocktail_bot.manifest import load_manifest
from cocktail_bot.methods import get_method
from cocktail_bot.parameter_values import SettingError, layer_positions

LAYERS = 5

# ---- the rules ---------------------------------------------------------------------------------------------


def test_layer_positions_are_mergekits_t():
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(LAYERS)]
    names += ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    positions = layer_positions(names)
    assert [positions[n] for n in names[:LAYERS]] == [0, 0.25, 0.5, 0.75, 1]
    assert positions["model.embed_tokens.weight"] == positions["lm_head.weight"] == 0
    assert layer_positions(["encoder.layer.0.attention.self.query.weight"]) == {
        "encoder.layer.0.attention.self.query.weight": 1.0  # one layer: t = 1, as in mergekit
    }


def values_at(method, tensor: str, position: float, merged=(0,)):
    return method.at(tensor, position, list(merged)).params


def test_per_layer_lists_interpolate_numbers_and_step_booleans():
    slerp = get_method("slerp", {"t": [0, 0.5, 0.3]})
    assert [values_at(slerp, "w", p)["t"] for p in (0, 0.25, 0.5, 0.75, 1)] == pytest.approx(
        [0, 0.25, 0.5, 0.4, 0.3]
    )
    ties = get_method("ties", {"density": 0.5, "normalize": [True, False]})
    assert [values_at(ties, "w", p)["normalize"] for p in (0, 0.49, 0.99, 1)] == [True, True, True, False]


def test_filters_take_the_first_match_then_the_models_then_the_merges_setting():
    ties = get_method(
        "ties",
        {"density": [{"filter": "mlp", "value": 0.3}, {"value": 0.9}]},
        [{"density": [{"filter": "self_attn", "value": 0.2}]}, None],
    )
    attention, mlp, norm = "layers.0.self_attn.q.weight", "layers.0.mlp.up.weight", "norm.weight"
    assert values_at(ties, attention, 0, [0, 1])["density"] == [0.2, 0.9]
    assert values_at(ties, mlp, 0, [0, 1])["density"] == [0.3, 0.3]
    assert values_at(ties, norm, 0, [0, 1])["density"] == [0.9, 0.9]
    assert values_at(ties, norm, 0, [1])["density"] == [0.9]  # the base left out: its settings unused


def test_decisions_for_every_tensor_see_every_value():
    assert get_method("ties", {"density": 1.0}).elementwise
    assert not get_method("ties", {"density": [1.0, 0.5]}).elementwise
    assert not get_method(
        "ties", {}, [None, {"density": [{"filter": "mlp", "value": 0.5}, {"value": 1}]}]
    ).elementwise


@pytest.mark.parametrize(
    "params, model_params, message, where",
    [
        ({"t": [0, 2]}, None, "parameter 't' must be a number in [0, 1], got 2", ("t", 1)),
        (
            {"t": [{"filter": "mlp", "value": 0.5}]},
            None,
            "has no value for the tensors no filter matches",
            ("t",),
        ),
        ({"t": []}, None, "an empty list gives no value", ("t",)),
        ({"t": [0.5, {"value": 1}]}, None, "not both", ("t",)),
        ({"t": {"filter": "mlp", "valeu": 1}}, None, "unknown key 'valeu'", ("t", "valeu")),
        ({"t": 0.5, "seed": 1}, None, "unknown parameter 'seed'", ("seed",)),
    ],
)
def test_bad_settings_say_what_and_where(params, model_params, message, where):
    with pytest.raises(SettingError) as caught:
        get_method("slerp", params, model_params)
    assert message in str(caught.value)
    assert caught.value.where == where


def test_per_model_parameters_are_only_the_methods_per_model_ones():
    with pytest.raises(SettingError, match="is one value for all models") as caught:
        get_method("ties", {}, [None, {"lambda": 0.5}])
    assert caught.value.where == ("models", 1, "parameters", "lambda")
    with pytest.raises(SettingError, match="did you mean 'density'"):
        get_method("ties", {}, [{"denisty": 0.5}])
    with pytest.raises(SettingError, match="takes one value"):
        get_method("dare_ties", {"seed": [1, 2]})


def test_model_parameters_need_one_set_per_model():
    method = get_method("ties", {}, [{"density": 0.5}, None])
    with pytest.raises(CocktailError, match="parameters for 2 models but 3 models"):
        method.check_recipe(["a", "b", "c"], [0.2, 0.3, 0.5], "a")


# ---- the manifest --------------------------------------------------------------------------------------------

HEADER = "version: 1\nname: demo\ntype: decoder\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    return root


def load(repo: Path, text: str):
    path = repo / "cocktail.yml"
    path.write_text(HEADER + textwrap.dedent(text))
    return load_manifest(path)


def problems(repo: Path, text: str) -> list[str]:
    with pytest.raises(CocktailError) as caught:
        load(repo, text)
    return [line.split(":", 1)[1] for line in str(caught.value).splitlines()[1:]]


def test_manifest_takes_per_model_per_layer_and_filtered_values(repo):
    manifest = load(
        repo,
        """\
        base: org/base
        models:
          - {id: org/a, weight: 0.6, parameters: {density: [0.2, 0.8]}}
          - id: org/b
            weight: 0.4
            parameters:
              density:
                - {filter: self_attn, value: 0.3}
                - value: 0.7
        merge:
          method: ties
          parameters: {lambda: [1, 0.5], normalize: true}
        """,
    )
    (step,) = manifest.steps
    assert step.model_params == [
        {"density": [0.2, 0.8]},
        {"density": [{"filter": "self_attn", "value": 0.3}, {"value": 0.7}]},
    ]
    assert step.merge.parameters == {"lambda": [1, 0.5], "normalize": True}


def test_manifest_problems_point_at_the_value(repo):
    found = problems(
        repo,
        """\
        base: org/base
        models:
          - {id: org/a, weight: 0.5}
          - id: org/b
            weight: 0.5
            parameters:
              lambda: 2
        merge: {method: ties}
        """,
    )
    assert found == [
        "10: models[1].parameters.lambda: parameter 'lambda' of merge method 'ties' is one value for all models: "
        "set it under the merge's parameters"
    ]
    found = problems(
        repo,
        """\
        base: org/base
        models: [{id: org/a, weight: 0.5}, {id: org/b, weight: 0.5}]
        merge:
          method: ties
          parameters:
            density:
              - 0.5
              - 1.5
        """,
    )
    assert found == [
        "11: merge.parameters.density[1]: merge method 'ties': parameter 'density' must be a number in (0, 1], "
        "got 1.5"
    ]


def test_weights_per_layer_and_filtered_are_checked_with_their_line(repo):
    found = problems(
        repo,
        """\
        base: org/base
        models:
          - {id: org/a, weight: [0.2, "x"]}
          - id: org/b
            weight:
              - {filter: mlp, value: 0.5}
          - {id: org/c, weight: true}
        merge: {method: ties}
        """,
    )
    assert found == [
        "6: models[0].weight[1]: weight: a weight is a finite number, got 'x'",
        "9: models[1].weight: weight: a filtered weight needs an entry without a filter, for the tensors no "
        "filter matches: add e.g. {value: 0.5}",
        "10: models[2].weight: expected a number, a per-layer list [0.2, 0.8] or filtered values, got True",
    ]
    found = problems(repo, "models:\n  - {id: org/a, weight: [0.2, 0.8]}\n  - {id: org/b, weight: 0.5}\n")
    assert found == [
        "4: models: linear merge weights are one number per model (they sum to 1): per-layer or filtered weights "
        "are for the methods with a base (task_arithmetic, ties, ...)"
    ]


# ---- the merge, against mergekit's ----------------------------------------------------------------------------


def run_mergekit(config: dict, output: Path) -> dict[str, torch.Tensor]:
    pytest.importorskip("mergekit")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = {"dtype": "float32", **config}
    run_merge(MergeConfiguration.model_validate(config), str(output), MergeOptions(quiet=True, random_seed=0))
    return load_file(output / "model.safetensors")


def assert_same(ours: Path, theirs: dict[str, torch.Tensor]) -> None:
    merged = load_file(ours / "model.safetensors")
    assert sorted(merged) == sorted(theirs)
    for name in merged:
        torch.testing.assert_close(merged[name], theirs[name], rtol=1e-6, atol=1e-6, msg=name)


SLERP_T = [
    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
    {"value": 0.5},
]


def test_slerp_with_filtered_gradients_matches_mergekit(deep_llamas, tmp_path):
    """mergekit's examples/gradient-slerp.yml: t per layer, one gradient for attention, another for the MLP."""
    base, other, *_ = deep_llamas
    merge(
        [base, other],
        [0.5, 0.5],
        tmp_path / "ours",
        model_type="decoder",
        base=base,
        method="slerp",
        method_params={"t": SLERP_T},
        progress=False,
    )
    theirs = run_mergekit(
        {
            "merge_method": "slerp",
            "base_model": str(base),
            "models": [{"model": str(base)}, {"model": str(other)}],
            "parameters": {"t": SLERP_T},
        },
        tmp_path / "mergekit",
    )
    assert_same(tmp_path / "ours", theirs)


def test_ties_with_per_model_and_per_layer_values_matches_mergekit(deep_llamas, tmp_path):
    base, first, second, _ = deep_llamas
    own = [{"density": [0.9, 0.2]}, {"density": [{"filter": "mlp", "value": 0.4}, {"value": 0.6}]}]
    shared = {"lambda": [1.2, 0.7, 1.0], "normalize": [True, False]}
    merge(
        [first, second],
        [0.7, 0.4],
        tmp_path / "ours",
        model_type="decoder",
        base=base,
        method="ties",
        method_params=shared,
        model_params=own,
        progress=False,
    )
    theirs = run_mergekit(
        {
            "merge_method": "ties",
            "base_model": str(base),
            "models": [
                {"model": str(base)},
                {"model": str(first), "parameters": {"weight": 0.7, **own[0]}},
                {"model": str(second), "parameters": {"weight": 0.4, **own[1]}},
            ],
            "parameters": shared,
        },
        tmp_path / "mergekit",
    )
    assert_same(tmp_path / "ours", theirs)


def test_a_merge_wide_per_model_value_applies_to_models_without_their_own(deep_llamas, tmp_path):
    base, first, second, _ = deep_llamas
    merge(
        [first, second],
        [0.5, 0.5],
        tmp_path / "ours",
        model_type="decoder",
        base=base,
        method="ties",
        method_params={"density": [0.3, 0.9]},
        model_params=[{"density": 0.5}, None],
        progress=False,
    )
    theirs = run_mergekit(
        {
            "merge_method": "ties",
            "base_model": str(base),
            "models": [
                {"model": str(first), "parameters": {"weight": 0.5, "density": 0.5}},
                {"model": str(second), "parameters": {"weight": 0.5}},
            ],
            "parameters": {"density": [0.3, 0.9]},
        },
        tmp_path / "mergekit",
    )
    assert_same(tmp_path / "ours", theirs)


def test_a_recipe_with_per_model_and_per_layer_values_runs_and_records_them(deep_llamas, tmp_path):
    from cocktail_bot.pipeline import run_manifest

    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    for index, folder in enumerate(deep_llamas[:3]):
        shutil.copytree(folder, repo / "models" / f"m{index}")
    manifest = repo / "cocktail.yml"
    manifest.write_text(
        HEADER
        + textwrap.dedent(
            """\
            base: ./models/m0
            models:
              - {id: ./models/m1, weight: 0.7, parameters: {density: [0.9, 0.2]}}
              - {id: ./models/m2, weight: 0.4}
            merge:
              method: ties
              parameters: {density: [{filter: mlp, value: 0.4}, {value: 0.6}], lambda: [1.2, 0.7]}
            """
        )
    )
    plan = subprocess.run(
        [sys.executable, "-m", "cocktail_bot", "plan", str(manifest)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        "     parameters density=[mlp: 0.4, 0.6], lambda=[1.2, 0.7]; ./models/m1: density=[0.9, 0.2]\n"
        in plan.stdout
    )
    run_manifest(manifest, tmp_path / "out", progress=False)
    lock = json.loads((repo / "cocktail.lock").read_text())
    (step,) = lock["steps"]
    assert step["model_params"] == [{"density": [0.9, 0.2]}, None]
    assert step["method_params"]["lambda"] == [1.2, 0.7]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "density=[mlp: 0.4, 0.6]" in card and "./models/m1: density=[0.9, 0.2]" in card
    theirs = run_mergekit(
        {
            "merge_method": "ties",
            "base_model": str(deep_llamas[0]),
            "models": [
                {"model": str(deep_llamas[1]), "parameters": {"weight": 0.7, "density": [0.9, 0.2]}},
                {"model": str(deep_llamas[2]), "parameters": {"weight": 0.4}},
            ],
            "parameters": {
                "density": [{"filter": "mlp", "value": 0.4}, {"value": 0.6}],
                "lambda": [1.2, 0.7],
            },
        },
        tmp_path / "mergekit",
    )
    assert_same(tmp_path / "out", theirs)
