"""The model card and the human run report, rendered from a ``Report``.

The card's YAML metadata is built with ``huggingface_hub.ModelCardData`` (so the Hub reads ``base_model``,
``base_model_relation: merge``, the license and the eval results as it expects) and its body from
``templates/model_card.md.j2``, or from the user's own template (``output.card``), which runs sandboxed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from cocktail_bot.errors import CocktailError
from cocktail_bot.model_types import PIPELINE_TAG, ModelType
from cocktail_bot.report import Report
from cocktail_bot.templating import MERGED, STEP_PREFIX, render_builtin, render_user_template, report_context

INHERIT = "inherit"
TAGS = ("merge", "lm-cocktail", "cocktail-bot")
CARD_TEMPLATE = "model_card.md.j2"
REPORT_TEMPLATE = "report.md.j2"


def resolve_license(source_licenses: Mapping[str, str | None], manifest_license: str | None) -> str | None:
    """The merged model's license: the manifest's explicit choice, else the one license all sources share.

    A merge is a derivative of every source, so inheriting is only sound when the sources agree; with
    conflicting or unknown licenses the user must choose explicitly, and this raises naming each source and
    its license.
    Step outputs (labels ``step:NAME``) are skipped: their licenses are those of their own sources, which the
    mapping holds. Returns None only when there is no source to inherit from. License ids are the Hub's
    (lower case: ``apache-2.0``, ``mit``, ``llama2``, ``other``).
    """
    if manifest_license is not None and manifest_license.strip().lower() != INHERIT:
        return manifest_license.strip().lower()
    licenses = {
        label: (license.strip().lower() if license and license.strip() else None)
        for label, license in source_licenses.items()
        if not label.startswith(STEP_PREFIX)
    }
    distinct = set(licenses.values())
    if not licenses:
        return None
    if len(distinct) == 1 and None not in distinct:
        return distinct.pop()
    listing = ", ".join(f"{label}: {license or 'unknown'}" for label, license in licenses.items())
    problem = "declare no license" if distinct == {None} else "do not share one license"
    raise CocktailError(
        f"cannot inherit a license for the merged model: the sources {problem} ({listing}); "
        "set output.license in the manifest to the license it is published under "
        "(a Hub license id such as apache-2.0, or other)"
    )


def build_card_data(report: Report) -> ModelCardData:
    """The card's metadata; the Hub builds the model tree from ``base_model`` + ``base_model_relation``."""
    model_type = ModelType.parse(report.model_type)
    pipeline_tag = report.pipeline_tag or PIPELINE_TAG[model_type]
    base_models = list(dict.fromkeys(source.repo_id for source in report.sources if source.repo_id))
    eval_results = [
        EvalResult(
            task_type=pipeline_tag,
            dataset_type=result.eval_set,
            dataset_name=result.eval_set,
            metric_type=metric,
            metric_name=metric.capitalize(),
            metric_value=value,
        )
        for result in report.evals
        if result.model == MERGED
        for metric, value in (("loss", result.loss), ("accuracy", result.accuracy))
        if value is not None
    ]
    return ModelCardData(
        base_model=base_models or None,
        base_model_relation="merge" if base_models else None,
        library_name=report.library_name or "transformers",
        pipeline_tag=pipeline_tag,
        license=report.license,
        tags=[*TAGS, model_type.value],
        eval_results=eval_results or None,
        model_name=report.name if eval_results else None,
    )


def render_card(report: Report, template: str | Path | None = None) -> str:
    """The model card (README.md) for the merged model.

    ``template`` is a user's own template file (``output.card``), rendered in a sandbox with the same context
    as the built-in one: ``report``, ``inputs``, ``eval_table``, ``reproduce``, plus ``card_data`` (the YAML
    metadata, to put between ``---`` lines as in ``huggingface_hub`` templates) and ``metadata`` (a dict).
    """
    card_data = build_card_data(report)
    context = {**report_context(report), "card_data": card_data.to_yaml(), "metadata": card_data.to_dict()}
    if template is None:
        text = render_builtin(CARD_TEMPLATE, context)
    else:
        text = render_user_template(template, context)
    try:
        ModelCard(text)
    except (ValueError, yaml.YAMLError) as error:
        origin = template or CARD_TEMPLATE
        raise CocktailError(
            f"{origin}: the rendered model card's metadata block is not valid: {error}"
        ) from None
    return text


def render_report_markdown(report: Report) -> str:
    """``report.md``: the run as a person reads it, also written to the GitHub job summary."""
    return render_builtin(REPORT_TEMPLATE, report_context(report))
