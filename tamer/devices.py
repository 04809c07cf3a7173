"""Device choice shared by the command line, evaluation and training: ``auto`` means CUDA when there is a GPU.

A device that does not exist here (``cuda:7`` on a machine with one GPU, ``cuda`` without one, a typo) is refused
at once with what is available, instead of failing deep inside the first ``.to()``.
"""

from __future__ import annotations

import torch

from .guards import InputError


def available_devices() -> list[str]:
    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device}: not a device name; expected auto, cpu, cuda, cuda:N or mps "
                         f"(here: {', '.join(available_devices())})") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (resolved.index or 0) >= count:
            raise InputError(f"--device {device}: no such GPU here ({count} CUDA device(s); available: "
                             f"{', '.join(available_devices())})")
    elif resolved.type == "mps" and "mps" not in available_devices():
        raise InputError(f"--device {device}: MPS is not available here (available: {', '.join(available_devices())})")
    elif resolved.type not in ("cpu", "cuda", "mps", "meta"):
        raise InputError(f"--device {device}: tamer runs on cpu, cuda or mps (available: "
                         f"{', '.join(available_devices())})")
    return resolved
