"""cocktail.yml: every kind of problem, with its exact message and line, reported all at once."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from cocktail_bot.cli import main
from cocktail_bot.errors import CocktailError
from cocktail_bot.manifest import MAX_MANIFEST_BYTES, load_manifest
from cocktail_bot.manifest_schema import json_schema

HEADER = "version: 1\nname: demo\ntype: decoder\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git-like repository: `.git` marks its top level; a local model folder and example files inside."""
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    for model in ("a", "b"):
        (root / "models" / model).mkdir(parents=True)
        (root / "models" / model / "model.safetensors").write_bytes(b"")  # only its presence is checked
    (root / "models" / "no-weights").mkdir()
    (root / "examples").mkdir()
    (root / "examples" / "train.jsonl").write_text('{"input": "a", "output": "b"}\n')
    (root / "card.md.j2").write_text("# {{ report.name }}\n")
    return root


def problems(repo: Path, text: str, name: str = "cocktail.yml") -> list[str]:
    path = repo / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    with pytest.raises(CocktailError) as caught:
        load_manifest(path)
    assert caught.value.exit_code == 2
    first, *lines = str(caught.value).splitlines()
    assert first == f"{path} has {len(lines)} problem{'s' if len(lines) > 1 else ''}:"
    return [line.removeprefix(f"{path}:") for line in lines]


BAD = [
    pytest.param(
        HEADER + "modles: [org/a]\nmodels: [org/a]\nweights: uniform\n",
        ["4: modles: unknown key; did you mean 'models'?"],
        id="unknown-key-hint",
    ),
    pytest.param(
        HEADER + "modles:\n  - org/a\nmodels: [org/a]\nweights: uniform\nmerge:\n  methd: linear\n",
        [
            "4: modles: unknown key; did you mean 'models'?",
            "9: merge.methd: unknown key; did you mean 'method'?",
        ],
        id="unknown-key-before-a-block-value",
    ),
    pytest.param(
        "version: 2\nname: demo\ntype: decodr\nmodels: [org/a]\nweights: uniform\n",
        [
            "1: version: 2 is not allowed; expected 1",
            "3: type: 'decodr' is not allowed; did you mean 'decoder'?",
        ],
        id="literals",
    ),
    pytest.param(
        "version: 1\ntype: decoder\nmodels: [org/a]\nweights: uniform\n",
        ["1: name: required key is missing"],
        id="missing-key",
    ),
    pytest.param(
        HEADER + "models:\n  - {id: org/a, weight: 0.5}\n  - {id: org/b, wieght: 0.5}\n",
        ["6: models[1].wieght: unknown key; did you mean 'weight'?"],
        id="unknown-key-in-model",
    ),
    pytest.param(
        HEADER + "models: ['bad id!', 3]\nweights: uniform\n",
        [
            "4: models[0]: 'bad id!' is not a model reference: use a Hub id 'org/name', 'org/name@revision', "
            "or a local folder starting with './'",
            "4: models[1]: expected a model reference: 'org/name', 'org/name@rev', './local/path', "
            "{id: ..., weight: ...} or {step: ..., weight: ...} (got 3)",
        ],
        id="bad-references",
    ),
    pytest.param(
        HEADER + "models:\n  - {id: org/a, weight: 0.5}\n  - {id: org/b, weight: 0.6}\n",
        [
            "4: models: linear merge weights must sum to 1 (within 0.001, then they are divided by their sum), "
            "but [0.5, 0.6] sums to 1.1"
        ],
        id="weights-sum",
    ),
    pytest.param(
        HEADER + "models:\n  - {id: org/a, weight: 0.5}\n  - org/b\n",
        ["6: models[1]: missing weight: give every model of the step a weight (or none, with 'weights:')"],
        id="weight-missing",
    ),
    pytest.param(
        HEADER + "models: [org/a, org/b]\n",
        [
            "4: models: no weights: give every model a weight, or set 'weights: uniform' or "
            "'weights: {examples: FILE}'"
        ],
        id="no-weights",
    ),
    pytest.param(
        HEADER + "models: [{id: org/a, weight: 1.0}]\nweights: uniform\n",
        [
            "5: weights: per-model weights and 'weights:' cannot be combined; remove the models' weights or "
            "'weights:'"
        ],
        id="mixed-weights",
    ),
    pytest.param(
        HEADER + "models: [org/a, org/b]\nweights: {examples: examples/missing.jsonl, temperature: 0}\n",
        ["5: weights.temperature: input should be greater than 0 (got 0)"],
        id="temperature",
    ),
    pytest.param(
        HEADER + "models: [org/a, org/b]\nweights: {examples: examples/missing.jsonl, dtype: int8}\n",
        ["5: weights.dtype: 'int8' is not allowed; expected one of auto, float32, bfloat16, float16"],
        id="weights-dtype",
    ),
    pytest.param(
        HEADER + "models: [org/a, org/b]\nweights: {examples: examples/missing.jsonl}\n",
        [
            "5: weights.examples: file 'examples/missing.jsonl' not found "
            "(looked at {root}/examples/missing.jsonl)"
        ],
        id="missing-examples",
    ),
    pytest.param(
        HEADER + "models: [org/a, ./models/zzz]\nweights: uniform\n",
        ["4: models[1]: model folder './models/zzz' not found (looked at {root}/models/zzz)"],
        id="missing-local-model",
    ),
    pytest.param(
        HEADER + "models: [org/a, ./models/no-weights]\nweights: uniform\n",
        [
            "4: models[1]: model folder './models/no-weights' has no model weights: expected "
            "model.safetensors or pytorch_model.bin (or their shards) in it"
        ],
        id="local-model-without-weights",
    ),
    pytest.param(
        HEADER + "models: [org/a, ../outside]\nweights: uniform\n",
        [
            "4: models[1]: '../outside' resolves to {parent}/outside, outside the repository {root}; "
            "keep manifest paths inside the repository"
        ],
        id="path-escapes",
    ),
    pytest.param(
        HEADER + "models: [models/a, {id: models/b}]\nweights: uniform\n",
        [
            "4: models[0]: 'models/a' is read as a Hub repo id, but {root}/models/a is a folder: write "
            "'./models/a' for the folder, or 'models/a@main' for the Hub repo",
            "4: models[1].id: 'models/b' is read as a Hub repo id, but {root}/models/b is a folder: write "
            "'./models/b' for the folder, or 'models/b@main' for the Hub repo",
        ],
        id="hub-id-naming-a-folder",
    ),
    pytest.param(
        HEADER + "models: [org/a, org/a]\nweights: uniform\n",
        ["4: models[1]: 'org/a' is listed twice in this step; list it once"],
        id="duplicate-model",
    ),
    pytest.param(
        HEADER + "models: [org/a, org/b]\nweights: uniform\nmerge: {method: linaer}\n",
        ["6: merge.method: unknown merge method 'linaer'; did you mean 'linear'?"],
        id="unknown-method",
    ),
    pytest.param(
        HEADER
        + "models: [org/a, org/b]\nweights: uniform\nmerge: {method: ties, parameters: {density: 2}}\n",
        [
            "6: merge.parameters.density: merge method 'ties': parameter 'density' must be a number in (0, 1], got 2"
        ],
        id="method-parameters",
    ),
    pytest.param(
        HEADER
        + "models: [org/a, org/b]\nbase: org/a\nweights: uniform\nmerge: {method: dare_ties, parameters: {seed: [1, 2]}}\n",
        [
            "7: merge.parameters.seed: merge method 'dare_ties': parameter 'seed' takes one value, got [1, 2]; "
            "per-layer lists and filters are not supported"
        ],
        id="list-for-a-one-value-parameter",
    ),
    pytest.param(
        HEADER + "models: [org/a, org/b]\nbase: org/a\nweights: {examples: examples/train.jsonl}\n"
        "merge: {method: slerp, parameters: {t: 0.5}}\n",
        [
            "6: weights: merge method 'slerp' does not use per-model weights (its parameters set the mix), "
            "so there is nothing to compute from examples: remove 'weights:'"
        ],
        id="examples-for-a-method-without-weights",
    ),
    pytest.param(
        HEADER + "models: [org/a, org/b]\nweights: uniform\nmerge: {method: task_arithmetic}\n",
        [
            "6: merge.method: merge method 'task_arithmetic' needs a base model, "
            "the one its task vectors are "
            "measured from: name it with `base`"
        ],
        id="method-needs-base",
    ),
    pytest.param(
        HEADER + "models: [org/a]\nweights: uniform\nmerge: {dtype: fp16, shard_size: 5XB, device: tpu}\n",
        [
            "6: merge.dtype: 'fp16' is not allowed; expected one of float32, float16, bfloat16",
            "6: merge.shard_size: '5XB' is not a size: write a number of bytes or e.g. '500MB', '5GB'",
            "6: merge.device: 'tpu' is not a device: use auto, cpu, mps, cuda or cuda:N",
        ],
        id="merge-options",
    ),
    pytest.param(
        HEADER + "models: [org/a, org/b]\nweights: uniform\nmerge: {method: linaer, dtype: fp16}\n",
        [
            "6: merge.dtype: 'fp16' is not allowed; expected one of float32, float16, bfloat16",
            "6: merge.method: unknown merge method 'linaer'; did you mean 'linear'?",
        ],
        id="method-checked-beside-a-bad-option",
    ),
    pytest.param(
        HEADER + "models: [org/a]\nweights: uniform\noutput: {repo: ./x, card: ../../card.j2}\n",
        [
            "6: output.repo: './x' is a local path: output.repo is the Hub repo 'org/name' to publish to",
            "6: output.card: '../../card.j2' resolves to {grandparent}/card.j2, "
            "outside the repository {root}; "
            "keep manifest paths inside the repository",
        ],
        id="output",
    ),
    pytest.param(
        HEADER + "models: [org/a]\nweights: uniform\noutput: {repo: my org/x}\n",
        [
            "6: output.repo: 'my org/x' is not a Hub repo id: output.repo is the Hub repo 'org/name' to publish to"
        ],
        id="output-repo-not-an-id",
    ),
    pytest.param(
        HEADER + "models:\n  - {id: org/a, weight: true}\n  - {id: org/b, weight: '0.5'}\n",
        [
            "5: models[0].weight: expected a number, a per-layer list [0.2, 0.8] or filtered values, got True",
            "6: models[1].weight: expected a number, a per-layer list [0.2, 0.8] or filtered values, got '0.5'",
        ],
        id="weights-are-numbers",
    ),
    pytest.param(
        HEADER + "models: [org/a]\nweights: uniform\neval:\n  - {name: x, examples: examples/train.jsonl}\n"
        "  - {name: x, examples: nope.json}\n",
        [
            "8: eval[1].name: duplicate eval set name 'x'; rename one",
            "8: eval[1].examples: file 'nope.json' not found (looked at {root}/nope.json)",
        ],
        id="eval",
    ),
    pytest.param(
        HEADER + "models: [org/a]\nsteps: [{name: s, models: [org/a], weights: uniform}]\n",
        ["4: models: not allowed beside 'steps:'; move it into a step"],
        id="steps-and-models",
    ),
    pytest.param(
        HEADER,
        ["1: (manifest): no models: give 'models:' (one merge) or 'steps:' (a multi-stage recipe)"],
        id="no-models",
    ),
    pytest.param(
        HEADER
        + """\
        steps:
          - name: helpers
            models: [org/a, {step: final, weight: 1}]
            weights: uniform
          - name: helpers
            models: [{step: helpr, weight: 1.0}]
          - name: final
            models: [{step: helpers, weight: 1.0}]
        """.replace("        ", ""),
        [
            "6: steps[0].models[1].step: step 'final' runs later (steps run in order); "
            "move it before this step",
            "7: steps[0].weights: per-model weights and 'weights:' cannot be combined; "
            "remove the models' weights or "
            "'weights:'",
            "8: steps[1].name: duplicate step name 'helpers' (first on line 5); rename one",
            "9: steps[1].models[0].step: unknown step 'helpr'; did you mean 'helpers'?",
        ],
        id="steps",
    ),
    pytest.param(
        HEADER + "models: [org/a]\nweights: uniform\nweights: uniform\n",
        ["6: weights: duplicate key (first on line 5); keep one"],
        id="duplicate-yaml-key",
    ),
    pytest.param(
        HEADER + "models: [org/a\n",
        ["5: (yaml): expected ',' or ']', but got '<stream end>'; fix the YAML syntax"],
        id="yaml-syntax",
    ),
    pytest.param(
        HEADER + "models: [org/a]\nweights: !custom uniform\n",
        [
            "5: (yaml): could not determine a constructor for the tag '!custom'; write plain YAML values, "
            "without tags"
        ],
        id="yaml-tag",
    ),
    pytest.param("", ["1: (manifest): the manifest is empty: start with 'version: 1'"], id="empty"),
    pytest.param(
        "- a\n- b\n",
        ["1: (manifest): the manifest must be a mapping of keys (version, name, type, ...)"],
        id="not-a-mapping",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_bad_manifest_reports_every_problem_with_its_line(repo: Path, text: str, expected: list[str]) -> None:
    values = {"{root}": repo, "{parent}": repo.parent, "{grandparent}": repo.parent.parent}
    for placeholder, value in values.items():
        expected = [line.replace(placeholder, str(value)) for line in expected]
    assert problems(repo, text) == expected


def test_problems_from_every_part_are_reported_together(repo: Path) -> None:
    found = problems(
        repo,
        """\
        version: 1
        name: demo
        typ: decoder
        models: [org/a, org/b]
        weights: {examples: examples/none.jsonl}
        output: {card: /etc/passwd}
        """,
    )
    assert [line.split(":")[0] for line in found] == ["1", "3", "5", "6"]
    assert found[0] == "1: type: required key is missing"
    assert found[1] == "3: typ: unknown key; did you mean 'type'?"


def test_alias_bomb_is_refused_before_expansion(repo: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)
    ]
    found = problems(repo, "\n".join(lines) + "\n")  # 10 * 6**8 = 16.8 million values once expanded
    assert len(found) == 1
    line, message = found[0].split(": ", 1)
    assert 1 <= int(line) <= len(lines)
    assert message == "(yaml): more than 20000 values after expanding aliases; simplify the manifest"


def test_file_level_errors(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(CocktailError, match=r"nope.yml not found: give the path of a cocktail.yml manifest"):
        load_manifest(tmp_path / "nope.yml")
    big = repo / "big.yml"
    big.write_text("# " + "x" * MAX_MANIFEST_BYTES)
    with pytest.raises(CocktailError, match=rf"is {MAX_MANIFEST_BYTES + 2} bytes; a manifest may be at most"):
        load_manifest(big)
    binary = repo / "bin.yml"
    binary.write_bytes(b"version: 1\nname: \xff\n")
    with pytest.raises(CocktailError, match=r"not UTF-8 text \(byte 17\); save the manifest as UTF-8"):
        load_manifest(binary)


def test_symlink_escaping_the_repository_is_refused(repo: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"input": "a", "output": "b"}\n')
    (repo / "examples" / "link.jsonl").symlink_to(secret)
    found = problems(repo, HEADER + "models: [org/a, org/b]\nweights: {examples: examples/link.jsonl}\n")
    assert found == [
        f"5: weights.examples: 'examples/link.jsonl' resolves to {secret}, outside the repository "
        f"{repo}; keep manifest paths inside the repository"
    ]


def test_a_card_template_with_a_syntax_error_fails_validation(repo: Path) -> None:
    """Found by `cocktail validate`, not after a run has merged and evaluated the models."""
    (repo / "card.md.j2").write_text("# {{ report.name }}\n{% for source in %}\n")
    found = problems(repo, HEADER + "models: [org/a, org/b]\nweights: uniform\noutput: {card: card.md.j2}\n")
    assert found == [
        f"6: output.card: {repo}/card.md.j2:2: template syntax error: "
        "Expected an expression, got 'end of statement block'"
    ]


def test_valid_single_step_manifest(repo: Path) -> None:
    path = repo / "recipes" / "cocktail.yml"
    path.parent.mkdir()
    path.write_text(
        HEADER
        + textwrap.dedent("""\
        models:
          - {id: meta-llama/Llama-2-7b-chat-hf, revision: main, weight: 0.7}
          - {id: Shitao/llama2-ag-news, weight: 0.3}
        merge: {method: linear, dtype: bfloat16, shard_size: 5GB, max_memory: auto}
        base: meta-llama/Llama-2-7b-chat-hf
        eval:
          - {name: ag_news, examples: ../examples/train.jsonl}
        output: {repo: my-org/demo, private: true, license: inherit, card: ../card.md.j2}
        """)
    )
    manifest = load_manifest(path)
    assert manifest.root == repo.resolve()
    assert manifest.relative_path == "recipes/cocktail.yml"
    [step] = manifest.steps
    assert step.name == "merge" and step.weights_mode == "explicit"
    assert [(s.label, s.kind, s.ref, s.revision, s.weight) for s in step.models] == [
        ("meta-llama/Llama-2-7b-chat-hf@main", "hub", "meta-llama/Llama-2-7b-chat-hf", "main", 0.7),
        ("Shitao/llama2-ag-news", "hub", "Shitao/llama2-ag-news", None, 0.3),
    ]
    assert step.base is not None and step.base.label == "meta-llama/Llama-2-7b-chat-hf"
    assert step.merge.dtype == "bfloat16"
    assert manifest.eval_sets == {"ag_news": repo.resolve() / "examples" / "train.jsonl"}
    assert manifest.card_template == repo.resolve() / "card.md.j2"
    assert manifest.output.repo == "my-org/demo"


def test_valid_two_step_manifest(repo: Path) -> None:
    path = repo / "cocktail.yml"
    path.write_text(
        HEADER
        + textwrap.dedent("""\
        steps:
          - name: helpers
            models: [org/base@v1.0, ./models/a, ./models/b]
            weights: {examples: examples/train.jsonl, temperature: 2, dtype: bfloat16}
          - name: final
            models: [{step: helpers, weight: 0.5}, {id: org/fine-tune, weight: 0.5}]
            weights: null
        """)
    )
    manifest = load_manifest(path)
    helpers, final = manifest.steps
    assert helpers.weights_mode == "examples" and helpers.example_weights.temperature == 2
    assert helpers.example_weights.dtype == "bfloat16"
    assert helpers.examples_path == repo.resolve() / "examples" / "train.jsonl"
    assert [s.kind for s in helpers.models] == ["hub", "local", "local"]
    assert helpers.models[1].ref == str(repo.resolve() / "models" / "a")
    assert [s.label for s in final.models] == ["step:helpers", "org/fine-tune"]
    assert final.explicit_weights == [0.5, 0.5]
    assert [s.label for s in manifest.external_sources()] == [
        "org/base@v1.0",
        "./models/a",
        "./models/b",
        "org/fine-tune",
    ]


def test_json_schema_accepts_valid_and_rejects_invalid_manifests(repo: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = yaml.safe_load(
        HEADER + "models: [org/a, {id: ./models/a, weight: 0.5}, {step: s, weight: 1}]\n"
        "weights: {examples: x.jsonl}\nmerge: {dtype: bfloat16}\n"
    )
    assert list(validator.iter_errors(good)) == []
    steps = yaml.safe_load(HEADER + "steps: [{name: a, models: [org/a], weights: uniform}]\n")
    assert list(validator.iter_errors(steps)) == []
    for bad in (
        {**good, "modles": []},
        {**good, "type": "decodr"},
        {**good, "steps": steps["steps"]},
        {**good, "merge": {"dtype": "fp16"}},
    ):
        assert list(validator.iter_errors(bad)), bad


def test_cli_validate_and_schema(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = repo / "good.yml"
    good.write_text(HEADER + "models: [org/a, ./models/a]\nweights: uniform\n")
    bad = repo / "bad.yml"
    bad.write_text(HEADER + "models: [org/a]\nweights: unifrom\n")
    assert main(["validate", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok (1 step, 2 sources)\n"
    assert main(["validate", str(good), str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"error: {bad} has 1 problem:\n{bad}:5: weights: 'unifrom' is not allowed; did you mean 'uniform'?\n"
    )
    assert "Traceback" not in captured.err
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "cocktail.yml" and schema["additionalProperties"] is False


def test_slerp_needs_no_per_model_weights(repo: Path) -> None:
    path = repo / "cocktail.yml"
    recipe = HEADER + "models: [org/a, org/b]\nbase: org/a\nmerge: {method: slerp, parameters: {t: 0.3}}\n"
    path.write_text(recipe)
    [step] = load_manifest(path).steps
    assert step.weights_mode == "unused" and step.explicit_weights == [0.5, 0.5]
    path.write_text(recipe.replace("merge:", "weights: uniform\nmerge:"))
    assert load_manifest(path).steps[0].weights_mode == "unused"
    path.write_text(recipe.replace("[org/a, org/b]", "[{id: org/a, weight: 0.2}, {id: org/b, weight: 0.8}]"))
    assert load_manifest(path).steps[0].weights_mode == "explicit"  # given, and ignored, as in mergekit


def test_model_folders_outside_the_repository_are_allowed_for_local_runs(repo: Path, caplog) -> None:
    """Where people keep checkpoints (`../checkpoints/x`, an absolute path): allowed when asked for (the CLI
    asks), with a note that the lock is not portable; files (examples, cards) and the default stay confined."""
    caplog.set_level("INFO")
    outside = repo.parent / "checkpoints"
    for name in ("x", "y"):
        (outside / name).mkdir(parents=True)
        (outside / name / "model.safetensors").write_bytes(b"")
    path = repo / "cocktail.yml"
    path.write_text(HEADER + f"models: [./models/a, ../checkpoints/x, {outside / 'y'}]\nweights: uniform\n")
    with pytest.raises(CocktailError, match="outside the repository"):
        load_manifest(path)
    manifest = load_manifest(path, outside_folders=True)
    [step] = manifest.steps
    assert [(s.label, s.kind, s.ref) for s in step.models] == [
        ("./models/a", "local", str(repo.resolve() / "models" / "a")),
        ("../checkpoints/x", "local", str(outside.resolve() / "x")),
        (str(outside / "y"), "local", str(outside.resolve() / "y")),
    ]
    assert [s.label for s in manifest.outside_sources()] == ["../checkpoints/x", str(outside / "y")]
    assert caplog.messages == [
        f"note: ../checkpoints/x, {outside / 'y'} are outside the repository {repo.resolve()}: the lock records "
        "them by path and file hashes, so it is not portable (a --locked rebuild needs the same files at the "
        "same path, and the Action cannot use it)"
    ]
    (repo.parent / "train.jsonl").write_text('{"input": "a", "output": "b"}\n')
    path.write_text(HEADER + "models: [./models/a, ../checkpoints/x]\nweights: {examples: ../train.jsonl}\n")
    with pytest.raises(CocktailError, match="'../train.jsonl' resolves to .*, outside the repository"):
        load_manifest(path, outside_folders=True)
