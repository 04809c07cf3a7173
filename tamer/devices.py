"""Device and precision choice shared by the command line, evaluation and training.

``auto`` means CUDA when there is a GPU for a device, and bf16 where it is fast for a precision (GPUs with bf16,
CPUs with AMX or AVX512-BF16; on AVX2-only CPUs bf16 autocast is many times slower than fp32).

A device that does not exist here (``cuda:7`` on a machine with one GPU, ``cuda`` without one, a typo) is refused
at once with what is available, instead of failing deep inside the first ``.to()``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from tamer.guards import PRECISIONS, InputError

__all__ = ["PRECISIONS", "Precision", "autocast", "available_devices", "cpu_bf16_feature", "cpu_vendor",
           "resolve_device", "resolve_memory_format", "resolve_precision"]


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


# -- precision --------------------------------------------------------------------------------------------------------
FORCED = "as asked"  # the reason of a precision given as fp32, bf16 or fp16


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is fp32, bf16 or fp16; ``reason`` says why (for the one line printed)."""

    name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for fp32 (no autocast)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def __str__(self) -> str:
        """``bf16 (auto: this CPU has AMX)`` when auto chose, the bare name when it was forced."""
        return self.name if self.reason == FORCED else f"{self.name} ({self.reason})"


def _cpuinfo(field: str) -> str:
    """The first CPU's ``field`` in /proc/cpuinfo (``flags``, ``vendor_id``), or "" where there is none (macOS,
    Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                name, _, value = line.partition(":")
                if name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ""


def _cpuinfo_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    return set(_cpuinfo("flags").split())


def cpu_vendor() -> str:
    """``AuthenticAMD``, ``GenuineIntel``, ... from /proc/cpuinfo, or "" where it does not say."""
    return _cpuinfo("vendor_id")


def cpu_bf16_feature() -> str | None:
    """The feature that makes bf16 fast on this CPU (``AMX``, ``AVX512-BF16``), or None (AVX2-only and others).

    ``torch.backends.cpu.get_cpu_capability()`` says ``AMX`` on Sapphire Rapids and later, but only ``AVX512`` on
    AMD Zen 4, which has AVX512-BF16 too; the Linux flags ``amx_bf16``/``avx512_bf16`` tell them apart.
    """
    capability = torch.backends.cpu.get_cpu_capability().upper()
    flags = _cpuinfo_flags()
    if "AMX" in capability or "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


def _cuda_bf16(device: torch.device) -> bool:
    """Native bf16 on this GPU (Ampere and later); emulated bf16 on older GPUs is slow and does not count."""
    with torch.cuda.device(device):
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before 2.3 has no including_emulation (and counts only native bf16)
            return torch.cuda.is_bf16_supported()


def resolve_precision(precision: str, device: str | torch.device) -> Precision:
    """``auto`` -> bf16 where it is fast on ``device`` (CUDA with bf16, CPUs with AMX or AVX512-BF16), else fp32.

    ``fp32``, ``bf16`` and ``fp16`` are kept as given. Anything else is refused by name.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return Precision(precision, FORCED)
    device = torch.device(device)
    if device.type == "cuda":
        if _cuda_bf16(device):
            return Precision("bf16", "auto: this GPU supports bf16")
        return Precision("fp32", "auto: this GPU has no fast bf16")
    if device.type == "cpu":
        feature = cpu_bf16_feature()
        if feature:
            return Precision("bf16", f"auto: this CPU has {feature}")
        capability = torch.backends.cpu.get_cpu_capability()
        return Precision("fp32", f"auto: this CPU ({capability}) has no AMX or AVX512-BF16")
    return Precision("fp32", f"auto: bf16 is not known to be fast on {device.type}")


def autocast(device: str | torch.device, precision: Precision):
    """The autocast context of a resolved precision (a no-op context for fp32)."""
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=precision.dtype)


MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def resolve_memory_format(memory_format: str, device: str | torch.device,
                          modules: list[torch.nn.Module]) -> torch.memory_format:
    """``auto`` -> channels-last for convolutional ``modules`` (any 4-d weight) on a CPU, else contiguous.

    oneDNN's convolutions run faster on channels-last weights: a training step of the demo's 32×32 VQGAN and of a
    128×128 one about 1.1× (BENCHMARKS.md). On GPUs it is not measured here, so ``auto`` leaves them contiguous;
    ``channels_last`` asks for it anywhere. A transformer has no 4-d weight: nothing changes.
    """
    if memory_format not in MEMORY_FORMATS:
        raise InputError(f"memory_format: expected one of {', '.join(MEMORY_FORMATS)}, got {memory_format!r}")
    if memory_format == "auto":
        convolutional = any(p.dim() == 4 for m in modules for p in m.parameters())
        memory_format = "channels_last" if convolutional and torch.device(device).type == "cpu" else "contiguous"
    return torch.channels_last if memory_format == "channels_last" else torch.contiguous_format


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS tells it, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def data_loader_workers(requested: int, processes_per_machine: int = 1) -> tuple[int, str | None]:
    """``requested`` loader workers capped to what the machine can feed: one core per training process is left to
    its main thread, so a preset's 8 workers become 1 on 2 cores (more only fight the model for the cores).
    Returns the count and a note when it was lowered."""
    spare = max(0, usable_cpus() // max(1, processes_per_machine) - 1)
    if requested <= spare:
        return requested, None
    return spare, f"num_workers: {requested} asked, {spare} used ({usable_cpus()} CPUs for {processes_per_machine} " \
                  f"training process{'es' if processes_per_machine > 1 else ''})"

