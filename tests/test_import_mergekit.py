"""`cocktail import-mergekit`: real-world mergekit configs (from mergekit's examples and README) translated, and
the manifests built against mergekit's own merge of the same config on tiny Llamas."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cocktail_bot.cli import main
from cocktail_bot.errors import CocktailError
from cocktail_bot.mergekit_import import translate
from cocktail_bot.methods import METHODS


def translated(config: str, folder: Path | None = None) -> dict:
    text = translate(
        textwrap.dedent(config), display="mergekit.yml", name="demo", model_type="decoder", folder=folder
    )
    return yaml.safe_load(text)


def refused(config: str) -> list[str]:
    with pytest.raises(CocktailError) as caught:
        translate(textwrap.dedent(config), display="mergekit.yml", name="demo", model_type="decoder")
    first, *lines = str(caught.value).splitlines()
    assert first.startswith("mergekit.yml cannot be translated")
    return [line.removeprefix("mergekit.yml:") for line in lines]


# ---- translation -------------------------------------------------------------------------------------------

# mergekit's README (dare_ties): per-model density and weight, int8_mask, bfloat16
DARE_TIES = """\
models:
  - model: mistralai/Mistral-7B-v0.1
    # no parameters necessary for base model
  - model: samir-fama/SamirGPT-v1
    parameters:
      density: 0.53
      weight: 0.4
  - model: abacusai/Slerp-CM-mist-dpo
    parameters:
      density: 0.53
      weight: 0.3
merge_method: dare_ties
base_model: mistralai/Mistral-7B-v0.1
parameters:
  int8_mask: true
dtype: bfloat16
"""


def test_dare_ties_from_the_readme():
    assert translated(DARE_TIES) == {
        "version": 1,
        "name": "demo",
        "type": "decoder",
        "base": "mistralai/Mistral-7B-v0.1",
        "models": [
            {"id": "samir-fama/SamirGPT-v1", "weight": 0.4, "parameters": {"density": 0.53}},
            {"id": "abacusai/Slerp-CM-mist-dpo", "weight": 0.3, "parameters": {"density": 0.53}},
        ],
        "merge": {"method": "dare_ties", "dtype": "bfloat16"},
    }
    text = translate(DARE_TIES, display="mergekit.yml", name="demo", model_type="decoder")
    assert "# note: dropped int8_mask" in text and "# note: mergekit computes in dtype bfloat16" in text


def test_linear_weights_are_divided_as_mergekit_normalizes_them():
    config = """\
    models:
      - model: psmathur/orca_mini_v3_13b
        parameters: {weight: 1.0}
      - model: WizardLM/WizardLM-13B-V1.2
        parameters: {weight: 0.3}
      - model: garage-bAInd/Platypus2-13B
        parameters: {weight: 0.5}
    merge_method: linear
    dtype: float16
    """
    models = translated(config)["models"]
    assert [m["weight"] for m in models] == pytest.approx([1 / 1.8, 0.3 / 1.8, 0.5 / 1.8])
    normalize_false = textwrap.dedent(config).replace("dtype:", "parameters: {normalize: false}\ndtype:")
    assert refused(normalize_false) == [
        "9: parameters.normalize: linear with normalize: false and weights summing to 1.8 is no weighted average: "
        "cocktail-bot's linear takes weights that sum to 1"
    ]


@pytest.mark.parametrize(
    "config, expected",
    [
        (
            "slices:\n  - sources:\n      - model: a/b\n        layer_range: [0, 24]\n  - sources:\n"
            "      - model: c/d\n        layer_range: [8, 32]\nmerge_method: passthrough\n",
            [
                "1: slices: cocktail-bot merges whole models of one architecture, not layer ranges or modules: only "
                "one slice spanning every layer of each model (that merge) is translated",
                "8: merge_method: passthrough stacks layers of several models (a frankenmerge): cocktail-bot merges "
                "models of one architecture tensor by tensor",
            ],
        ),
        (
            "models: [{model: a/b}, {model: c/d}]\nmerge_method: slerp\nbase_model: a/b\nparameters: {t: 0.5}\n"
            "tokenizer_source: union\n",
            [
                "5: tokenizer_source: union merges the models' tokenizers: cocktail-bot takes the base's tokenizer "
                "(remove the key, or use 'base')"
            ],
        ),
        (
            "models: [{model: a/b}, {model: c/d}]\nmerge_method: slerp\nbase_model: a/b\nparameters: {t: 0.5}\n"
            "tokenizer: {source: base, tokens: {<|im_start|>: {source: c/d}}}\n",
            [
                "5: tokenizer.tokens: cocktail-bot takes the base's tokenizer as it is (no merged vocabulary, no "
                "added tokens, no padding); remove it"
            ],
        ),
        (
            "models: [{model: a/b+c/lora, parameters: {weight: 1}}]\nmerge_method: linear\n",
            [
                "1: models[0].model: 'a/b+c/lora' names a LoRA adapter ('model+lora'): cocktail-bot does not merge "
                "adapters; merge the adapter into its model first (peft's merge_and_unload) and name that model"
            ],
        ),
        (
            "models: [{model: a/b, parameters: {weight: 1}}]\nmerge_method: nearswap\n",
            ["2: merge_method: merge method 'nearswap' is not one of cocktail-bot's ("],
        ),
        (
            "models:\n  - model: a/b\n  - model: c/d\n    parameters:\n      weight: 0.5\n      densty: 0.5\n"
            "merge_method: ties\nbase_model: a/b\n",
            [
                "6: models[1].parameters.densty: unknown parameter 'densty' for merge method 'ties' per model; did "
                "you mean 'density'? (valid: density)"
            ],
        ),
        (
            "models:\n  - model: a/b\n  - model: c/d\nmerge_method: ties\nbase_model: a/b\n",
            ["3: models[1]: no weight: mergekit needs one per model (parameters: {weight: ...})"],
        ),
        (
            "models:\n  - model: a/b\n    parameters: {weight: 0.5}\n  - model: c/d\n    parameters: {weight: [0, 1]}\n"
            "merge_method: linear\n",
            [
                "5: models[1].parameters.weight: cocktail-bot's linear takes one weight per model (they sum to 1): "
                "per-layer or filtered weights are for the methods with a base"
            ],
        ),
        (
            "models:\n  - model: a/b\n  - model: c/d\n    parameters:\n      weight:\n        - filter: mlp\n"
            "          value: 0.5\nmerge_method: ties\nbase_model: a/b\n",
            [
                "6: models[1].parameters.weight: weight: a filtered weight needs an entry without a filter, for the "
                "tensors no filter matches: add e.g. {value: 0.5}"
            ],
        ),
        (
            "models:\n  - model: a/b\nmerge_method: !python/name:os.system ties\n",
            ["3: (yaml): could not determine a constructor for the tag '!python/name:os.system'"],
        ),
    ],
    ids=[
        "slices-passthrough",
        "tokenizer-union",
        "added-tokens",
        "lora",
        "unknown-method",
        "typo",
        "no-weight",
        "per-layer-linear-weight",
        "weight-without-fallback",
        "yaml-tag",
    ],
)
def test_what_cocktail_bot_does_not_do_is_refused_by_name_with_its_line(config, expected):
    found = refused(config)
    assert len(found) == len(expected)
    for line, start in zip(found, expected, strict=True):
        assert line.startswith(start), line


def test_the_cli_prints_the_manifest_and_refuses_with_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dare.yml").write_text(DARE_TIES)
    assert main(["import-mergekit", "dare.yml", "--name", "my-merge"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["name"] == "my-merge" and out.startswith("# translated from dare.yml")
    (tmp_path / "bad.yml").write_text("models: [{model: a/b}]\nmerge_method: passthrough\n")
    assert main(["import-mergekit", "bad.yml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: bad.yml cannot be translated, 1 problem:\nbad.yml:2: merge_method: passthrough"
    )
    assert main(["import-mergekit", "missing.yml"]) == 2
    assert (
        capsys.readouterr().err == "error: missing.yml not found: give the path of a mergekit config (YAML)\n"
    )


# ---- the translated manifest builds mergekit's model ------------------------------------------------------


# mergekit's examples/ties.yml (also its README's TIES example): a density gradient, a weight gradient, filtered
# weights
TIES = """\
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: WizardLM/WizardMath-13B-V1.0
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
"""


def test_ties_from_the_examples_keeps_its_gradients_and_filters():
    manifest = translated(TIES)
    assert manifest["base"] == "TheBloke/Llama-2-13B-fp16"
    assert manifest["models"] == [
        {"id": "psmathur/orca_mini_v3_13b", "weight": 1.0, "parameters": {"density": [1, 0.7, 0.1]}},
        {"id": "garage-bAInd/Platypus2-13B", "weight": [0, 0.3, 0.7, 1], "parameters": {"density": 0.5}},
        {
            "id": "WizardLM/WizardMath-13B-V1.0",
            "weight": [{"filter": "mlp", "value": 0.5}, {"value": 0}],
            "parameters": {"density": 0.33},
        },
    ]
    assert manifest["merge"] == {"method": "ties", "parameters": {"normalize": True}, "dtype": "float16"}


def test_one_slice_must_span_every_layer(deep_llamas, tmp_path):
    for index, folder in enumerate(deep_llamas[:2]):
        shutil.copytree(folder, tmp_path / f"m{index}")
    config = textwrap.dedent(
        """\
        slices:
          - sources:
              - model: ./m0
                layer_range: [0, 5]
              - model: ./m1
                layer_range: [0, 3]
        merge_method: slerp
        base_model: ./m0
        parameters: {t: 0.5}
        """
    )
    with pytest.raises(CocktailError) as caught:
        translate(config, display="mergekit.yml", name="demo", model_type="decoder", folder=tmp_path)
    assert str(caught.value).splitlines()[1:] == [
        "mergekit.yml:3: slices[0].sources: cocktail-bot merges whole models: one slice is translated when every "
        "source's layer_range is [0, N] with the same N (every layer), got [[0, 5], [0, 3]]"
    ]
    with pytest.raises(CocktailError) as caught:
        translate(
            config.replace("[0, 5]", "[0, 3]"),
            display="mergekit.yml",
            name="demo",
            model_type="decoder",
            folder=tmp_path,
        )
    assert str(caught.value).splitlines()[1:] == [
        f"mergekit.yml:{line}: slices[0].sources[{index}].layer_range: layer_range [0, 3] is not every layer of "
        "this model (5 layers): cocktail-bot merges whole models, not layer ranges"
        for index, line in ((0, 4), (1, 6))
    ]


# Real-world configs, models renamed to the three tiny Llamas (m0 is the base), dtype float32 so that both tools
# compute in the same precision.
BUILDS = {
    "ties-example": TIES.replace("psmathur/orca_mini_v3_13b", "./models/m1")
    .replace("garage-bAInd/Platypus2-13B", "./models/m2")
    .replace("WizardLM/WizardMath-13B-V1.0", "./models/m3")
    .replace("TheBloke/Llama-2-13B-fp16", "./models/m0")
    .replace("float16", "float32"),
    "ties": """\
        models:
          - model: ./models/m1
            parameters:
              density: [1, 0.7, 0.1] # density gradient
              weight: 1.0
          - model: ./models/m2
            parameters:
              density: 0.5
              weight: 0.6
        merge_method: ties
        base_model: ./models/m0
        parameters:
          normalize: true
          int8_mask: true
        dtype: float32
        """,
    "dare_ties": DARE_TIES.replace("mistralai/Mistral-7B-v0.1", "./models/m0")
    .replace("samir-fama/SamirGPT-v1", "./models/m1")
    .replace("abacusai/Slerp-CM-mist-dpo", "./models/m2")
    .replace("0.53", "1.0")  # DARE's masks are random: at density 1 both tools keep every entry
    .replace("bfloat16", "float32"),
    "slerp": """\
        models:
          - model: ./models/m0
          - model: ./models/m1
        merge_method: slerp
        base_model: ./models/m0
        parameters:
          t:
            - filter: self_attn
              value: [0, 0.5, 0.3, 0.7, 1]
            - filter: mlp
              value: [1, 0.5, 0.7, 0.3, 0]
            - value: 0.5 # fallback for rest of tensors
        dtype: float32
        tokenizer_source: base
        """,
    # mergekit's examples/gradient-slerp.yml as written: one slice of every layer
    "slerp-slices": """\
        slices:
          - sources:
              - model: ./models/m0
                layer_range: [0, 5]
              - model: ./models/m1
                layer_range: [0, 5]
        merge_method: slerp
        base_model: ./models/m0
        parameters:
          t:
            - filter: self_attn
              value: [0, 0.5, 0.3, 0.7, 1]
            - filter: mlp
              value: [1, 0.5, 0.7, 0.3, 0]
            - value: 0.5 # fallback for rest of tensors
        dtype: float32
        """,
    "linear": """\
        models:
          - model: ./models/m0
            parameters: {weight: 1.0}
          - model: ./models/m1
            parameters: {weight: 0.3}
          - model: ./models/m2
            parameters: {weight: 0.5}
        merge_method: linear
        dtype: float32
        """,
    "model_stock": """\
        models:
          - model: ./models/m1
          - model: ./models/m2
        merge_method: model_stock
        base_model: ./models/m0
        dtype: float32
        """,
    "della": """\
        models:
          - model: ./models/m1
            parameters:
              weight: 0.6
              density: 1.0 # DELLA drops at random: at density 1 both tools keep every entry
              epsilon: 0.2
          - model: ./models/m2
            parameters:
              weight: 0.4
              density: 1.0
              epsilon: 0.1
        merge_method: della
        base_model: ./models/m0
        parameters:
          lambda: 1.1
        dtype: float32
        """,
}


@pytest.mark.parametrize("name", list(BUILDS))
def test_translated_configs_build_mergekits_model(name, deep_llamas, tmp_path, monkeypatch):
    pytest.importorskip("mergekit")
    method = yaml.safe_load(textwrap.dedent(BUILDS[name]))["merge_method"]
    if method not in METHODS:
        pytest.skip(f"{method} is not a cocktail-bot method yet (#19 part B)")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from cocktail_bot.pipeline import run_manifest

    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    for index, folder in enumerate(deep_llamas):
        shutil.copytree(folder, repo / "models" / f"m{index}")
    monkeypatch.chdir(repo)
    config = textwrap.dedent(BUILDS[name])
    manifest = translate(config, display="mergekit.yml", name=name, model_type="decoder")
    (repo / "cocktail.yml").write_text(manifest)
    run_manifest(repo / "cocktail.yml", tmp_path / "ours", progress=False)
    configuration = MergeConfiguration.model_validate(yaml.safe_load(config))
    run_merge(configuration, str(tmp_path / "mergekit"), MergeOptions(quiet=True, random_seed=0))
    ours, theirs = (load_file(tmp_path / out / "model.safetensors") for out in ("ours", "mergekit"))
    assert sorted(ours) == sorted(theirs)
    for tensor in ours:
        torch.testing.assert_close(ours[tensor], theirs[tensor], rtol=1e-6, atol=1e-6, msg=tensor)
