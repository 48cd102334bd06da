"""Students of other architectures through llama.cpp's own converters: a tiny LLaMA, Qwen2 and Phi-3 (random weights
from a config, real tokenizers from the vocab-only GGUFs that llama.cpp ships; no download) go through the base stage
(HF input -> GGUF twin), a short SFT and the GGUF adapter export, and llama.cpp must then agree with transformers:
same tokens for the same text, and the adapter moving next-token log-probs the way PEFT moves them. Phi-3 fuses its
projections (qkv_proj, gate_up_proj): the default `all-linear` must adapt those too, and llama.cpp load them."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from teachloop.methods.sft import make_loss as sft_make_loss
from teachloop.student.model import LoraConfig, linear_layers, load_student, load_tokenizer, model_skeleton
from teachloop.student.train import TrainConfig, train_adapter

pytestmark = pytest.mark.slow
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
F32 = 0  # GGML_TYPE_F32: llama.cpp's default f16 KV cache adds ~1e-2 logit noise, too much for an exactness check
TEXTS = ["Hello world", " leading space", "double  space", "  two leading", "tab\tand\nnewline", "naïve café 42",
         "### Instruction:\nSay hi.\n\n### Response:\n"]
UNITS = [{"prompt": "### Instruction:\nSay hello.\n\n### Response:\n", "response": "Hello there, friend!"},
         {"prompt": "### Instruction:\nName a colour.\n\n### Response:\n", "response": "Blue is a colour."}]


def as_on_the_hub(tok) -> None:
    """Give a SentencePiece tokenizer loaded from a GGUF the normalizer a hub LLaMA `tokenizer.json` has.

    transformers' GGUF loader uses a Metaspace pre-tokenizer that adds no "▁" before text that starts with a space,
    unlike SentencePiece and llama.cpp (" leading" -> [▁leading] instead of [▁, ▁leading]); hub LLaMA tokenizers
    always prepend "▁" and map every space to it.
    """
    from tokenizers import normalizers

    backend = tok.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None


def tiny_config(arch: str, tok):
    from transformers import LlamaConfig, Phi3Config, Qwen2Config

    shape = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if arch == "llama":
        return LlamaConfig(**shape, tie_word_embeddings=False)
    if arch == "phi3":  # Phi-3's own pad id (32000) is past this vocabulary's end
        return Phi3Config(**shape, tie_word_embeddings=False, pad_token_id=tok.eos_token_id,
                          original_max_position_embeddings=256)
    return Qwen2Config(**shape, tie_word_embeddings=True)


SPM = ("llama", "phi3")  # the architectures here with a SentencePiece vocabulary (LLaMA's)


@pytest.fixture(scope="module", params=[("llama", "llama-spm"), ("qwen2", "qwen2"), ("phi3", "llama-spm")],
                ids=["llama", "qwen2", "phi3"])
def student(request, tmp_path_factory):
    """(HF twin dir, GGUF twin path) made by the base stage from a tiny random student of that architecture."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from teachloop.student.llamacpp_src import vocab_gguf
    from teachloop.student.twins import spm_model_from_gguf

    arch, vocab = request.param
    work = tmp_path_factory.mktemp(arch)
    vocab_path = vocab_gguf(vocab)
    tok = AutoTokenizer.from_pretrained(str(vocab_path.parent), gguf_file=vocab_path.name)
    if arch in SPM:
        as_on_the_hub(tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, tok), dtype=torch.float32)
    src = work / "src"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    spm = spm_model_from_gguf(vocab_path)
    if spm is not None:  # a hub LLaMA dir ships tokenizer.model beside tokenizer.json
        (src / "tokenizer.model").write_bytes(spm)
    (work / "params.yaml").write_text(yaml.safe_dump({"base": {"hf_model": str(src), "gguf_outtype": "f32"}}))
    base = work / "base"
    subprocess.run([sys.executable, str(ROOT / "stages" / "base.py"), "--params", str(work / "params.yaml"),
                    "--gguf", str(base / "model.gguf"), "--hf", str(base / "hf"), "--manifest",
                    str(base / "manifest.json")], cwd=ROOT, check=True)
    manifest = json.loads((base / "manifest.json").read_text())
    assert manifest["conversion"]["direction"] == "hf->gguf" and manifest["hf_model"] == str(src)
    return arch, base / "hf", base / "model.gguf"


def llama(gguf, lora: str = "", vocab_only: bool = False):
    from teachloop.llm.llamacpp_open import open_llama

    return open_llama(model_path=str(gguf), lora_path=lora or None, n_ctx=128, n_threads=2, type_k=F32, type_v=F32,
                      vocab_only=vocab_only, verbose=False)


def test_hf_twin_is_a_plain_checkpoint_with_the_tokenizer_files(student):
    arch, hf_dir, _ = student
    config = json.loads((hf_dir / "config.json").read_text())
    assert "quantization_config" not in config and (hf_dir / "model.safetensors").is_file()
    assert (hf_dir / "tokenizer.model").is_file() == (arch in SPM)  # SentencePiece vocabularies only


def test_hf_and_llama_cpp_tokenize_alike(student):
    _, hf_dir, gguf = student
    tok = load_tokenizer(hf_dir)
    lc = llama(gguf, vocab_only=True)
    for text in TEXTS:
        hf_ids = tok(text, add_special_tokens=False).input_ids
        assert lc.tokenize(text.encode(), add_bos=False, special=False) == hf_ids, text


def next_token_logprobs_lc(gguf, ids, lora: str = "") -> np.ndarray:
    lc = llama(gguf, lora)
    lc.eval(ids)
    # eval keeps no logits unless logits_all; the context still holds the last token's row
    logits = np.ctypeslib.as_array(lc._ctx.get_logits(), shape=(lc.n_vocab(),)).astype(np.float64)
    return logits - np.logaddexp.reduce(logits)


def test_exported_adapter_moves_llama_cpp_like_peft_moves_transformers(student, tmp_path):
    arch, hf_dir, gguf = student
    cfg = TrainConfig(lr=5e-2, batch_size=2, epochs=3, max_len=48, warmup_ratio=0.0,
                      lora=LoraConfig(r=4, alpha=8, dropout=0.0))  # target_modules: the default, all-linear
    summary = train_adapter(hf_dir, UNITS, lambda tok: sft_make_loss(tok, None, cfg.max_len), cfg, tmp_path / "ad",
                            live_dir=tmp_path / "live")
    assert (tmp_path / "ad" / "adapter.gguf").stat().st_size > 0
    # Every linear layer but the LM head was adapted, and the adapter's config records exactly those.
    layers = sorted(set(linear_layers(model_skeleton(hf_dir)).values()))
    assert summary["target_modules"] == layers == json.loads((tmp_path / "ad" / "adapter_config.json").read_text()
                                                             )["target_modules"]
    if arch == "phi3":
        assert layers == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
    n_linear = 2 * len(layers)  # two decoder layers
    assert summary["trainable_params"] == sum(4 * (m.in_features + m.out_features) for name, m in
                                              model_skeleton(hf_dir).named_modules()
                                              if name in linear_layers(model_skeleton(hf_dir)))
    assert len(linear_layers(model_skeleton(hf_dir))) == n_linear
    tok = load_tokenizer(hf_dir)
    ids = tok(UNITS[0]["prompt"] + "Hello").input_ids
    model = load_student(hf_dir, adapter=tmp_path / "ad", trainable=False)
    with torch.no_grad():
        hf1 = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1).numpy()
        with model.disable_adapter():
            hf0 = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1).numpy()
    lc0 = next_token_logprobs_lc(gguf, ids)
    lc1 = next_token_logprobs_lc(gguf, ids, str(tmp_path / "ad" / "adapter.gguf"))
    assert np.abs(lc0 - hf0).max() < 1e-3  # the f32 GGUF twin is the same model
    top = np.argsort(-hf1)[:200]
    d_hf, d_lc = hf1[top] - hf0[top], lc1[top] - lc0[top]
    assert np.abs(d_hf).mean() > 0.05  # training did move the distribution
    assert np.corrcoef(d_hf, d_lc)[0, 1] > 0.9


def test_an_architecture_llama_cpp_cannot_run_fails_naming_it_and_the_served_way(tmp_path):
    from teachloop.student.llamacpp_src import ConverterError
    from teachloop.student.twins import hf_to_gguf

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"],
                                                      "model_type": "no_such_model"}))
    with pytest.raises(ConverterError) as err:
        hf_to_gguf(tmp_path, tmp_path / "model.gguf")
    assert "NoSuchModelForCausalLM" in str(err.value) and "student.llm.backend: openai" in str(err.value)
