"""Load the student (base HF weights + optional LoRA adapter), save adapters with their GGUF twin for llama.cpp,
and convert a GGUF base into the HF twin the trainer loads (`twins.py` does the conversions)."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ConfigError

ALL_LINEAR = "all-linear"  # PEFT's name for every linear layer of the loaded model except the output layer


@dataclass
class LoraConfig:
    r: int = 8  # adapter rank
    alpha: int = 16  # scale = alpha / r
    dropout: float = 0.05
    # all-linear: whatever linear layers the loaded architecture has (LLaMA's q/k/v/o/gate/up/down, Phi-3's fused
    # qkv_proj/gate_up_proj, GPT-2's c_attn...); or a list of module names, each of which must exist in the model.
    target_modules: str | list[str] = ALL_LINEAR

    def validate(self, where: str) -> None:
        if isinstance(self.target_modules, str) and self.target_modules != ALL_LINEAR:
            raise ConfigError(f"{where}.target_modules: {self.target_modules!r} is neither {ALL_LINEAR!r} nor a "
                              f"list of module names")
        if not self.target_modules:
            raise ConfigError(f"{where}.target_modules is empty; use {ALL_LINEAR!r} or name the layers to adapt")


def linear_layers(model) -> dict[str, str]:
    """{full module name: its last name part} of every linear layer LoRA can adapt, the output layer left out (as
    PEFT's all-linear does: adapting the LM head would train a vocabulary-sized matrix)."""
    from transformers.pytorch_utils import Conv1D

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    return {name: name.rsplit(".", 1)[-1] for name, module in base.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
            and not any(part in ("lora_A", "lora_B") for part in name.split("."))}


def model_skeleton(base_dir: str | Path):
    """The HF model of `base_dir` built on the meta device: its module tree without reading or allocating a weight,
    so target modules are checked before a 7B model is loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(base_dir)))


def resolve_targets(lora: LoraConfig, model, where: str = "lora") -> list[str]:
    """The sorted module names `lora` adapts in `model`: all-linear resolved, or the explicit list, each name
    checked to match a linear layer (PEFT adapts the names that match and ignores the rest without a word)."""
    layers = linear_layers(model)
    if lora.target_modules == ALL_LINEAR:
        return sorted(set(layers.values()))
    missing = [t for t in lora.target_modules
               if not any(full == t or full.endswith("." + t) for full in layers)]
    if missing:
        raise ConfigError(f"{where}.target_modules: {missing} match no linear layer of this model; its linear "
                          f"layers are {sorted(set(layers.values()))} (or use {ALL_LINEAR!r})")
    return sorted(lora.target_modules)


def adapted_modules(model) -> list[str]:
    """The sorted last name parts of the layers that carry a LoRA: what training actually adapts."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")
                   and len(getattr(module, "lora_A", {})) > 0})


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
                 trainable: bool = True, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The base model with `adapter` loaded (trainable or frozen), or with a fresh LoRA from `lora`.

    The base weights are read straight into `dtype` on `device`: no fp32 copy in host RAM first (27 GB at 7B).
    LoRA weights stay fp32 whatever `dtype` (PEFT upcasts bf16 adapters; a fresh one's random start is drawn in the
    base's dtype, so over a bf16 base it starts on bf16 values), so bf16 training keeps fp32 masters and optimiser
    state (`launch.dtype_of`).
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    on_device = {} if torch.device(device).type == "cpu" else {"device_map": str(torch.device(device))}
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype, **on_device)
    if adapter:
        model = PeftModel.from_pretrained(base, str(adapter), is_trainable=trainable)
    else:
        lora = lora or LoraConfig()
        cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=resolve_targets(lora, base), task_type="CAUSAL_LM")
        model = get_peft_model(base, cfg)
    model.train(trainable)
    return model


def save_adapter(model, out_dir: str | Path, gguf_name: str | None = "adapter.gguf",
                 base_dir: str | Path | None = None) -> None:
    """Save the PEFT adapter dir and its GGUF twin (for fast llama.cpp generation) side by side.

    Only the LoRA tensors are written (PEFT's adapter state dict, copied to the host tensor by tensor), wherever the
    model is: a 7B base on a GPU is never moved.

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


def check_lora_matches(lora: LoraConfig, adapter_dir: str | Path, where: str = "lora",
                       base_dir: str | Path | None = None) -> None:
    """Fail unless `lora` (the stage's settings, at params key `where`) equals the shape of the adapter it continues.

    PEFT loads a saved adapter with its own r, alpha, dropout and target modules, so different settings in params
    would be ignored without a word; an error makes the params say what actually trains. all-linear is compared
    as the layers it names in the base model (`base_dir`, by default the one the adapter records).
    """
    saved = adapter_info(adapter_dir)
    targets = lora.target_modules
    if targets == ALL_LINEAR:
        base_dir = base_dir or saved.get("base_model_name_or_path")
        if not base_dir:
            raise ConfigError(f"{adapter_dir}: the adapter records no base model dir to resolve {ALL_LINEAR!r} in")
        targets = resolve_targets(lora, model_skeleton(base_dir), where)
    saved_targets = saved.get("target_modules") or []
    saved_targets = [saved_targets] if isinstance(saved_targets, str) else saved_targets
    pairs = {"r": (lora.r, saved.get("r")), "alpha": (lora.alpha, saved.get("lora_alpha")),
             "dropout": (lora.dropout, saved.get("lora_dropout")),
             "target_modules": (sorted(targets), sorted(saved_targets))}
    differ = {k: v for k, v in pairs.items() if v[0] != v[1]}
    if differ:
        detail = "; ".join(f"{k}: params {mine!r} vs adapter {theirs!r}" for k, (mine, theirs) in differ.items())
        raise ConfigError(f"{where} differs from the adapter it continues ({adapter_dir}/adapter_config.json): {detail}. "
                         f"A continued adapter keeps its own LoRA shape; set {where} to the adapter's values "
                         f"(or retrain that adapter with the new ones).")
