"""Precision chosen by what the CPU really has (bf16 autocast is 4-12x slower without native bf16)."""

import torch

from id3pm import hardware

ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
SAPPHIRE = "flags\t\t: avx2 avx512f amx_bf16 amx_tile\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert not hardware.cpu_has_native_bf16(ZEN3)
    assert hardware.cpu_has_native_bf16(ZEN4)
    assert hardware.cpu_has_native_bf16(SAPPHIRE)
    assert not hardware.cpu_has_native_bf16("")  # unknown: assume the slow path
    # avx512f alone is not enough: bf16 dot products need avx512_bf16 or AMX
    assert not hardware.cpu_has_native_bf16("flags\t: avx2 avx512f avx512bw\n")


def test_auto_precision_follows_the_flags(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    assert hardware.auto_precision("cpu") == "fp32"
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    assert hardware.auto_precision("cpu") == "bf16"
    assert hardware.auto_precision(torch.device("cuda")) == "bf16"
    assert "bf16" in hardware.cpu_description()
