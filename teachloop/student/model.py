"""Load the student (base HF weights + optional LoRA adapter), save adapters with their GGUF twin for llama.cpp,
and convert a GGUF base into the HF twin the trainer loads (`twins.py` does the conversions)."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ConfigError

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    r: int = 8  # adapter rank
    alpha: int = 16  # scale = alpha / r
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))  # all linear layers


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> dict:
    """The HF twin (plain fp32 safetensors + tokenizer) of a GGUF; see `twins.gguf_to_hf`."""
    from .twins import gguf_to_hf

    return gguf_to_hf(gguf_path, out_dir)


def load_tokenizer(base_dir: str | Path):
    """The dir's tokenizer.json as a fast tokenizer, with the special tokens its tokenizer_config.json names.

    `AutoTokenizer` re-reads the 33 MB Gemma tokenizer.json in Python and rebuilds it through the model's own
    tokenizer class (~2.6 s here); building straight from the file takes ~1 s and encodes the same ids
    (tests/test_student_lora.py compares them). Training adds BOS/EOS itself, so no class-specific template is lost.
    A dir without tokenizer.json falls back to `AutoTokenizer`.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    base_dir = Path(base_dir)
    if (base_dir / "tokenizer.json").exists():
        config_path = base_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        special = {}
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = config.get(key)
            value = value.get("content") if isinstance(value, dict) else value  # older configs: AddedToken dicts
            if isinstance(value, str):
                special[key] = value
        tok = PreTrainedTokenizerFast(tokenizer_file=str(base_dir / "tokenizer.json"), **special)
    else:
        tok = AutoTokenizer.from_pretrained(str(base_dir))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_student(base_dir: str | Path, adapter: str | Path | None = None, lora: LoraConfig | None = None,
                 trainable: bool = True):
    """The base model with `adapter` loaded (trainable or frozen), or with a fresh LoRA from `lora`."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    if adapter:
        model = PeftModel.from_pretrained(base, str(adapter), is_trainable=trainable)
    else:
        lora = lora or LoraConfig()
        cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(base, cfg)
    model.train(trainable)
    return model


def save_adapter(model, out_dir: str | Path, gguf_name: str | None = "adapter.gguf",
                 base_dir: str | Path | None = None) -> None:
    """Save the PEFT adapter dir and its GGUF twin (for fast llama.cpp generation) side by side.

    `base_dir` is the HF model the adapter was trained on (llama.cpp's converter reads its architecture there);
    by default the dir `load_student` loaded, which PEFT records as `base_model_name_or_path`. `gguf_name` None:
    no twin (an adapter that never generates, such as the reward model's).
    """
    from .gguf_lora import export_lora_gguf

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(str(out_dir))
    # PEFT writes target_modules from a Python set, whose order follows the per-process string hash seed: the
    # same adapter would get a different file (and DVC hash) on every run. The order carries no meaning.
    config_path = out_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if gguf_name is None:
        return
    base_dir = base_dir or config.get("base_model_name_or_path")
    if not base_dir:
        raise ConfigError(f"save_adapter({out_dir}): the adapter records no base model dir; pass base_dir")
    export_lora_gguf(out_dir, out_dir / gguf_name, base_dir)


def adapter_info(adapter_dir: str | Path) -> dict:
    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text())


def check_lora_matches(lora: LoraConfig, adapter_dir: str | Path, where: str = "lora") -> None:
    """Fail unless `lora` (the stage's settings, at params key `where`) equals the shape of the adapter it continues.

    PEFT loads a saved adapter with its own r, alpha, dropout and target modules, so different settings in params
    would be ignored without a word; an error makes the params say what actually trains.
    """
    saved = adapter_info(adapter_dir)
    pairs = {"r": (lora.r, saved.get("r")), "alpha": (lora.alpha, saved.get("lora_alpha")),
             "dropout": (lora.dropout, saved.get("lora_dropout")),
             "target_modules": (sorted(lora.target_modules), sorted(saved.get("target_modules") or []))}
    differ = {k: v for k, v in pairs.items() if v[0] != v[1]}
    if differ:
        detail = "; ".join(f"{k}: params {mine!r} vs adapter {theirs!r}" for k, (mine, theirs) in differ.items())
        raise ConfigError(f"{where} differs from the adapter it continues ({adapter_dir}/adapter_config.json): {detail}. "
                         f"A continued adapter keeps its own LoRA shape; set {where} to the adapter's values "
                         f"(or retrain that adapter with the new ones).")
