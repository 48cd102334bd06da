"""Where and how training runs, through Hugging Face `accelerate`: the device, the precision, and data-parallel
processes started by `accelerate launch`.

A training stage with `processes: N > 1` started as a plain script (as `dvc repro` starts it) runs its own command
again as N processes under `accelerate launch` and exits with their status; in those processes only the main one
writes outputs. On a CPU they talk over gloo, so this machine tests it; on GPUs the same launch uses one per process.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from contextlib import nullcontext

import torch

from ..config import ConfigError
from ..machine import cpu_bf16_units

DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("auto", "fp32", "bf16")


def device_name(requested: str) -> str:
    """cuda > mps > cpu for auto; a requested device that is not there is an error, not a silent CPU run."""
    available = {"cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                 "cpu": True}
    if requested == "auto":
        return next(name for name in ("cuda", "mps", "cpu") if available[name])
    if not available[requested]:
        raise ConfigError(f"train.device is {requested!r}, but torch sees no {requested} device here; "
                          f"set device: auto (or cpu)")
    return requested


def precision_name(requested: str, device: str) -> str:
    """auto: bf16 on a CUDA GPU that supports it and on a CPU with bf16 matrix units (`cpu_bf16_units`), fp32
    elsewhere: without those units a CPU emulates bf16 matmuls, slower than fp32."""
    if requested != "auto":
        return requested
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device == "cpu" and cpu_bf16_units() else "fp32"


def dtype_of(precision: str, device: str) -> torch.dtype:
    """The dtype the frozen base is loaded in: bf16 under bf16 training (LoRA weights stay fp32), else fp32."""
    return torch.bfloat16 if precision_name(precision, device) == "bf16" else torch.float32


def accelerator(device: str = "auto"):
    """An `accelerate.Accelerator` on the resolved device; it joins the process group `accelerate launch` set up,
    if any. Precision is not its business here (see `autocast`): accelerate keeps one precision per process, and
    a process may train twice (tests, notebooks)."""
    from accelerate import Accelerator

    return Accelerator(cpu=device_name(device) == "cpu")


def autocast(precision: str, device: torch.device):
    """The context a forward pass runs in: bf16 autocast (fp32 master weights and optimiser) or nothing."""
    if precision_name(precision, device.type) == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext


def lora_inputs_as_they_come(model, precision: str, device: torch.device):
    """Under bf16 autocast, a context in which PEFT does not cast each LoRA layer's input up to the adapter's fp32:
    autocast casts it straight back to bf16 for the matmul, so the cast is two copies of every layer input (and an
    fp32 dropout) for nothing. fp32 runs (and a model without adapters) are left as they are."""
    if precision_name(precision, device.type) != "bf16" or not hasattr(model, "peft_config"):
        return nullcontext()
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model)


def launched() -> bool:
    """True inside processes that `accelerate launch` (torchrun) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def relaunch(processes: int) -> int:
    """Run this process's own script and arguments again as `processes` processes under `accelerate launch`.

    `--multi_gpu` is accelerate's data-parallel launcher (torchrun); without GPUs its processes join a gloo group.
    Port 0: accelerate picks a free one, so two runs on one machine do not collide.
    """
    import __main__

    script = getattr(__main__, "__file__", None)
    if not script or getattr(__main__, "__spec__", None) is not None:
        raise ConfigError(f"train.processes is {processes}: only a stage script can relaunch itself; from Python, "
                          f"run your script with `accelerate launch --multi_gpu --num_processes {processes} ...`")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no",
           "--dynamo_backend", "no", script, *sys.argv[1:]]
    print(f"train.processes={processes}: relaunching as {shlex.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.call(cmd)
