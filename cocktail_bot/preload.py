"""Import torch on a thread while a run is still talking to the Hub.

``cocktail run`` opens its sources (their small files and safetensors headers fetched, mostly waiting on the
network) and then imports torch (about 2 s of CPU) before it reads the first byte of weights. Importing torch
meanwhile takes part of that off the time to the first byte. It starts once the plan has passed, not before:
the process waits for the import before it exits, and a run refused by its plan (a missing repo, too little
disk) should not (docs/benchmarks.md). Only torch is imported here, never a cocktail_bot module: torch imports
none of them, so the main thread importing ours can only wait for torch, never deadlock with it.
"""

from __future__ import annotations

import importlib
import sys
import threading

_started: list[threading.Thread] = []


def start() -> None:
    """Begin importing torch, unless it is imported already or being imported."""
    if "torch" in sys.modules or _started:
        return
    thread = threading.Thread(target=_import, name="cocktail-preload", daemon=True)
    _started.append(thread)
    thread.start()


def _import() -> None:
    try:
        importlib.import_module("torch")
    except Exception:  # noqa: S110 - the main thread's own import raises it, with its message, where torch is used
        pass


def finish() -> None:
    """Wait for the import to end, so that the process never exits while torch is being initialised."""
    for thread in _started:
        thread.join()
