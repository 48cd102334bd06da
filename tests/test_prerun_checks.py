"""Checks before a run, not failures in it: GPU layers on a llama.cpp without GPU offload, more processes than
GPUs, a teacher that cannot score text for Tuna_p (refused by `teachloop plan`, by validation and by the stage), and
the paper-scale profile of docs/paper-scale.md, which must validate as written on the machine it describes."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from teachloop.cli import main as cli
from teachloop.config import ConfigError, build, load_section
from teachloop.llm import LLMConfig
from teachloop.plan import plan
from teachloop.student.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
API_TEACHER = {"backend": "openai", "server": "openai", "model": "gpt-4o-mini", "base_url": "https://api.openai.com/v1",
               "api": "chat"}


def offload(monkeypatch, supported: bool) -> None:
    import llama_cpp

    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: supported)


def test_gpu_layers_without_gpu_offload_is_an_error_naming_the_build(monkeypatch):
    cfg = {"backend": "llamacpp", "gguf": "m.gguf", "n_gpu_layers": -1}
    offload(monkeypatch, False)
    with pytest.raises(ConfigError) as err:
        build(LLMConfig, cfg, "student.llm")
    assert "student.llm.n_gpu_layers" in str(err.value) and 'LLAMA_CMAKE_ARGS="-DGGML_CUDA=on" && make setup' in str(err.value)
    offload(monkeypatch, True)
    assert build(LLMConfig, cfg, "student.llm").n_gpu_layers == -1
    offload(monkeypatch, False)
    assert build(LLMConfig, {**cfg, "n_gpu_layers": 0}, "student.llm").n_gpu_layers == 0  # the CPU default


def test_the_installed_llama_cpp_is_judged_by_its_own_answer():
    import llama_cpp

    cfg = {"backend": "llamacpp", "gguf": "m.gguf", "n_gpu_layers": 1}
    if llama_cpp.llama_supports_gpu_offload():
        build(LLMConfig, cfg, "teacher")
    else:  # this CPU machine's build
        with pytest.raises(ConfigError, match="without it"):
            build(LLMConfig, cfg, "teacher")


def test_more_processes_than_gpus_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for device in ("cuda", "auto"):
        with pytest.raises(ConfigError, match=r"processes is 4 but torch sees 2 CUDA GPU"):
            build(TrainConfig, {"processes": 4, "device": device}, "sft.train")
    assert build(TrainConfig, {"processes": 2, "device": "cuda"}, "sft.train").processes == 2
    assert build(TrainConfig, {"processes": 4, "device": "cpu"}, "sft.train").processes == 4  # gloo on the CPU


def test_served_names_must_differ():
    with pytest.raises(ConfigError, match="share a served name"):
        build(LLMConfig, {"backend": "openai", "model": "b", "base_url": "u", "served": {"a": "x", "c": "x"}}, "s")


def test_a_teacher_that_cannot_score_is_refused_by_plan_and_by_the_stage(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["teacher"].update(API_TEACHER)
    with pytest.raises(ConfigError, match="server 'openai' does not return"):
        plan(params, ROOT / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(cli, ["plan", "--params", str(tmp_path / "params.yaml"), "--dvc-yaml",
                                      str(ROOT / "dvc.yaml"), "--tokenizer", ""])
    assert result.exit_code != 0 and "probabilistic_sets" in result.output and "Traceback" not in result.output
    from stages import score_probabilistic

    (tmp_path / "c.jsonl").write_text("")
    result = CliRunner().invoke(score_probabilistic.main, ["--params", str(tmp_path / "params.yaml"), "--candidates",
                                                           str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "o"),
                                                           "--counts", str(tmp_path / "n.json")])
    assert isinstance(result.exception, ConfigError) and not (tmp_path / "n.json").exists()
    # the same teacher behind vLLM scores; with no probabilistic set the API teacher is fine
    assert plan({**params, "teacher": {**params["teacher"], "server": "vllm"}}, ROOT / "dvc.yaml")
    assert plan({**params, "probabilistic_sets": []}, ROOT / "dvc.yaml")


def merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def paper_profile() -> dict:
    text = (ROOT / "docs" / "paper-scale.md").read_text()
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))


def test_the_paper_profile_validates_on_the_machine_it_describes(monkeypatch):
    """docs/paper-scale.md's profile, merged into params.yaml (merge keys resolved first, as YAML does), on 8 GPUs
    with a CUDA build of llama.cpp: every section it touches builds; the served student batches requests."""
    offload(monkeypatch, True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    params = merged(yaml.safe_load((ROOT / "params.yaml").read_text()), paper_profile())
    for section in ("sft.train", "citing.train", "method_train"):
        load_section(params, section, TrainConfig)
    student = build(LLMConfig, params["student"]["llm"], "student.llm")
    assert student.backend == "openai" and student.server == "vllm" and student.max_concurrency >= 8
    teacher = load_section(params, "teacher", LLMConfig)
    assert teacher.can_score_text()  # Tuna_p stays in the pipeline
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="processes"):
        load_section(params, "sft.train", TrainConfig)
