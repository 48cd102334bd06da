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
