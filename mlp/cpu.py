"""Which CPU this is, by model, instruction-set flags and cores (not by the end of a string), and how busy the
host was meanwhile (steal time and other processes, from /proc/stat). No torch: the pages use it too."""
from __future__ import annotations

import os
import re
from pathlib import Path

# The flags that decide which matmul and convolution kernels torch runs, from the oldest to the newest.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
ISA_NAMES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX-512+BF16", "amx_bf16": "AMX"}
CAPS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")  # a capped ISA is another machine

# The development CPU, on which budgets are set: a 2-core AMD EPYC with AVX2 and no AVX-512.
DEV_CPU = dict(model="AMD EPYC", cores=2, isa="AVX2", caps=[])


def identity(cpuinfo: str | None = None, cores: int | None = None, env=os.environ) -> dict:
    """This CPU: its model name, the ISA flags it has of ISA_FLAGS, the newest of them (`isa`), its cores, and
    any environment variable that caps the ISA torch uses."""
    if cpuinfo is None:
        p = Path("/proc/cpuinfo")
        cpuinfo = p.read_text() if p.exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
                 "unknown CPU")
    flags = set(cpuinfo.split())
    have = [f for f in ISA_FLAGS if f in flags]
    return dict(model=model, cores=cores or os.cpu_count(), flags=have,
                isa=ISA_NAMES[have[-1]] if have else None, caps=[f"{v}={env[v]}" for v in CAPS if env.get(v)])


def from_hardware(hardware: str) -> dict | None:
    """A record's CPU from its hardware string (mlp/hardware.describe: "AMD EPYC (2 cores, 2 threads, AVX2)");
    None for a GPU or a string of another shape."""
    m = re.fullmatch(r"(.+) \((\d+) cores, \d+ threads(?:, ([^,=]+))?((?:, [A-Z_]+=[^,]+)*)\)", hardware)
    if not m:
        return None
    caps = [c.strip() for c in m.group(4).split(",") if c.strip()]
    return dict(model=m.group(1), cores=int(m.group(2)), isa=m.group(3), caps=caps)


def same(a: dict | None, b: dict | None) -> bool:
    """The same kind of CPU: model, cores, newest ISA and caps all equal."""
    return bool(a and b) and all(a.get(k) == b.get(k) for k in ("model", "cores", "isa", "caps"))


def is_dev(hardware_or_identity) -> bool:
    ident = from_hardware(hardware_or_identity) if isinstance(hardware_or_identity, str) else hardware_or_identity
    return same(ident, DEV_CPU)


def key(ident: dict) -> str:
    """A file name for a CPU: "amd-epyc-2c-avx2"."""
    words = [ident["model"], f"{ident['cores']}c", ident.get("isa") or "noisa", *ident.get("caps", [])]
    return re.sub(r"[^a-z0-9]+", "-", " ".join(words).lower().replace("(r)", "").replace("+", "-")).strip("-")


def stat_times(path="/proc/stat") -> dict | None:
    """The host's CPU time so far, in seconds, from the first line of /proc/stat: busy, idle, steal, total."""
    p = Path(path)
    if not p.exists():
        return None
    fields = [int(x) for x in p.read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    hz = os.sysconf("SC_CLK_TCK")
    busy = user + nice + system + irq + softirq
    return dict(busy=busy / hz, idle=(idle + iowait) / hz, steal=steal / hz, total=(busy + idle + iowait + steal) / hz)


def own_seconds() -> float:
    """This process's CPU seconds (all its threads), user and system."""
    t = os.times()
    return t.user + t.system


def load_between(before: dict | None, after: dict | None, own: float) -> dict:
    """The share of the host's CPU time between two `stat_times` that the hypervisor stole, and that processes
    other than this one used (their busy time, less ours). Zeros where /proc/stat cannot be read."""
    if not before or not after or after["total"] <= before["total"]:
        return dict(steal=0.0, others=0.0, readable=False)
    total = after["total"] - before["total"]
    steal = (after["steal"] - before["steal"]) / total
    others = max(0.0, (after["busy"] - before["busy"] - own) / total)
    return dict(steal=steal, others=others, readable=True)
