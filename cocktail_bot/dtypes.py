"""Floating-point dtypes by name (``bfloat16``, ``fp16``, ...): the one grammar, free of torch.

The engine maps the canonical names to torch dtypes; the manifest offers :data:`OutputDtype`; plans and the
memory model size tensors with :data:`DTYPE_BYTES`.
"""

from __future__ import annotations

from typing import Literal, get_args

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
ALIASES["fp64"] = "float64"
# What a manifest may ask a merge to write (float64 outputs are not offered).
OutputDtype = Literal["float32", "float16", "bfloat16"]
OUTPUT_DTYPES: tuple[str, ...] = get_args(OutputDtype)


def canonical_dtype(name: str) -> str:
    """``fp16`` -> ``float16``, ``torch.bfloat16`` -> ``bfloat16``; ValueError naming the choices otherwise."""
    text = str(name).lower().removeprefix("torch.")
    text = ALIASES.get(text, text)
    if text not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {name!r}: use one of {', '.join(sorted(DTYPE_BYTES))}")
    return text
