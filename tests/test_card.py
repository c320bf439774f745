"""The model card and report.md rendered from a fixed Report.

Golden files live in tests/golden/; after an intended change to a template, regenerate them with
``UPDATE_GOLDEN=1 pytest tests/test_card.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from cocktail_bot.card import build_card_data, render_card, render_report_markdown, resolve_license
from cocktail_bot.errors import CocktailError
from cocktail_bot.methods import METHODS, paper_link
from cocktail_bot.report import (
    EvalResult,
    OutputReport,
    Provenance,
    PublishReport,
    Report,
    SourceReport,
    StepReport,
)
from cocktail_bot.templating import md_cell, md_code, md_fence

GOLDEN = Path(__file__).parent / "golden"

MANIFEST = """\
version: 1
name: llama2-agnews-cocktail
type: decoder
steps:
  - name: helpers
    models: [meta-llama/Llama-2-7b-chat-hf, Shitao/llama2-nq@v1, ./models/llama2-sst2]
    weights: {examples: examples/agnews.jsonl, temperature: 5.0}
  - name: final
    models: [{step: helpers, weight: 0.6}, {id: Shitao/llama2-ag-news, weight: 0.4}]
eval:
  - {name: ag_news, examples: examples/agnews-heldout.jsonl}
  - {name: general, examples: examples/general.jsonl}
output: {repo: my-org/llama2-agnews-cocktail, license: inherit}
"""

CHAT, NQ, SST2, AGNEWS = (
    "meta-llama/Llama-2-7b-chat-hf",
    "Shitao/llama2-nq@v1",
    "./models/llama2-sst2",
    "Shitao/llama2-ag-news",
)
REPO = "my-org/llama2-agnews-cocktail"
ERROR = "cocktail.yml:6: models[1].id: Hub repo 'Shitao/llama2-nq' has no revision 'v9'\ncheck it exists"


def two_step_report() -> Report:
    """The paper's workflow: helpers mixed by examples, then the result mixed with the fine-tune."""
    return Report(
        name="llama2-agnews-cocktail",
        model_type="decoder",
        tool_version="0.1.0",
        manifest_path="cocktail.yml",
        manifest_sha256="3f" * 32,
        manifest_text=MANIFEST,
        sources=[
            SourceReport(
                label=CHAT,
                repo_id=CHAT,
                requested_revision="main",
                resolved_revision="f5db02db724555f92da89c216ac04704f23d4590",
                path="/cache/chat",
                license="llama2",
                files={"model.safetensors": "11" * 32},
            ),
            SourceReport(
                label=NQ,
                repo_id="Shitao/llama2-nq",
                requested_revision="v1",
                resolved_revision="0123456789abcdef0123456789abcdef01234567",
                path="/cache/nq",
                license="llama2",
            ),
            SourceReport(label=SST2, path="/home/runner/work/recipes/models/llama2-sst2", license=None),
            SourceReport(label="step:helpers", path="/tmp/cocktail/helpers"),
            SourceReport(
                label=AGNEWS,
                repo_id=AGNEWS,
                resolved_revision="89abcdef0123456789abcdef0123456789abcdef",
                path="/cache/agnews",
                license="llama2",
            ),
        ],
        steps=[
            StepReport(
                name="helpers",
                models=[CHAT, NQ, SST2],
                weights_mode="examples",
                weights=[0.4721, 0.3183, 0.2096],
                losses=[1.2034, 1.3999, 1.6085],
                examples="examples/agnews.jsonl",
                loss_dtype="float32",
                temperature=5.0,
                base=CHAT,
                dtype="bfloat16",
                seconds=61.5,
            ),
            StepReport(
                name="final",
                models=["step:helpers", AGNEWS],
                weights_mode="explicit",
                weights=[0.6, 0.4],
                base="step:helpers",
                dtype="bfloat16",
                seconds=40.0,
            ),
        ],
        evals=[
            EvalResult(eval_set="ag_news", model=CHAT, loss=2.4817, examples=20, dtype="float32"),
            EvalResult(eval_set="ag_news", model=AGNEWS, loss=0.9123, examples=20, dtype="float32"),
            EvalResult(eval_set="ag_news", model="step:helpers", loss=1.9411, examples=20, dtype="float32"),
            EvalResult(eval_set="ag_news", model="merged", loss=1.0342, examples=20, dtype="float32"),
            EvalResult(eval_set="general", model=CHAT, loss=1.7001, examples=12, dtype="float32"),
            EvalResult(eval_set="general", model=AGNEWS, loss=2.9954, examples=12, dtype="float32"),
            EvalResult(eval_set="general", model="step:helpers", loss=1.6002, examples=12, dtype="float32"),
            EvalResult(eval_set="general", model="merged", loss=1.8876, examples=12, dtype="float32"),
        ],
        output=OutputReport(
            path="out/llama2-agnews-cocktail",
            total_bytes=13_476_839_424,
            dtype="bfloat16",
            files={
                "model-00001-of-00002.safetensors": "aa" * 32,
                "model-00002-of-00002.safetensors": "bb" * 32,
                "model.safetensors.index.json": "cc" * 32,
                "config.json": "dd" * 32,
            },
        ),
        license="llama2",
        seconds=754.2,
        peak_rss_bytes=2_310_000_000,
        publish=PublishReport(
            repo_id=REPO,
            revision="refs/pr/3",
            commit_sha="e1" * 20,
            commit_url=f"https://huggingface.co/{REPO}/commit/{'e1' * 20}",
            pr_url=f"https://huggingface.co/{REPO}/discussions/3",
            repo_url=f"https://huggingface.co/{REPO}",
        ),
        provenance=Provenance(
            repository="acme/recipes",
            commit="c0" * 20,
            ref="refs/pull/7/merge",
            pr_number=7,
            run_url="https://github.com/acme/recipes/actions/runs/42",
        ),
        reproduce="cocktail run cocktail.yml --locked",
    )


def failed_report() -> Report:
    return Report(
        status="failure",
        error=ERROR,
        name="llama2-agnews-cocktail",
        model_type="decoder",
        tool_version="0.1.0",
        manifest_path="cocktail.yml",
        manifest_sha256="3f" * 32,
        manifest_text=MANIFEST,
        seconds=3.25,
    )


def encoder_report(**changes) -> Report:
    """One step of two local sentence-transformers encoders, no evals, not published."""
    report = Report(
        name="minilm-cocktail",
        model_type="encoder",
        tool_version="0.1.0",
        manifest_path="recipes/cocktail.yml",
        manifest_sha256="00" * 32,
        manifest_text="version: 1\n",
        sources=[
            SourceReport(label="./enc-a", path="/x/enc-a", license="mit"),
            SourceReport(label="./enc-b", path="/x/enc-b", license="mit"),
        ],
        steps=[
            StepReport(
                name="merge",
                models=["./enc-a", "./enc-b"],
                weights_mode="uniform",
                weights=[0.5, 0.5],
                dtype="float32",
            )
        ],
        license="mit",
    )
    return report.model_copy(update=changes)


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8", newline="")
    assert text == path.read_text(encoding="utf-8"), (
        f"{path} differs from the rendered text; if the change is intended, regenerate with "
        "UPDATE_GOLDEN=1 pytest tests/test_card.py and review the diff"
    )


def unescaped_pipes(line: str) -> int:
    """Column separators in a Markdown table row: pipes not preceded by an odd number of backslashes."""
    return len(re.findall(r"(?<!\\)(?:\\\\)*\|", line))


def assert_tables_well_formed(markdown: str) -> None:
    """Every row of every table has as many columns as its header (so no value broke out of its cell)."""
    tables, current = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    assert tables
    for table in tables:
        assert {unescaped_pipes(row) for row in table} == {unescaped_pipes(table[0])}, table


# --- the card -----------------------------------------------------------------------------------------------


def test_card_matches_golden():
    card = render_card(two_step_report())
    assert_golden("model_card.md", card)
    assert_tables_well_formed(card)


def test_card_is_the_same_for_every_run_of_the_same_build():
    """Time, memory, commit, ref and run belong to report.json and the comment: a re-run or a push that leaves
    the build unchanged renders the same card, so publishing it makes no Hub commit."""
    report = two_step_report()
    rerun = report.model_copy(
        update={
            "seconds": 1.5,
            "peak_rss_bytes": 1,
            "provenance": report.provenance.model_copy(
                update={
                    "commit": "d1" * 20,
                    "ref": "refs/heads/main",
                    "pr_number": None,
                    "run_url": "https://github.com/acme/recipes/actions/runs/43",
                }
            ),
        }
    )
    card = render_card(report)
    assert render_card(rerun) == card
    assert "runs/42" not in card and "12 min" not in card and "c0c0c0" not in card


def test_card_of_local_sources_claims_no_merge_relation():
    """Without a Hub source there is no model tree to join: no base_model, so no base_model_relation either."""
    report = two_step_report()
    local = report.model_copy(
        update={"sources": [s.model_copy(update={"repo_id": None}) for s in report.sources]}
    )
    built = ModelCard(render_card(local)).data.to_dict()
    assert "base_model" not in built and "base_model_relation" not in built


def test_card_metadata_round_trips_through_model_card():
    report = two_step_report()
    built = build_card_data(report).to_dict()
    assert ModelCard(render_card(report)).data.to_dict() == built
    assert built["base_model"] == [
        CHAT,
        "Shitao/llama2-nq",
        AGNEWS,
    ]  # Hub sources only: no local path, no step
    assert built["base_model_relation"] == "merge"
    assert (built["library_name"], built["pipeline_tag"], built["license"]) == (
        "transformers",
        "text-generation",
        "llama2",
    )
    assert built["tags"] == ["merge", "lm-cocktail", "cocktail-bot", "decoder"]
    [index] = built["model-index"]
    assert index["name"] == "llama2-agnews-cocktail"
    assert [(r["dataset"]["name"], r["task"]["type"], r["metrics"]) for r in index["results"]] == [
        ("ag_news", "text-generation", [{"type": "loss", "value": 1.0342, "name": "Loss"}]),
        ("general", "text-generation", [{"type": "loss", "value": 1.8876, "name": "Loss"}]),
    ]


def test_card_body_documents_the_recipe():
    card = render_card(two_step_report())
    body = ModelCard(card).text
    revision = "f5db02db724555f92da89c216ac04704f23d4590"
    assert f"[{CHAT}](https://huggingface.co/{CHAT}/tree/{revision})" in body
    assert "| `./models/llama2-sst2` | local folder | — | unknown |" in body
    assert "/home/runner" not in card and "/cache/" not in card  # local paths of the build machine stay out
    assert "`softmax(-loss / T)` with temperature T = 5.0" in body
    assert "| output of step `helpers` | 0.6000 |" in body
    assert "| **merged** | 1.0342 | 1.8876 |" in body
    assert "```yaml\n" + MANIFEST + "```" in body
    assert f"| `model.safetensors.index.json` | `{'cc' * 32}` |" in body
    assert "git checkout COMMIT  # the commit named in the message of the Hub commit" in body
    assert "cocktail run cocktail.yml --locked\n" in body
    assert "pip install cocktail-bot==0.1.0" in body


def test_sentence_transformers_encoder_card_without_hub_sources_or_evals():
    report = encoder_report(
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        publish=PublishReport(
            repo_id="me/minilm-cocktail",
            revision="main",
            repo_url="https://huggingface.co/me/minilm-cocktail",
        ),
    )
    card = render_card(report)
    data = ModelCard(card).data.to_dict()
    assert data == build_card_data(report).to_dict()
    assert "base_model" not in data and "model-index" not in data
    assert (data["library_name"], data["pipeline_tag"], data["license"]) == (
        "sentence-transformers",
        "sentence-similarity",
        "mit",
    )
    assert 'SentenceTransformer("me/minilm-cocktail")' in card
    assert "Equal weights (`weights: uniform`)." in card
    assert "## Evaluation" not in card
    assert "cd " not in card and "cocktail run recipes/cocktail.yml --locked" in card  # no git provenance


def test_reranker_metadata_defaults_from_model_type():
    data = build_card_data(encoder_report(model_type="reranker")).to_dict()
    assert (data["library_name"], data["pipeline_tag"]) == ("transformers", "text-classification")
    assert data["tags"][-1] == "reranker"


def test_accuracy_goes_into_metadata_and_table():
    report = encoder_report(
        evals=[
            EvalResult(eval_set="msmarco", model="./enc-a", loss=0.9, accuracy=0.5, examples=8),
            EvalResult(eval_set="msmarco", model="merged", loss=0.7, accuracy=0.625, examples=8),
        ]
    )
    card = render_card(report)
    [result] = ModelCard(card).data.to_dict()["model-index"][0]["results"]
    assert result["metrics"] == [
        {"type": "loss", "value": 0.7, "name": "Loss"},
        {"type": "accuracy", "value": 0.625, "name": "Accuracy"},
    ]
    assert "| Model | msmarco loss ↓ | msmarco accuracy ↑ |" in card
    assert "| **merged** | 0.7000 | 62.5% |" in card


# --- license ------------------------------------------------------------------------------------------------


def test_license_inherited_when_sources_agree():
    assert resolve_license({CHAT: "llama2", AGNEWS: "Llama2", "step:helpers": None}, "inherit") == "llama2"
    assert resolve_license({"a": "apache-2.0"}, None) == "apache-2.0"


def test_conflicting_licenses_refused_naming_each_source():
    with pytest.raises(CocktailError) as error:
        resolve_license({CHAT: "llama2", "org/mit-model": "mit"}, "inherit")
    assert str(error.value) == (
        "cannot inherit a license for the merged model: the sources do not share one license "
        f"({CHAT}: llama2, org/mit-model: mit); set output.license in the manifest to the license it is "
        "published under (a Hub license id such as apache-2.0, or other)"
    )


def test_unknown_license_refused():
    with pytest.raises(CocktailError, match=r"\(org/a: mit, \./local: unknown\); set output.license"):
        resolve_license({"org/a": "mit", "./local": None}, "inherit")
    with pytest.raises(
        CocktailError, match=r"the sources declare no license \(\./a: unknown, \./b: unknown\)"
    ):
        resolve_license({"./a": None, "./b": " "}, None)


def test_explicit_license_overrides_the_sources():
    assert (
        resolve_license({CHAT: "llama2", "org/mit-model": "mit", "./local": None}, "Apache-2.0")
        == "apache-2.0"
    )
    assert resolve_license({}, "inherit") is None


# --- user templates -----------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_user_template_renders_with_the_same_context(tmp_path):
    template = write(
        tmp_path / "card.md.j2",
        (
            "---\n{{ card_data }}\n---\n"
            "{% import '_tables.md.j2' as tables %}\n"
            "# {{ report.name }} by ACME\n\n"
            "{{ tables.eval_table(eval_table) }}\n\n"
            "{{ reproduce | last }}\n"
        ),
    )
    report = two_step_report()
    card = render_card(report, template)
    assert ModelCard(card).data.to_dict() == build_card_data(report).to_dict()
    assert "# llama2-agnews-cocktail by ACME\n" in card
    assert "| **merged** | 1.0342 | 1.8876 |" in card
    assert card.endswith("cocktail run cocktail.yml --locked\n")


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__.__mro__",
        "report.__class__.__init__.__globals__",
        "report.sources.append(1)",
        "eval_table.rows.clear()",
        "report.model_dump.__globals__",
    ],
)
def test_user_template_escape_attempts_are_refused(tmp_path, expression):
    template = write(tmp_path / "evil.md.j2", "# card\n\n{{ " + expression + " }}\n")
    with pytest.raises(CocktailError) as error:
        render_card(two_step_report(), template)
    unsafe = r"template error: access to attribute '\w+' of '\w+' object is unsafe\."
    assert re.fullmatch(re.escape(f"{template}:3: ") + unsafe, str(error.value))


def test_user_template_errors_name_the_file_and_line(tmp_path):
    broken = write(tmp_path / "broken.md.j2", "# {{ report.name }}\n{% for x in %}\n")
    with pytest.raises(CocktailError, match=rf"^{re.escape(str(broken))}:2: template syntax error: "):
        render_card(two_step_report(), broken)
    undefined = write(tmp_path / "undefined.md.j2", "# {{ report.name }}\n\n{{ nope.field }}\n")
    with pytest.raises(CocktailError) as error:
        render_card(two_step_report(), undefined)
    assert str(error.value) == f"{undefined}:3: template error: 'nope' is undefined"
    missing = tmp_path / "missing.md.j2"
    with pytest.raises(CocktailError) as error:
        render_card(two_step_report(), missing)
    assert str(error.value) == f"{missing}: template not found: check output.card in the manifest"


def test_user_template_with_invalid_metadata_block_is_refused(tmp_path):
    template = write(tmp_path / "card.md.j2", "---\nlicense: [unclosed\n---\n# {{ report.name }}\n")
    with pytest.raises(
        CocktailError, match=r"card\.md\.j2: the rendered model card's metadata block is not valid"
    ):
        render_card(two_step_report(), template)


def test_user_template_cannot_include_files_outside_its_folder(tmp_path):
    (tmp_path / "secret.txt").write_text("token", encoding="utf-8")
    folder = tmp_path / "cards"
    folder.mkdir()
    for name in ("../secret.txt", str(tmp_path / "secret.txt")):
        template = write(folder / "card.md.j2", "{% include '" + name + "' %}\n")
        with pytest.raises(CocktailError, match=f"template {re.escape(repr(name))} not found"):
            render_card(two_step_report(), template)


# --- escaping -----------------------------------------------------------------------------------------------


def test_cell_escaping():
    assert md_cell("a|b") == "a\\|b"
    assert md_cell("line one\nline two\r\nthree") == "line one<br>line two<br>three"
    assert md_cell("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert md_cell("back\\|slash") == "back\\\\\\|slash"
    assert md_cell(None) == ""
    assert md_code("a`b|c\nd") == "``a`b\\|c d``"
    assert md_code("`x`") == "`` `x` ``"


def test_manifest_fence_cannot_be_closed_by_the_manifest():
    assert md_fence("a: 1\n# ```\n", "yaml") == "````yaml\na: 1\n# ```\n````"


def test_hostile_values_stay_inside_their_cells():
    report = two_step_report()
    report.sources[1].label = report.steps[0].models[1] = "Shitao/llama2-nq|x\ny"
    report.steps[0].name = "help|ers\n## injected"
    for result in report.evals:
        if result.eval_set == "general":
            result.eval_set = "gen|eral\nset"
    card = render_card(report)
    assert_tables_well_formed(card)
    assert "\n## injected" not in card
    assert "gen\\|eral<br>set loss ↓" in card
    assert_tables_well_formed(render_report_markdown(report))


# --- report.md ----------------------------------------------------------------------------------------------


def test_report_markdown_for_a_successful_run():
    text = render_report_markdown(two_step_report())
    assert_golden("report_success.md", text)
    assert_tables_well_formed(text)
    assert "**Status:** ✅ success" in text
    assert "| Time | 12 min 34 s |" in text and "| Peak memory | 2.3 GB |" in text
    assert "(revision `refs/pr/3`)" in text and f"https://huggingface.co/{REPO}/discussions/3" in text


def test_report_markdown_for_a_failed_run():
    text = render_report_markdown(failed_report())
    assert_golden("report_failure.md", text)
    assert "**Status:** ❌ failure" in text
    assert f"```\n{ERROR}\n```" in text
    assert "## Published" not in text and "## Weights" not in text
    assert "- Built outside CI: no git repository, commit or workflow run was recorded." in text


def test_report_markdown_for_an_unchanged_republish():
    report = two_step_report()
    report.publish.changed = False
    assert ": identical files were already published, no new commit" in render_report_markdown(report)


@pytest.mark.parametrize(
    ("model_type", "words"),
    [
        ("decoder", "is a decoder (causal language model)"),
        ("encoder", "is an encoder (embedding model)"),
        ("reranker", "is a reranker (cross-encoder)"),
    ],
)
def test_card_names_the_type_with_its_article(model_type, words):
    card = render_card(two_step_report().model_copy(update={"model_type": model_type}))
    assert f"**llama2-agnews-cocktail** {words} merged from" in card


@pytest.mark.parametrize("method", sorted(METHODS))
def test_card_names_each_methods_paper(method):
    """Every method's card line says what it does and links its paper (#19)."""
    report = two_step_report()
    steps = [report.steps[0].model_copy(update={"method": method}), report.steps[1]]
    body = ModelCard(render_card(report.model_copy(update={"steps": steps}))).text
    cls = METHODS[method]
    assert f"- `{method}`: {cls.summary} Paper: [" in body
    assert f"]({paper_link(cls.paper)})." in body
    assert str(paper_link(cls.paper)).startswith("https://")
