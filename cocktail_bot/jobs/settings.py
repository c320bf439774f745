"""Where a run happens and, on Hugging Face Jobs, on what: the manifest's ``runner.hf_jobs`` and ``--on``.

Pure data and checks, no I/O: the manifest schema and the command line share them.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class HfJobsSettings(BaseModel):
    """``runner: {hf_jobs: {...}}``: the hardware, the time cap and the namespace a job runs (and bills) in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    flavor: str | None = Field(
        None,
        description=f"hardware flavor, e.g. cpu-upgrade or a100-large (default {CPU_FLAVOR}, {GPU_FLAVOR} for cuda)",
    )
    timeout: str | None = Field(
        None,
        description="the job is stopped (and billing ends) after this long: 90m, 2h, 1d; the Hub's default without",
    )
    namespace: str | None = Field(
        None, description="user or organisation the job runs in (default: the token's user)"
    )
    image: str = Field(
        DEFAULT_IMAGE, description="Docker image with Python and pip (torch is kept when present)"
    )

    @field_validator("flavor")
    @classmethod
    def _flavor(cls, value: str | None) -> str | None:
        return None if value is None else check_flavor(value)

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: object) -> object:
        text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        if isinstance(text, str) and not TIMEOUT.match(text):
            raise ValueError(f"timeout {text!r}: a number of seconds, or with a unit: 90m, 2h, 1d")
        return text


class Runner(BaseModel):
    """``runner:``: settings for running elsewhere than on this machine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hf_jobs: HfJobsSettings = Field(default_factory=HfJobsSettings)


def parse_on(value: str) -> tuple[str, str | None]:
    """``--on local``, ``--on hf-jobs`` or ``--on hf-jobs:FLAVOR`` -> (where, flavor)."""
    where, _, flavor = value.partition(":")
    if where == LOCAL and not flavor:
        return LOCAL, None
    if where != HF_JOBS:
        raise CocktailError(
            f"--on {value}: expected local, hf-jobs or hf-jobs:FLAVOR (e.g. hf-jobs:a100-large)"
        )
    if not flavor:
        return HF_JOBS, None
    try:
        return HF_JOBS, check_flavor(flavor)
    except ValueError as error:
        raise CocktailError(f"--on {value}: {error}") from None
