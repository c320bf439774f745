"""YAML with its line numbers: the node tree every problem is mapped back to, and what YAML itself gets wrong
(duplicate keys it silently keeps, alias bombs)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from cocktail_bot.manifest_schema import TAGS

MAX_YAML_NODES = 20_000  # after expanding aliases: a 1 MiB file must not expand into a "billion laughs"


Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    line: int
    loc: str
    message: str


def format_loc(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part not in TAGS:
            text += f".{part}" if text else part
    return text or "(manifest)"


def node_problems(root: yaml.Node) -> Iterator[Problem]:
    """Duplicate keys (the YAML loader silently keeps the last) and alias bombs, before constructing data."""
    count = 0
    stack = [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            yield Problem(
                node.start_mark.line + 1,
                "(yaml)",
                f"more than {MAX_YAML_NODES} values after expanding aliases; simplify the manifest",
            )
            return
        if isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in first_line:
                        yield Problem(
                            key.start_mark.line + 1,
                            key.value,
                            f"duplicate key (first on line {first_line[key.value]}); keep one",
                        )
                    first_line.setdefault(key.value, key.start_mark.line + 1)
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


class NodeIndex:
    """Maps a pydantic location (('steps', 1, 'models', 0, 'weight')) to the YAML node that holds it."""

    def __init__(self, root: yaml.Node) -> None:
        self.root = root

    def line(self, loc: Loc, *, key: bool = False) -> int:
        node: yaml.Node = self.root
        for index, part in enumerate(loc):
            last = index == len(loc) - 1
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
                if match is None:
                    if part in TAGS:
                        continue
                    break
                node = match[0] if (last and key) else match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            elif part not in TAGS:
                break
        return node.start_mark.line + 1

    def problem(self, loc: Loc, message: str, *, key: bool = False) -> Problem:
        return Problem(self.line(loc, key=key), format_loc(loc), message)


def compose(text: str) -> tuple[yaml.Node | None, list[Problem]]:
    """The node tree of ``text`` (safe loader), or the problems that stop it from being read."""
    try:
        root_node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        return None, [_marked(error, "fix the YAML syntax")]
    except yaml.YAMLError as error:
        return None, [Problem(1, "(yaml)", str(error))]
    if root_node is None:
        return None, [Problem(1, "(manifest)", "the manifest is empty: start with 'version: 1'")]
    problems = list(node_problems(root_node))
    return (None, problems) if problems else (root_node, [])


def load(text: str) -> tuple[yaml.Node | None, Any, list[Problem]]:
    """The node tree of ``text`` and the data it holds, parsed once (safe loader), or the problems that stop it
    from being read: :func:`compose`'s, and a tag the safe loader has no type for (``!foo``)."""
    root_node, problems = compose(text)
    if root_node is None:
        return None, None, problems
    loader = yaml.SafeLoader("")
    try:
        return root_node, loader.construct_document(root_node), []
    except yaml.MarkedYAMLError as error:
        return None, None, [_marked(error, "write plain YAML values, without tags")]
    finally:
        loader.dispose()


def _marked(error: yaml.MarkedYAMLError, fix: str) -> Problem:
    mark = error.problem_mark or error.context_mark
    return Problem(mark.line + 1 if mark else 1, "(yaml)", f"{error.problem or error.context}; {fix}")
