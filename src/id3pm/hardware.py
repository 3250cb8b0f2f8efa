"""What the machine can do fast, detected rather than assumed.

CPUs of the same cloud "kind" differ: a Zen 4 has AVX-512 BF16 and runs bf16 autocast
about twice as fast as fp32, a Zen 3 has AVX2 only and runs the same bf16 autocast 4 to
12 times SLOWER (oneDNN emulates bf16 there). So "auto" precision means bf16 on a GPU,
bf16 on a CPU with native bf16 instructions, and fp32 everywhere else.
"""

from __future__ import annotations

from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 dot products


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where unknown)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    return bool(cpu_flags(cpuinfo) & set(NATIVE_BF16_FLAGS))


def cpu_description() -> str:
    """One line for logs and result tables, e.g. 'AVX512 + native bf16'."""
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{capability} + native bf16" if cpu_has_native_bf16() else f"{capability}, no native bf16"


def auto_precision(device: torch.device | str) -> str:
    """'bf16' where bf16 is fast (GPU, or a CPU with native bf16), else 'fp32'."""
    if torch.device(device).type == "cuda":
        return "bf16"
    return "bf16" if cpu_has_native_bf16() else "fp32"
