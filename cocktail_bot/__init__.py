"""cocktail-bot: LM-Cocktail model merging as infrastructure.

``from cocktail_bot import mix_models, mix_models_with_data, mix_models_by_layers`` is a drop-in for
``LM_Cocktail``. Attributes are imported on first use so that ``cocktail --version`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "mix_models": "cocktail_bot.api",
    "mix_models_by_layers": "cocktail_bot.api",
    "mix_models_with_data": "cocktail_bot.api",
    "compute_weights": "cocktail_bot.weights",
    "merge": "cocktail_bot.engine",
    "CocktailError": "cocktail_bot.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cocktail_bot' has no attribute {name!r}")
