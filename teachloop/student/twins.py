"""The base model's two twins: a GGUF llama.cpp generates with and a plain HF checkpoint the trainer loads.

    gguf_to_hf(gguf, hf_dir)   a GGUF (e.g. the packaged gemma-3-270m) -> a plain fp32 safetensors checkpoint
    hf_to_gguf(hf_dir, gguf)   any HF causal-LM dir -> a GGUF written by llama.cpp's own `convert_hf_to_gguf.py`

The HF twin is a plain checkpoint (no `quantization_config`), so `transformers.Trainer`, TRL and PEFT load it like
any other. For a SentencePiece vocabulary it also carries `tokenizer.model`: llama.cpp's converters read token
scores from it, and without it every score becomes -1000 and llama.cpp splits leading and double spaces
differently from HF (transformers 5 saves only `tokenizer.json`).
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch

from .llamacpp_src import ConverterError, ensure_converters, run_converter

# Files a HF model dir may hold that the tokenizer (HF or llama.cpp's converter) reads; copied verbatim because a
# transformers re-save drops `tokenizer.model` and may change added-token flags.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "generation_config.json", "chat_template.jinja")
SERVED = "student.llm.backend: openai (a served student: vLLM or another OpenAI-compatible server)"


def _gguf_module():
    """The gguf-py vendored with the runtime's llama.cpp (it reads every type that llama.cpp writes)."""
    import importlib.util
    import sys

    init = ensure_converters() / "gguf-py" / "gguf" / "__init__.py"
    if "gguf" in sys.modules and Path(sys.modules["gguf"].__file__).resolve() == init.resolve():
        return sys.modules["gguf"]
    spec = importlib.util.spec_from_file_location("gguf", init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("gguf")
    sys.modules["gguf"] = module  # its submodules import `gguf.*`
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is not None:
            sys.modules["gguf"] = saved
    return module


def spm_model_from_gguf(gguf_path: str | Path) -> bytes | None:
    """A SentencePiece `tokenizer.model` rebuilt from a GGUF's vocabulary, or None for a non-SentencePiece one.

    llama.cpp stores SentencePiece pieces, scores and types unchanged (`tokenizer.ggml.model == "llama"`), with
    the same type numbering as SentencePiece, so the rebuilt model tokenizes as the one it was made from.
    """
    from sentencepiece import sentencepiece_model_pb2 as spm

    reader = _gguf_module().GGUFReader(str(gguf_path))
    fields = reader.fields
    if fields["tokenizer.ggml.model"].contents() != "llama":
        return None
    get = lambda key, default=None: fields[key].contents() if key in fields else default  # noqa: E731
    proto = spm.ModelProto()
    for piece, score, kind in zip(get("tokenizer.ggml.tokens"), get("tokenizer.ggml.scores"),
                                  get("tokenizer.ggml.token_type")):
        proto.pieces.add(piece=piece, score=score, type=kind)
    trainer = proto.trainer_spec
    trainer.model_type = spm.TrainerSpec.BPE  # llama.cpp's SPM tokenizer is the BPE merge by score
    trainer.vocab_size = len(proto.pieces)
    trainer.byte_fallback = any(p.type == spm.ModelProto.SentencePiece.BYTE for p in proto.pieces)
    trainer.unk_id = get("tokenizer.ggml.unknown_token_id", 0)
    trainer.bos_id = get("tokenizer.ggml.bos_token_id", -1)
    trainer.eos_id = get("tokenizer.ggml.eos_token_id", -1)
    trainer.pad_id = get("tokenizer.ggml.padding_token_id", -1)
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(get("tokenizer.ggml.add_space_prefix", True))
    norm.remove_extra_whitespaces = False  # llama.cpp keeps double spaces
    norm.escape_whitespaces = True
    return proto.SerializeToString()


def gguf_to_hf(gguf_path: str | Path, out_dir: str | Path) -> dict:
    """Write a plain fp32 safetensors HF checkpoint + tokenizer from a GGUF; returns settings for the manifest.

    transformers loads a GGUF only as a dequantised model that refuses `save_pretrained` and marks its config
    `quantization_config: gguf`; its state dict is copied into a model built from a clean copy of that config.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    out_dir = Path(out_dir)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings are the one allowed gap: they are re-tied from embed_tokens.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF -> HF conversion mismatch: missing={missing} unexpected={unexpected}")
    fresh.tie_weights()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    fresh.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    spm_model = spm_model_from_gguf(gguf_path)
    if spm_model is not None:
        (out_dir / "tokenizer.model").write_bytes(spm_model)
    return {"direction": "gguf->hf", "dtype": "float32", "architecture": config.architectures,
            "n_params": fresh.num_parameters()}


def hf_architecture(hf_dir: str | Path) -> str:
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    return (config.get("architectures") or [config.get("model_type", "?")])[0]


def hf_to_gguf(hf_dir: str | Path, gguf_path: str | Path, outtype: str = "f32") -> dict:
    """Write `gguf_path` from the HF causal-LM dir with llama.cpp's converter; returns settings for the manifest."""
    hf_dir, gguf_path = Path(hf_dir).resolve(), Path(gguf_path).resolve()
    arch = hf_architecture(hf_dir)
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_converter("convert_hf_to_gguf.py", ["--outtype", outtype, "--outfile", str(gguf_path), str(hf_dir)])
    except ConverterError as e:
        if f"Model {arch} is not supported" in str(e):
            raise ConverterError(f"llama.cpp cannot run architecture {arch!r} (its converter refused {hf_dir}). "
                                 f"Use a model llama.cpp supports, or generate through a served student: "
                                 f"{SERVED}.\n{e}") from e
        raise
    return {"direction": "hf->gguf", "outtype": outtype, "architecture": [arch]}


def copy_hf_model(src: str | Path, out_dir: str | Path) -> None:
    """Copy a HF model dir as the HF twin: weights re-saved as safetensors, tokenizer files verbatim."""
    from transformers import AutoModelForCausalLM

    src, out_dir = Path(src), Path(out_dir)
    model = AutoModelForCausalLM.from_pretrained(str(src))
    if getattr(model.config, "quantization_config", None) is not None:
        raise ConverterError(f"{src} is a quantised checkpoint ({model.config.quantization_config}); the trainer "
                             f"needs plain weights: give base.hf_model an unquantised model dir")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out_dir / name)
