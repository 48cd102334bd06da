"""Export a PEFT LoRA adapter to llama.cpp's GGUF adapter format, so a trained student generates at llama.cpp speed.

llama.cpp reads `general.type=adapter`, `adapter.type=lora`, `adapter.lora.alpha`, and per linear layer two
tensors `<gguf weight name>.lora_a` ([r, in]) and `.lora_b` ([out, r]), applied on top of the (quantised) base.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

# HF module name -> llama.cpp tensor name inside block N (gemma3 and llama-family layouts).
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_KEY = re.compile(r"layers\.(\d+)\.(.+)\.lora_([AB])\.weight$")


def gguf_tensor_name(peft_key: str) -> str:
    """'base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight' -> 'blk.3.attn_q.weight.lora_a'

    >>> gguf_tensor_name("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight")
    'blk.3.attn_q.weight.lora_a'
    """
    m = _KEY.search(peft_key)
    if not m or m.group(2) not in GGUF_NAMES:
        raise ValueError(f"no llama.cpp tensor for adapter key {peft_key!r}; LoRA targets must be linear layers "
                         f"among {sorted(GGUF_NAMES)}")
    return f"blk.{m.group(1)}.{GGUF_NAMES[m.group(2)]}.weight.lora_{m.group(3).lower()}"


def export_lora_gguf(adapter_dir: str | Path, out_path: str | Path, arch: str = "gemma3") -> Path:
    import gguf
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    writer = gguf.GGUFWriter(str(out_path), arch=arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(cfg["lora_alpha"]))
    for key in sorted(tensors):
        writer.add_tensor(gguf_tensor_name(key), np.ascontiguousarray(tensors[key], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out_path)
