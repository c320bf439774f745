"""Sizes in bytes as people write them (``5GB``, ``500MiB``, ``1000000``) and as we print them: the one grammar.

Decimal units are powers of 10, as transformers and the Hub read them; ``KiB``/``MiB``/... are powers of 2.
The manifest's JSON Schema pattern is generated from the same units (:data:`SIZE_PATTERN`).
"""

from __future__ import annotations

import re

UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
POSITIVE = "it must be positive"
_NUMBER = r"\d+(?:\.\d+)?"
_SIZE = re.compile(rf"\s*({_NUMBER})\s*([A-Za-z]*)\s*")


def _any_case(unit: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" for c in unit)


# For editors: the same sizes as parse_size reads (units in any case).
SIZE_PATTERN = rf"^\s*{_NUMBER}\s*({'|'.join(_any_case(u) for u in UNITS if u)})?\s*$"


def parse_size(size: str | int) -> int:
    """Bytes in a size such as ``5GB``, ``500MiB`` or ``1000000``; ValueError (with the reason) otherwise."""
    if isinstance(size, bool):
        raise ValueError("not a size")
    if isinstance(size, int):
        value: float = size
    else:
        match = _SIZE.fullmatch(str(size))
        if not match or match.group(2).upper() not in UNITS:
            raise ValueError("not a size")
        value = float(match.group(1)) * UNITS[match.group(2).upper()]
    if int(value) <= 0:
        raise ValueError(POSITIVE)
    return int(value)


def format_size(size: int | None) -> str:
    """Bytes in decimal units, as the Hub shows file sizes."""
    if size is None:
        return "—"
    if size < 1000:
        return f"{size} B"
    scaled = float(size)
    for unit in ("kB", "MB", "GB", "TB"):
        scaled /= 1000
        if scaled < 1000 or unit == "TB":
            return f"{scaled:.1f} {unit}"
    raise AssertionError("unreachable")
