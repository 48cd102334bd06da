"""What machine a figure came from: CPU model and the flags that decide its speed (bf16/AMX/AVX-512), torch and
its threads, any GPU. Every benchmark writes it next to its figures (`write_figures`), so a number read on another
machine says which CPU it belongs to."""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

# The flags that change what the training and scoring kernels can use (Linux /proc/cpuinfo names).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
               "amx_int8", "amx_fp16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as Linux reports them (x86 "flags", Arm "Features"); empty where there is no
    /proc/cpuinfo (macOS)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8")
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def cpu_bf16_units() -> list[str]:
    """The bf16 matrix units this CPU has, as its Linux flags name them: "amx_bf16" (Intel AMX tiles, 4th-gen Xeon
    Scalable on), "avx512_bf16" (AVX512-BF16 dot products: Intel Cooper Lake on, AMD Zen 4 on); [] for none.

    Asked of torch (the cpuinfo library it dispatches its own kernels by, so what it reports is what oneDNN uses,
    on any OS); /proc/cpuinfo answers only if this torch lacks those checks.
    """
    import torch

    checks = {"amx_bf16": getattr(torch.cpu, "_is_amx_tile_supported", None),
              "avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None)}
    if all(check is not None for check in checks.values()):
        return [name for name, check in checks.items() if check()]
    flags = cpu_flags()
    return [name for name in checks if name in flags]


def cpu_model() -> str:
    """lscpu's "Model name" (e.g. "AMD EPYC", "Intel(R) Xeon(R) Platinum 8488C"), else what platform knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True,
                             env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    names = [ln.partition(":")[2].strip() for ln in out.splitlines() if ln.strip().startswith("Model name")]
    return names[0] if names else (platform.processor() or platform.machine())


def describe() -> dict:
    """The machine a benchmark ran on, as plain JSON."""
    import torch

    flags = cpu_flags()
    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "cpu_flags": [f for f in SPEED_FLAGS if f in flags],
            "bf16_units": cpu_bf16_units(),
            "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_figures(out: str | Path, figures: dict) -> None:
    """Write a benchmark's figures to `out` as JSON, with the machine they were measured on under "machine"."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": describe(), **figures}, indent=2) + "\n", encoding="utf-8")
