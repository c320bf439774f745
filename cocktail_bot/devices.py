"""Device names (``auto``, ``cpu``, ``mps``, ``cuda``, ``cuda:N``): the one grammar, free of torch.

Whether a device is usable on this machine is the tensor modules' question (engine, scoring); whether the text
names a device is answered here, and the manifest's JSON Schema pattern is :data:`DEVICE_PATTERN`.
"""

from __future__ import annotations

import re

DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"
DEVICE_CHOICES = "auto, cpu, mps, cuda or cuda:N"


def is_device(text: str) -> bool:
    return re.fullmatch(DEVICE_PATTERN, str(text)) is not None
