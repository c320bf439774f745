"""A merge parameter's value as a recipe writes it, and its value for one tensor (mergekit 0.1.5's rules).

A setting is one of (mergekit's ``ParameterSetting``):

* a scalar: ``0.5``, ``true``;
* a per-layer list ``[0, 0.5, 1]``: interpolated over the layers (numbers linearly, booleans and strings
  stepwise);
* filter-scoped values ``[{filter: self_attn, value: 0.3}, {filter: mlp, value: [0, 1]}, {value: 0.5}]``: the
  first entry whose ``filter`` is part of the tensor's name (no filter, or ``*``: every tensor) gives the value.

A tensor's position over the layers is mergekit's ``t``: ``i / (n - 1)`` for a tensor of layer ``i`` of ``n``
(``1`` when there is one layer), ``0`` for tensors outside the layers (embeddings, final norm, head). Layers are
found as mergekit finds them in architectures it does not know: the first ``.N.`` in a tensor's name.

Settings are kept as plain data (numbers, lists, ``{filter, value}`` mappings) so that the lock, the report and
the card record them as written. Free of torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cocktail_bot.errors import CocktailError

LAYER_INDEX = re.compile(r"\.(\d+)\.")  # mergekit's architecture/auto.py RE_LAYER_INDEX
EVERY_TENSOR = "*"

Where = tuple[str | int, ...]


class SettingError(CocktailError):
    """A setting that cannot be used; ``where`` is the path inside the setting (list indices, keys)."""

    def __init__(self, message: str, where: Where = ()) -> None:
        super().__init__(message)
        self.where = where


def is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def check_setting(value: Any, scalar: Callable[[Any], Any], *, varies: bool = True) -> Any:
    """The setting with every scalar checked (``scalar`` returns it as its kind or raises CocktailError), a
    lone ``{filter, value}`` made a list of one; SettingError names what is wrong and where."""
    if is_scalar(value):
        return _scalar(scalar, value, ())
    if not varies and value is not None:
        raise SettingError(
            f"takes one value, got {_short(value)}; per-layer lists and filters are not supported"
        )
    if isinstance(value, dict):
        return [_conditional(value, scalar, ())]
    if isinstance(value, list):
        if not value:
            raise SettingError("an empty list gives no value: write a value, or a list of per-layer values")
        if all(is_scalar(item) for item in value):
            return [_scalar(scalar, item, (index,)) for index, item in enumerate(value)]
        if all(isinstance(item, dict) for item in value):
            return [_conditional(item, scalar, (index,)) for index, item in enumerate(value)]
        raise SettingError(
            "a list holds either per-layer values ([0, 0.5, 1]) or filtered values "
            "([{filter: self_attn, value: 0.5}, {value: 1}]), not both"
        )
    raise SettingError(f"expected a value, a per-layer list or filtered values, got {_short(value)}")


def _scalar(scalar: Callable[[Any], Any], value: Any, where: Where) -> Any:
    try:
        return scalar(value)
    except CocktailError as error:
        raise SettingError(str(error), where) from None


def _conditional(item: dict[str, Any], scalar: Callable[[Any], Any], where: Where) -> dict[str, Any]:
    unknown = [key for key in item if key not in ("filter", "value")]
    if unknown:
        raise SettingError(
            f"unknown key {unknown[0]!r} in filtered values: each entry is {{filter: NAME_PART, value: ...}}",
            (*where, unknown[0]),
        )
    if "value" not in item:
        raise SettingError("a filtered entry needs 'value:'", where)
    value = item["value"]
    if is_scalar(value):
        checked: Any = _scalar(scalar, value, (*where, "value"))
    elif isinstance(value, list) and value and all(is_scalar(v) for v in value):
        checked = [_scalar(scalar, v, (*where, "value", index)) for index, v in enumerate(value)]
    else:
        raise SettingError(
            f"a filtered value is a value or a per-layer list, got {_short(value)}", (*where, "value")
        )
    text = item.get("filter")
    if text is not None and not isinstance(text, str):
        raise SettingError(
            f"a filter is part of a tensor name (self_attn, mlp, ...), got {_short(text)}", (*where, "filter")
        )
    return {"filter": text, "value": checked} if text is not None else {"value": checked}


def covers_every_tensor(setting: Any) -> bool:
    """True if the setting gives a value for any tensor (a filtered list needs an entry without a filter)."""
    if not _is_filtered(setting):
        return True
    return any(item.get("filter") in (None, EVERY_TENSOR) for item in setting)


def _is_filtered(setting: Any) -> bool:
    return isinstance(setting, list) and bool(setting) and isinstance(setting[0], dict)


def varies(setting: Any) -> bool:
    """True if the setting may give different values to different tensors."""
    return isinstance(setting, list)


def scalars(setting: Any) -> Iterator[Any]:
    """Every scalar the setting holds (the values any tensor may get, or the end points of ranges)."""
    if is_scalar(setting):
        yield setting
    elif isinstance(setting, dict):
        yield from scalars(setting["value"])
    elif isinstance(setting, (list, tuple)):
        for item in setting:
            yield from scalars(item)


def evaluate(setting: Any, tensor: str, position: float, scalar: Callable[[Any], Any]) -> Any:
    """The setting's value for ``tensor`` at ``position`` over the layers, or None if no filter matches
    (mergekit's evaluate_setting; ``scalar`` checks an interpolated number)."""
    if is_scalar(setting):
        return setting
    if _is_filtered(setting):
        for item in setting:
            text = item.get("filter")
            if text is None or text == EVERY_TENSOR or (tensor and text in tensor):
                return evaluate(item["value"], tensor, position, scalar)
        return None
    values = list(setting)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return values[int(position * (len(values) - 1))]
    scaled = position * (len(values) - 1)
    low = int(scaled)
    high = min(len(values) - 1, low + 1)
    fraction = scaled - low
    return scalar((1 - fraction) * values[low] + fraction * values[high])


def _finite_weight(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CocktailError(f"a weight is a finite number, got {value!r}")
    return float(value)


def check_weight(value: Any) -> Any:
    """A model's weight: a number, or (mergekit's forms) a per-layer list or filtered values that give every
    tensor a value; SettingError says what is wrong and where inside it."""
    setting = check_setting(value, _finite_weight)
    if not covers_every_tensor(setting):
        raise SettingError(
            "a filtered weight needs an entry without a filter, for the tensors no filter matches: add e.g. "
            "{value: 0.5}"
        )
    return setting


def weight_at(setting: Any, tensor: str, position: float) -> float:
    """A model's weight for one tensor."""
    value = evaluate(setting, tensor, position, _finite_weight)
    if value is None:  # check_weight refused settings that leave a tensor without a value
        raise CocktailError(f"no weight for tensor {tensor!r}")
    return float(value)


def layer_positions(names: Iterable[str]) -> dict[str, float]:
    """Each tensor's position over the layers (mergekit's ``t``): 0 outside them."""
    names = list(names)
    indices = {name: int(match.group(1)) for name in names if (match := LAYER_INDEX.search(name))}
    count = max(indices.values(), default=-1) + 1
    return {
        name: (indices[name] / (count - 1) if count > 1 else 1.0) if name in indices else 0.0
        for name in names
    }


def format_setting(setting: Any) -> str:
    """A setting as a recipe writes it, for the card and the logs: ``0.5``, ``[0, 0.5, 1]``,
    ``[self_attn: 0.3, mlp: [0, 1], 0.5]``."""
    if isinstance(setting, bool):
        return str(setting).lower()
    if isinstance(setting, float):
        return f"{setting:g}"
    if isinstance(setting, dict):
        value = format_setting(setting["value"])
        return f"{setting['filter']}: {value}" if setting.get("filter") is not None else value
    if isinstance(setting, (list, tuple)):
        return "[" + ", ".join(format_setting(item) for item in setting) + "]"
    return str(setting)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
