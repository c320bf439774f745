"""How much memory a merge holds: the engine's buffer sizes, free of torch so that `cocktail plan` can use them."""

from __future__ import annotations

# Elements per chunk of an elementwise merge, summed over the inputs: bounds memory whatever the model count.
CHUNK_ELEMENTS = 16 * 2**20
PREFETCH = 2  # tasks read ahead of the arithmetic, and results queued for the writer
