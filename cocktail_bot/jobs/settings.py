"""Where a run happens and, on Hugging Face Jobs, on what: the flavors, defaults and checks that the manifest's
``runner.hf_jobs`` (in :mod:`cocktail_bot.manifest_schema`) and ``--on`` share. Pure data, no I/O.
"""

from __future__ import annotations

import re

from cocktail_bot.errors import CocktailError
from cocktail_bot.suggest import did_you_mean

LOCAL, HF_JOBS, AUTO = "local", "hf-jobs", "auto"
RUNNERS = (LOCAL, HF_JOBS, AUTO)  # the Action's input runner
# The Jobs hardware flavors of huggingface_hub 2.4 (JobHardware), kept here so checking needs no import of it.
FLAVORS = (
    "cpu-basic",
    "cpu-upgrade",
    "cpu-performance",
    "cpu-xl",
    "t4-small",
    "t4-medium",
    "l4x1",
    "l4x4",
    "l40sx1",
    "l40sx4",
    "l40sx8",
    "a10g-small",
    "a10g-large",
    "a10g-largex2",
    "a10g-largex4",
    "a100-large",
    "a100x4",
    "a100x8",
    "h200",
    "h200x2",
    "h200x4",
    "h200x8",
    "rtx-pro-6000",
    "rtx-pro-6000x2",
    "rtx-pro-6000x4",
    "rtx-pro-6000x8",
)
CPU_FLAVOR = "cpu-upgrade"  # 8 vCPU, 32 GB: the default when the manifest asks for no GPU
GPU_FLAVOR = "l4x1"  # one L4 (24 GB): the default when a step asks for device cuda
# torch with CUDA preinstalled; on CPU flavors the same image runs on the CPU.
DEFAULT_IMAGE = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime"
TIMEOUT = re.compile(r"^\d+(\.\d+)?[smhd]?$")


def check_flavor(flavor: str) -> str:
    if flavor not in FLAVORS:
        raise ValueError(f"unknown Hugging Face Jobs flavor {flavor!r}; {did_you_mean(flavor, FLAVORS)}")
    return flavor


def parse_on(value: str) -> tuple[str, str | None]:
    """``--on local``, ``--on auto``, ``--on hf-jobs`` or ``--on hf-jobs:FLAVOR`` -> (where, flavor)."""
    where, _, flavor = value.partition(":")
    if where in (LOCAL, AUTO) and not flavor:
        return where, None
    if where != HF_JOBS:
        raise CocktailError(
            f"--on {value}: expected local, auto, hf-jobs or hf-jobs:FLAVOR (e.g. hf-jobs:a100-large)"
        )
    if not flavor:
        return HF_JOBS, None
    try:
        return HF_JOBS, check_flavor(flavor)
    except ValueError as error:
        raise CocktailError(f"--on {value}: {error}") from None
