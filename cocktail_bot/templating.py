"""Markdown from a ``Report`` with Jinja2: one environment, filters and context for every renderer.

The model card, ``report.md`` / the job summary and the PR comment all render through here, so they show the
same tables (the macros in ``templates/_tables.md.j2``). Built-in templates ship as the package
``cocktail_bot.templates``; a user's own template runs in Jinja2's immutable sandbox, because a manifest
changed in a pull request is untrusted input. Every template error becomes one ``CocktailError`` naming the
file and line.
"""

from __future__ import annotations

import html
import re
import shlex
import traceback
from collections.abc import Callable, Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from jinja2.loaders import split_template_path
from jinja2.sandbox import ImmutableSandboxedEnvironment

from cocktail_bot.errors import CocktailError
from cocktail_bot.methods import method_notes
from cocktail_bot.parameter_values import format_setting
from cocktail_bot.references import STEP_PREFIX
from cocktail_bot.report import EvalResult, Report
from cocktail_bot.sizes import format_size

TEMPLATES_PACKAGE = "cocktail_bot.templates"
MERGED = "merged"


# --- filters: values into Markdown --------------------------------------------------------------------------


def md_cell(value: Any) -> str:
    """Escape a value for a Markdown table cell: one line, no column-breaking pipes, no raw HTML."""
    text = "" if value is None else str(value)
    text = html.escape(text, quote=False).replace("\\", "\\\\").replace("|", "\\|")
    return "<br>".join(text.splitlines())


def md_code(value: Any) -> str:
    """An inline code span that survives backticks, pipes or newlines in the value (safe in table cells)."""
    text = " ".join(str(value).splitlines()).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    if text.startswith("`") or text.endswith("`"):
        text = f" {text} "
    return f"{fence}{text}{fence}"


def md_link(text: str, url: str | None) -> str:
    """``[text](url)``, or the text alone when there is no URL. The text must already be escaped."""
    if not url:
        return text
    return f"[{text}]({quote(url, safe=':/?#@!$&*+,;=%~')})"


def md_fence(text: str, lang: str = "") -> str:
    """A fenced code block longer than any backtick run inside, so a manifest cannot close it early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def fmt_number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


FILTERS: dict[str, Callable[..., str]] = {
    "cell": md_cell,
    "code": md_code,
    "link": md_link,
    "fence": md_fence,
    "num": fmt_number,
    "percent": fmt_percent,
    "size": format_size,
    "duration": fmt_duration,
    "setting": format_setting,
}


# --- context: what every template sees ----------------------------------------------------------------------


def eval_table(evals: Sequence[EvalResult]) -> dict[str, Any]:
    """Pivot eval results into rows (sources in order, the merge last) and columns (eval sets in order).

    Plain dicts and lists, so that sandboxed templates can read them without calling methods.
    """
    set_names = list(dict.fromkeys(result.eval_set for result in evals))
    models = [name for name in dict.fromkeys(result.model for result in evals) if name != MERGED]
    if any(result.model == MERGED for result in evals):
        models.append(MERGED)
    by_key = {(result.model, result.eval_set): result for result in evals}
    sets = [
        {
            "name": name,
            "examples": next(result.examples for result in evals if result.eval_set == name),
            "accuracy": any(result.accuracy is not None for result in evals if result.eval_set == name),
        }
        for name in set_names
    ]
    rows = [
        {
            "model": model,
            "merged": model == MERGED,
            "cells": [
                {"loss": r.loss, "accuracy": r.accuracy} if (r := by_key.get((model, name))) else None
                for name in set_names
            ],
        }
        for model in models
    ]
    dtype = next((result.dtype for result in evals if result.dtype), None)
    return {"sets": sets, "rows": rows, "dtype": dtype}


def reproduce_commands(report: Report) -> list[str]:
    """The shell commands that rebuild the model: install this version, check out the recipe, run locked.

    The commit is named by the Hub commit that published the card, not in the card: the card (a published
    file) depends on the build only, so republishing an unchanged build makes no Hub commit.
    """
    commands = [f"pip install cocktail-bot=={report.tool_version}"]
    provenance = report.provenance
    if provenance.repository:
        commands += [
            f"git clone {provenance.server_url}/{provenance.repository}.git",
            f"cd {shlex.quote(provenance.repository.rsplit('/', 1)[-1])}",
            "git checkout COMMIT  # the commit named in the message of the Hub commit that published this card",
        ]
    commands.append(report.reproduce or f"cocktail run {shlex.quote(report.manifest_path)} --locked")
    return commands


def report_context(report: Report) -> dict[str, Any]:
    """The variables every template gets: the report, its original inputs (no step outputs), the eval table
    pivoted for display, and the commands that reproduce the build."""
    return {
        "report": report,
        "inputs": [source for source in report.sources if not source.label.startswith(STEP_PREFIX)],
        "eval_table": eval_table(report.evals),
        "reproduce": reproduce_commands(report),
        "methods": method_notes([step.method for step in report.steps]),
    }


# --- environments and rendering -----------------------------------------------------------------------------


class _Loader(jinja2.BaseLoader):
    """The user's template directory first (when rendering a user's template), then the built-in templates.

    Remembers which files it served, so that a runtime error can be traced back to a template file and line.
    """

    def __init__(self, user_dir: Path | None = None) -> None:
        self.user_dir = user_dir
        self.filenames: set[str] = set()

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        pieces = split_template_path(template)  # refuses '..'
        if self.user_dir is not None:
            path = self.user_dir.joinpath(*pieces)
            if path.is_file() and path.resolve().is_relative_to(self.user_dir.resolve()):
                return self._serve(path.read_bytes(), str(path))
        resource = files(TEMPLATES_PACKAGE).joinpath(*pieces)
        if resource.is_file():
            return self._serve(resource.read_bytes(), str(resource))
        raise jinja2.TemplateNotFound(template)

    def _serve(self, data: bytes, filename: str) -> tuple[str, str, Callable[[], bool]]:
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CocktailError(f"{filename}: template is not valid UTF-8 ({error.reason})") from None
        self.filenames.add(filename)
        return source, filename, lambda: False


def _environment(loader: _Loader, *, sandboxed: bool) -> jinja2.Environment:
    environment_class = ImmutableSandboxedEnvironment if sandboxed else jinja2.Environment
    environment = environment_class(
        loader=loader,
        autoescape=False,  # Markdown, not HTML: values going into tables are escaped by the `cell` filter
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(FILTERS)
    return environment


def _render(environment: jinja2.Environment, name: str, context: Mapping[str, Any]) -> str:
    loader = environment.loader
    assert isinstance(loader, _Loader)
    try:
        return environment.get_template(name).render(context)
    except CocktailError:
        raise
    except jinja2.TemplateSyntaxError as error:
        raise _syntax_error(error, name) from None
    except jinja2.TemplateNotFound as error:
        raise CocktailError(f"{name}: template {error.name!r} not found") from None
    except Exception as error:  # a runtime error in template code: name the template line that raised it
        frames = [
            frame for frame in traceback.extract_tb(error.__traceback__) if frame.filename in loader.filenames
        ]
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else name
        raise CocktailError(f"{where}: template error: {error}") from None


def _syntax_error(error: jinja2.TemplateSyntaxError, name: str) -> CocktailError:
    return CocktailError(f"{error.filename or name}:{error.lineno}: template syntax error: {error.message}")


def check_user_template(path: Path) -> None:
    """Compile a user's template without rendering it, so that ``cocktail validate`` finds syntax errors
    before a run spends its time on the merge."""
    environment = _environment(_Loader(path.parent), sandboxed=True)
    try:
        environment.get_template(path.name)
    except jinja2.TemplateSyntaxError as error:
        raise _syntax_error(error, path.name) from None


def render_builtin(name: str, context: Mapping[str, Any]) -> str:
    """Render a built-in template by name: ``model_card.md.j2``, ``report.md.j2``, ``pr_comment.md.j2``."""
    return _render(_environment(_Loader(), sandboxed=False), name, context)


def render_user_template(path: str | Path, context: Mapping[str, Any]) -> str:
    """Render a user's template file in the sandbox; it may include files beside it and the built-ins."""
    path = Path(path)
    if not path.is_file():
        raise CocktailError(f"{path}: template not found: check output.card in the manifest")
    environment = _environment(_Loader(path.parent), sandboxed=True)
    return _render(environment, path.name, context)
