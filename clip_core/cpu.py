"""What this CPU computes natively: the instruction sets behind fast bf16 inference, read from the OS.

bf16 is only faster than fp32 on CPUs with bfloat16 dot-product instructions (x86: AVX512-BF16 or AMX-BF16;
Arm: the BF16 extension). Elsewhere every framework emulates it: on an AVX2 AMD EPYC a ViT-B/32 ran in bf16
at 0.13-0.15x its fp32 speed in torch and 0.6-0.96x in TF and JAX. int8 has fast kernels on AVX2 as well,
but without VNNI their u8 x s8 pair sums saturate int16 (:func:`int8_saturates`).

Linux only: ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on Arm). Elsewhere the answer is ``None``
(unknown), and nothing is claimed.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Optional

__all__ = ["cpu_name", "cpu_flags", "parse_cpuinfo", "native_bf16", "has_bf16", "int8_saturates", "int8_saturates_on",
           "BF16_FLAGS", "VNNI_FLAGS"]

#: Any one of these flags means the CPU multiplies bfloat16 in hardware.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
#: x86 int8 dot products that accumulate u8 x s8 straight into int32.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_CPUINFO = Path("/proc/cpuinfo")


def parse_cpuinfo(text: str) -> Optional[frozenset[str]]:
    """The first processor's feature flags in ``/proc/cpuinfo`` text (x86 ``flags``, Arm ``Features``),
    lowercased; None when the text has neither line."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.lower().split())
    return None


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> Optional[str]:
    """The text of ``/proc/cpuinfo``, or None where there is none (not Linux) or it cannot be read."""
    if platform.system() != "Linux":
        return None
    try:
        return _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def cpu_flags() -> Optional[frozenset[str]]:
    """This CPU's feature flags (e.g. ``avx2``, ``avx512_bf16``), or None where the OS does not say (not Linux)."""
    text = _cpuinfo()
    return None if text is None else parse_cpuinfo(text)


def cpu_name() -> str:
    """This CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows (e.g. ``arm``, ``x86_64``)."""
    for line in (_cpuinfo() or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine()


def has_bf16(flags: Optional[frozenset[str]]) -> Optional[bool]:
    """True when ``flags`` include bfloat16 arithmetic, False when they are known and lack it, None when unknown."""
    return None if flags is None else any(flag in flags for flag in BF16_FLAGS)


def native_bf16() -> Optional[bool]:
    """:func:`has_bf16` of this CPU."""
    return has_bf16(cpu_flags())


def int8_saturates_on(flags: Optional[frozenset[str]], machine: str) -> bool:
    """True on an x86 CPU without VNNI, or x86 whose ``flags`` are unknown (None): there oneDNN's int8 products add
    pairs of u8 x s8 into int16 (``vpmaddubsw``), which saturates once activations use all 8 bits
    (2·255·127 > 32767), so activations must be quantized to 7 bits, as fbgemm's ``reduce_range`` does.
    ``machine`` is :func:`platform.machine`'s answer (``x86_64``, ``aarch64``, ...)."""
    if machine.lower() not in _X86:
        return False
    return flags is None or not any(flag in flags for flag in VNNI_FLAGS)


def int8_saturates() -> bool:
    """:func:`int8_saturates_on` of this CPU."""
    return int8_saturates_on(cpu_flags(), platform.machine())
