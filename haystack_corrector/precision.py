"""Precision: where the package computes in bfloat16 and where it insists on float32.

Encodes that need no gradient and feed only a ranking (the loss's re-ranked candidates, its anchors' sampling pass,
a refresh's corpus re-encode, an initial cache) are the natural place for reduced precision: on hardware with
bfloat16 matrix units (CUDA, or a CPU with AVX512-BF16/AMX) they run several times faster under bfloat16 autocast
(measured on a 2-core AVX512-BF16 CPU: docs/performance.md). :func:`bf16_encodes` is that context; elsewhere it is a
float32 region, so a caller never gets a slow emulated bfloat16 by accident.

The cache search, the corrector and its drift step always compute in float32, also when a caller runs them inside
an autocast region (a trainer's ``bf16=True``): :func:`float32` switches autocast off around them, so the top k and
the corrector are what a float32 run computes given the same embeddings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from haystack_corrector.search import bf16_supported

__all__ = ["bf16_encodes", "bf16_supported", "float32"]

_AUTOCAST_DEVICES = ("cpu", "cuda")


@contextlib.contextmanager
def float32() -> Iterator[None]:
    """Autocast off on every device type: the code inside computes in its tensors' own dtype (float32 here)."""
    with contextlib.ExitStack() as stack:
        for device_type in _AUTOCAST_DEVICES:
            if device_type == "cuda" and not torch.cuda.is_available():
                continue
            stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def bf16_encodes(device: torch.device | str, enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """bfloat16 autocast on ``device`` where :func:`bf16_supported` and ``enabled``; otherwise a :func:`float32`
    region (also inside a caller's autocast: ``enabled=False`` means float32, not "whatever is around").

    Example:
        >>> import torch
        >>> with bf16_encodes("cpu", enabled=False):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.float32
    """
    device = torch.device(device)
    if enabled and bf16_supported(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return float32()
