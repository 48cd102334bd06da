"""LoRA target modules against the model that is loaded: all-linear resolved per architecture, an explicit name that
matches no linear layer refused before any weight is read, and a continued adapter compared as resolved layers."""
from __future__ import annotations

import json

import pytest

from teachloop.config import ConfigError, build
from teachloop.student.model import LoraConfig, check_lora_matches, model_skeleton, resolve_targets
from teachloop.student.train import TrainConfig, train_adapter


@pytest.fixture
def phi3_dir(tmp_path):
    """A dir with only a tiny Phi-3's config.json (fused qkv_proj and gate_up_proj; no weights at all)."""
    from transformers import Phi3Config

    Phi3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, pad_token_id=0).save_pretrained(tmp_path)
    return tmp_path


def test_all_linear_is_the_default_and_resolves_to_each_architectures_layers(phi3_dir):
    assert LoraConfig().target_modules == "all-linear"
    assert resolve_targets(LoraConfig(), model_skeleton(phi3_dir)) == ["down_proj", "gate_up_proj", "o_proj",
                                                                        "qkv_proj"]


def test_a_name_the_model_lacks_is_a_params_error_listing_its_linear_layers(phi3_dir, tmp_path):
    llama_names = LoraConfig(target_modules=["q_proj", "k_proj", "o_proj"])
    with pytest.raises(ConfigError) as err:
        resolve_targets(llama_names, model_skeleton(phi3_dir), "sft.train.lora")
    msg = str(err.value)
    assert "sft.train.lora.target_modules" in msg and "['q_proj', 'k_proj']" in msg and "qkv_proj" in msg
    # The training entry point refuses it before reading a weight (the dir has none) or starting a process.
    cfg = TrainConfig(lora=llama_names, processes=2)
    with pytest.raises(ConfigError, match=r"\['q_proj', 'k_proj'\] match no linear layer"):
        train_adapter(phi3_dir, [{"prompt": "p", "response": "r"}], None, cfg, tmp_path / "out",
                      lora_key="sft.train.lora")


def test_target_modules_is_all_linear_or_a_nonempty_list():
    assert build(LoraConfig, {"target_modules": ["qkv_proj"]}, "lora").target_modules == ["qkv_proj"]
    for bad in ("all_linear", []):
        with pytest.raises(ConfigError, match="target_modules"):
            build(LoraConfig, {"target_modules": bad}, "lora")


def test_a_continued_adapter_matches_all_linear_by_the_layers_it_names(phi3_dir, tmp_path):
    saved = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "base_model_name_or_path": str(phi3_dir),
             "target_modules": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]}
    (tmp_path / "adapter_config.json").write_text(json.dumps(saved))
    check_lora_matches(LoraConfig(), tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({**saved, "target_modules": ["o_proj", "down_proj"]}))
    with pytest.raises(ConfigError, match="target_modules"):
        check_lora_matches(LoraConfig(), tmp_path)
