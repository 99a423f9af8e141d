"""Devices and numeric precision: what runs where, and the name of the machine for the record."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device="auto") -> torch.device:
    """'auto' -> CUDA, then MPS, then CPU. An explicitly requested device that is missing is an error."""
    device = str(device)
    has = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if device == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if has[d]))
    kind = device.split(":")[0]
    if kind not in has:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or mps")
    if not has[kind]:
        raise ValueError(f"device {device!r} was requested but is not available here; use --device auto or cpu")
    return torch.device(device)


ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")  # what torch's kernels may use


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX, and torch's oneDNN kernels allowed to use them (ONEDNN_MAX_CPU_ISA can forbid it):
    bf16 matmuls run natively. Elsewhere torch emulates them, ~25x slower than fp32 (bench.py --muon-ns)."""
    cpuinfo = Path("/proc/cpuinfo")  # Linux; elsewhere we cannot tell cheaply, so stay in fp32
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    onednn_bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # torch's own matmul dispatch test
    return bool(flags & {"avx512_bf16", "amx_bf16"}) and (onednn_bf16 is None or bool(onednn_bf16()))


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products run natively (fast) on `device`."""
    device = torch.device(device)
    if device.type == "cuda":  # emulated bf16 (V100, T4) is not native: there auto takes fp16
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_precision(device: torch.device, precision="auto") -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if native_bf16(device) else "fp16"
    return "bf16" if native_bf16(device) else "fp32"


def autocast(device: torch.device, precision: str):
    dtype = None if precision == "fp32" else DTYPES[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def describe(device: torch.device) -> str:
    """The hardware a number was measured on, for every record."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), None)
    flags = set(info.split())
    isa = ("AMX" if "amx_bf16" in flags else "AVX-512+BF16" if "avx512_bf16" in flags else "AVX-512"
           if "avx512f" in flags else "AVX2" if "avx2" in flags else None)
    caps = [f"{v}={os.environ[v]}" for v in ISA_CAPS if os.environ.get(v)]  # a capped ISA is part of the machine
    return (f"{name or sys.platform} ({os.cpu_count()} cores, {torch.get_num_threads()} threads"
            f"{', ' + isa if isa else ''}{', ' + ', '.join(caps) if caps else ''})")


def cpu_workers() -> int:
    """CPUs this process may use (DataLoader workers beyond that only make torch warn)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
