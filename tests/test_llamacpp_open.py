"""Every llama.cpp model the project opens follows the extra-buffer rule (no AMX crash), in-process and served.

The rule itself is checked with the build and CPU mocked both ways (no AMX CPU is needed); a source scan fails if
any project code opens a model or starts a server another way; the real tests show the setting reaching llama.cpp
(its load log names the repacked buffer only when extra buffers are on).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from teachloop.llm import llamacpp_open
from teachloop.llm.llamacpp_open import ENV, cpu_flags, extra_buffers_allowed

ROOT = Path(__file__).resolve().parent.parent
AMX_BUILD = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |"
PLAIN_BUILD = "CPU : SSE3 = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | REPACK = 1 |"
AMX_CPU = {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
OTHER_CPU = {"avx2", "avx512f", "avx512_bf16"}

# Names through which llama-cpp-python loads model weights; only the module that applies the rule may use them.
LOADERS = {"Llama", "LlamaModel", "llama_model_load_from_file", "llama_load_model_from_file"}
SAFE = {ROOT / "teachloop/llm/llamacpp_open.py", ROOT / "teachloop/llm/serve.py",
        Path(__file__).resolve()}  # this file spells out the patterns it looks for


@pytest.mark.parametrize("info,flags,allowed", [
    (AMX_BUILD, AMX_CPU, False),  # the crash: AMX kernels compiled and AMX tiles present
    (AMX_BUILD, OTHER_CPU, True),  # a native AMX build on a CPU without AMX never uses the AMX buffer
    (PLAIN_BUILD, AMX_CPU, True),  # the Makefile's default build has no AMX kernels: repack stays on
    (PLAIN_BUILD, set(), True),
])
def test_extra_buffers_are_off_exactly_where_amx_would_run(info, flags, allowed, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert extra_buffers_allowed(info, flags) is allowed


def test_the_override_wins_and_a_bad_value_is_refused(monkeypatch):
    monkeypatch.setenv(ENV, "on")
    assert extra_buffers_allowed(AMX_BUILD, AMX_CPU) is True
    monkeypatch.setenv(ENV, "off")
    assert extra_buffers_allowed(PLAIN_BUILD, OTHER_CPU) is False
    monkeypatch.setenv(ENV, "maybe")
    with pytest.raises(ValueError, match="auto, on or off"):
        extra_buffers_allowed(PLAIN_BUILD, OTHER_CPU)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx2 amx_tile amx_int8\n\n")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_tile", "amx_int8"}
    assert cpu_flags(tmp_path / "absent") == set()


def test_the_rule_sets_the_model_params_llama_starts_from(monkeypatch):
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params
    for allowed in (False, True):
        monkeypatch.setattr(llamacpp_open, "extra_buffers_allowed", lambda allowed=allowed: allowed)
        with llamacpp_open.extra_buffer_rule():
            assert lib.llama_model_default_params().use_extra_bufts is allowed
        assert lib.llama_model_default_params is original


def loads_outside_the_rule(path: Path) -> list[str]:
    """Places in one file that open a llama.cpp model or start llama-cpp-python's server directly."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llama_cpp"):
            if node.module.startswith("llama_cpp.server"):
                found.append(f"{path.name}:{node.lineno} imports {node.module}")
            found += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names if a.name in LOADERS]
        elif isinstance(node, ast.Attribute) and node.attr in LOADERS and isinstance(node.value, ast.Name) \
                and node.value.id.startswith("llama_cpp"):
            found.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Constant) and node.value == "llama_cpp.server":  # `python -m llama_cpp.server`
            found.append(f"{path.name}:{node.lineno} starts llama_cpp.server")
    return found


def test_the_scan_sees_each_way_of_opening_a_model(tmp_path):
    src = tmp_path / "bad.py"
    src.write_text("from llama_cpp import Llama\nimport llama_cpp\nllama_cpp.Llama(model_path='m')\n"
                   "cmd = ['python', '-m', 'llama_cpp.server']\nfrom llama_cpp.server.app import create_app\n")
    assert len(loads_outside_the_rule(src)) == 4


def test_no_project_code_opens_a_llama_cpp_model_outside_the_rule():
    files = [p for folder in ("teachloop", "stages", "benchmarks", "tests") for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 40
    found = [hit for p in files if p not in SAFE for hit in loads_outside_the_rule(p)]
    assert not found, "open llama.cpp models with teachloop.llm.llamacpp_open.open_llama and serve them with " \
                      "`python -m teachloop.llm.serve`: " + "; ".join(found)


def load_log(capfd, gguf: Path) -> tuple[bool, str]:
    """(use_extra_bufts as llama.cpp got it, llama.cpp's load log) for one verbose load and a short completion."""
    llm = llamacpp_open.open_llama(model_path=str(gguf), n_ctx=256, n_threads=2, seed=1, verbose=True)
    text = llm.create_completion("The capital of France is", max_tokens=4, temperature=0.0)["choices"][0]["text"]
    assert text
    setting = llm.model_params.use_extra_bufts
    llm.close()
    return setting, capfd.readouterr().err


@pytest.mark.slow
def test_the_setting_reaches_llama_cpp_in_process(base_gguf, capfd, monkeypatch):
    monkeypatch.setenv(ENV, "off")
    off, log_off = load_log(capfd, base_gguf)
    monkeypatch.setenv(ENV, "on")
    on, log_on = load_log(capfd, base_gguf)
    assert (off, on) == (False, True)
    assert "CPU_REPACK" in log_on and "CPU_REPACK" not in log_off


@pytest.mark.slow
def test_the_setting_reaches_the_served_model(base_gguf, tmp_path, monkeypatch):
    from teachloop.llm.testserver import llama_cpp_server

    logs = {}
    for setting in ("off", "on"):
        monkeypatch.setenv(ENV, setting)
        logs[setting] = tmp_path / f"server-{setting}.log"
        with llama_cpp_server(["--model", str(base_gguf), "--n_ctx", "256", "--n_threads", "2"],
                              log=logs[setting]):
            pass
    assert "CPU_REPACK" in logs["on"].read_text() and "CPU_REPACK" not in logs["off"].read_text()
