"""This CPU as the routes see it: its feature flags (``$SPAI_CPU_FLAGS`` overrides them: tests run the AMX, VNNI and
AVX2 orderings on one machine), its identity in route evidence, and the routes worth trying on it, fastest first."""

from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS_VARIABLE = "SPAI_CPU_FLAGS"


# The flags that decide the kernels of our routes: a CPU is known by its model name and these.
KERNEL_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read), or ``$SPAI_CPU_FLAGS``
    (comma- or space-separated) where set."""
    override = os.environ.get(FLAGS_VARIABLE)
    if override is not None:
        return frozenset(override.replace(",", " ").split())
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_identity(flags: frozenset[str]) -> str:
    """How route evidence names a CPU: its model and the flags that pick our kernels."""
    return f"{cpu_model_name()} [{' '.join(f for f in KERNEL_FLAGS if f in flags) or 'no SIMD flags'}]"


def has_bf16(flags: frozenset[str]) -> bool:
    """Native bf16 dot products (AVX-512 BF16 or AMX): bf16 GEMMs at about twice the fp32 rate."""
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def has_vnni(flags: frozenset[str]) -> bool:
    """Native int8 dot products (AVX-512 VNNI, AVX-VNNI or AMX-INT8): ONNX Runtime's u8s8 GEMMs without the
    saturating AVX2 fallback."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


def cpu_routes(flags: frozenset[str] | None = None) -> list[tuple[str, str]]:
    """The routes worth running on this CPU, in the order to try them (the first guess of ``auto``).

    From our measurements (``benchmarks/``): with AMX, bf16 GEMMs through oneDNN reach about 5x the fp32 rate, so
    torch bf16 leads; with VNNI (AMD EPYC / Intel without AMX), ORT int8 GEMMs reach about 3.6x the fp32 rate
    and bf16 about 2.2x, so int8 leads; otherwise fp32, ONNX Runtime (MLAS) before torch. Without VNNI int8 still
    runs (about 1.6x ORT fp32 on AVX2), but its accuracy is the CPU's: the gate decides.
    """
    flags = cpu_flags() if flags is None else flags
    routes = [("torch", "bf16")] if "amx_bf16" in flags else []
    routes += [("ort", "int8")] if has_vnni(flags) else []
    routes += [("torch", "bf16")] if has_bf16(flags) and "amx_bf16" not in flags else []
    routes += [("ort", "fp32")] + ([] if has_vnni(flags) else [("ort", "int8")])
    return routes + [("torch", "fp32")]
