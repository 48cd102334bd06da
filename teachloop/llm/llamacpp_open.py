"""The one way this project opens a llama.cpp model: `open_llama(...)` in-process, and `python -m
teachloop.llm.serve` for the OpenAI-compatible servers it starts. Both apply the same extra-buffer rule.

Why a rule: llama.cpp moves weights into "extra" CPU buffer types when it can. One is its weight repacking
(interleaved layouts for its AVX2 / AVX512 / NEON matmuls: a real speed-up, worth keeping). Another, in a build
that compiled AMX kernels running on a CPU with AMX tiles (4th-generation Xeon and later), is the AMX buffer,
whose Q4_K matmul segfaults at the first generation (llama.cpp issue "segfault in ggml_backend_amx_mul_mat";
closed upstream without a fix). The model parameter `use_extra_bufts` switches all of them off together, and
`Llama()` has no argument for it, so it is set here, off exactly where AMX would be used. The Makefile's default
build compiles no AMX code, so there the repack stays on on every CPU (docs/cpu.md).

TEACHLOOP_LLAMA_EXTRA_BUFFERS=on|off overrides the rule (auto, the default, applies it), e.g. to rule the
buffers out when a crash is suspected on another CPU.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from ..machine import cpu_flags

ENV = "TEACHLOOP_LLAMA_EXTRA_BUFFERS"


def build_info() -> str:
    """llama.cpp's own summary of what this build compiled, e.g. `CPU : AVX2 = 1 | ... | REPACK = 1 |`."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", "replace")


def extra_buffers_allowed(info: str | None = None, flags: set[str] | None = None) -> bool:
    """False where llama.cpp would put weights into its AMX buffer: a build with AMX kernels on a CPU with AMX."""
    override = os.environ.get(ENV, "auto")
    if override not in ("auto", "on", "off"):
        raise ValueError(f"{ENV}={override!r}: use auto, on or off")
    if override != "auto":
        return override == "on"
    info = build_info() if info is None else info
    flags = cpu_flags() if flags is None else flags
    return not ("AMX_INT8 = 1" in info and "amx_tile" in flags)


@contextlib.contextmanager
def extra_buffer_rule() -> Iterator[bool]:
    """Every llama.cpp model opened inside the block follows `extra_buffers_allowed()`; yields the setting.

    `Llama()` reads its model parameters from `llama_model_default_params()` and then sets the fields it has
    arguments for; `use_extra_bufts` is not one of them, so the defaults it starts from are the place to set it.
    """
    import llama_cpp.llama_cpp as lib

    allowed = extra_buffers_allowed()
    if not allowed:
        print("llama.cpp: AMX kernels on an AMX CPU, so extra buffer types (AMX, repack) are off: docs/cpu.md",
              file=sys.stderr)
    defaults = lib.llama_model_default_params

    def model_params():
        params = defaults()
        params.use_extra_bufts = allowed
        return params

    lib.llama_model_default_params = model_params
    try:
        yield allowed
    finally:
        lib.llama_model_default_params = defaults


def open_llama(**kwargs):
    """`llama_cpp.Llama(**kwargs)` under the extra-buffer rule."""
    from llama_cpp import Llama

    with extra_buffer_rule():
        return Llama(**kwargs)
