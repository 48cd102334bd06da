"""A served student: `python -m llama_cpp.server` on 127.0.0.1 serves the base model and a LoRA adapter under two
names (its `--config_file` lists one model per name, the adapter's with its `lora_path`), and the answer stage
with `student.llm.backend: openai` gives the same greedy answers as the in-process llama.cpp student.

Same state on both sides: the in-process backend starts every request from a fresh context; the server keeps
no prompt cache (`cache: false`, its default) but does reuse the previous prompt's KV prefix, which cannot be
turned off there. Both sides therefore evaluate prompts with `n_batch: 1`, one token per decode: a reused
prefix then holds exactly the values a fresh evaluation computes, so the server's history cannot change an
answer (issue #10 measured 10 of 40 greedy answers changed by a kept state at the default 512-token batch;
not re-measured against the server here).
"""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from teachloop.llm.testserver import free_port, llama_cpp_server
import yaml
from click.testing import CliRunner

from teachloop.data import read_jsonl, write_jsonl

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
RECORDS = [{"id": "q1", "instruction": "Name three primary colours.", "input": "", "output": "Red, yellow, blue."},
           {"id": "q2", "instruction": "Give one tip for sleeping well.", "input": "", "output": "Keep a routine."},
           {"id": "q3", "instruction": "Summarise the text in one sentence.", "input": "Tides rise and fall twice "
            "a day because the Moon's gravity pulls the oceans.", "output": "The Moon's pull makes tides."}]
LLM_KEYS = {"n_ctx": 1024, "n_batch": 1, "n_threads": 2, "seed": 1}


@pytest.fixture(scope="module")
def server(base_gguf, adapter, tmp_path_factory):
    """llama_cpp.server serving `base` (no adapter) and `sft` (the adapter's GGUF twin) from one config file."""
    port = free_port()
    models = [{"model": str(base_gguf), "model_alias": "base", **LLM_KEYS},
              {"model": str(base_gguf), "model_alias": "sft", "lora_path": str(adapter / "adapter.gguf"), **LLM_KEYS}]
    config = tmp_path_factory.mktemp("server") / "models.json"
    config.write_text(json.dumps({"host": "127.0.0.1", "port": port, "models": models}))
    with llama_cpp_server(["--config_file", str(config)], port=port) as url:
        served = json.load(urllib.request.urlopen(f"{url}/models", timeout=5))
        assert sorted(m["id"] for m in served["data"]) == ["base", "sft"]
        yield url


def answer(tmp: Path, student: dict, name: str, adapter_dir: Path) -> list[dict]:
    from stages import answer as stage

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["student"]["llm"] = student
    params["student"]["decode"]["max_tokens"] = 24
    params["answer"]["max_per_set"] = 0
    tmp.mkdir(parents=True)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    write_jsonl(tmp / "prepared" / "test.jsonl", RECORDS)
    (tmp / "rubrics").mkdir(exist_ok=True)  # plain mode reads no rubric
    result = CliRunner().invoke(stage.main, ["--params", str(tmp / "params.yaml"), "--name", name, "--adapter",
                                             str(adapter_dir), "--mode", "plain", "--prepared", str(tmp / "prepared"),
                                             "--rubrics", str(tmp / "rubrics"), "--out", str(tmp / "out" / name),
                                             "--counts", str(tmp / "counts.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return read_jsonl(tmp / "out" / name / "test.jsonl")


def test_served_student_answers_equal_the_in_process_ones(server, adapter, base_gguf, base_model_dir, tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("TEACHLOOP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TEACHLOOP_RUNLOG", str(tmp_path / "runlog.jsonl"))
    monkeypatch.setenv("TEST_LOCAL_KEY", "not-a-secret")
    local = {"backend": "llamacpp", "gguf": str(base_gguf), **LLM_KEYS}
    served = {"backend": "openai", "model": "base", "base_url": server, "api": "completions", "server": "llamacpp",
              "api_key_env": "TEST_LOCAL_KEY", "timeout_s": 120, "served": {str(adapter): "sft"}, **LLM_KEYS}
    got = {}
    for name, adapter_dir in (("base", base_model_dir), ("sft", adapter)):
        for side, student in (("local", local), ("served", served)):
            got[name, side] = [r["answer"] for r in answer(tmp_path / f"{name}-{side}", student, name, adapter_dir)]
    assert all(a.strip() for a in got["sft", "served"])
    assert got["sft", "local"] != got["base", "local"]  # the adapter really changes the answers...
    assert got["base", "served"] == got["base", "local"]  # ...and each name serves what the stage asked for
    assert got["sft", "served"] == got["sft", "local"]


def test_an_adapter_the_server_does_not_serve_is_a_clear_error(adapter):
    from teachloop.config import ConfigError
    from teachloop.roles import student_llm

    params = {"student": {"llm": {"backend": "openai", "model": "base", "base_url": "http://127.0.0.1:9/v1",
                                  "api_key_env": "HOME", "served": {"models/other": "other"}}}}
    with pytest.raises(ConfigError, match="add `.*sft: NAME` under student.llm.served"):
        student_llm(params, adapter)
    assert student_llm(params, None).backend.cfg.model == "base"  # no adapter: the base model's name
