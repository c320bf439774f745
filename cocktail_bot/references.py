"""Model references as a manifest, the CLI and a lock write them: the grammar, in one place."""

from __future__ import annotations

LOCAL_PREFIXES = ("./", "../", "/")  # a reference starting with one of these is a local folder
STEP_PREFIX = "step:"  # how a source that is an earlier step's output is labelled
