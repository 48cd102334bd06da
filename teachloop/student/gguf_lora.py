"""Export a PEFT LoRA adapter to llama.cpp's GGUF adapter format, so a trained student generates at llama.cpp speed.

The export is llama.cpp's own `convert_lora_to_gguf.py` (see `llamacpp_src`), so any architecture llama.cpp's
converter knows gets its tensors named, permuted (LLaMA's q/k rows) and split (fused projections) the way its
base GGUF was. `--base` points at the HF twin, so the converter reads the architecture there and never reaches for
the hub; f32 keeps the adapter exactly as trained.
"""
from __future__ import annotations

import json
from pathlib import Path

from .llamacpp_src import ConverterError, run_converter


def export_lora_gguf(adapter_dir: str | Path, out_path: str | Path, base_dir: str | Path) -> Path:
    """Write `out_path` (GGUF LoRA) from the PEFT `adapter_dir` trained on the HF model in `base_dir`."""
    adapter_dir, out_path, base_dir = Path(adapter_dir), Path(out_path), Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise ConverterError(f"the adapter's base model dir {base_dir} has no config.json; pass the HF twin the "
                             f"adapter was trained on (the base stage's --hf dir)")
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    if saved.get("modules_to_save"):
        # llama.cpp adapters hold LoRA pairs only; a fully trained module would be dropped without a word.
        raise ConverterError(f"{adapter_dir}: modules_to_save={saved['modules_to_save']} cannot be exported to a "
                             f"llama.cpp adapter; train LoRA layers only")
    run_converter("convert_lora_to_gguf.py", ["--base", str(base_dir.resolve()), "--outtype", "f32",
                                              "--outfile", str(out_path.resolve()), str(adapter_dir.resolve())])
    return out_path
