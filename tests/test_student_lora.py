"""The training loop: a tiny real LoRA step on the packaged model, the GGUF export llama.cpp generates with, and
(on a tiny random-config model, no download) bit-identical repeat runs and the LoRA-settings check."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from teachloop.config import ConfigError
from teachloop.methods.sft import make_loss as sft_loss_fn
from teachloop.student.logprobs import IGNORE, collate, encode, pack, response_logprobs
from teachloop.student.model import (LoraConfig, check_lora_matches, load_student, load_tokenizer, resolve_targets,
                                     save_adapter)
from teachloop.student.train import TrainConfig, train

UNITS = [{"prompt": "### Instruction:\nSay hello.\n\n### Response:\n", "response": "Hello there!"},
         {"prompt": "### Instruction:\nName a colour.\n\n### Response:\n", "response": "Blue."}]


@pytest.fixture(scope="module")
def tok(base_model_dir):
    return load_tokenizer(base_model_dir)


@pytest.mark.slow
def test_one_lora_step_moves_every_adapter_weight_and_no_base_weight(base_model_dir, tok, tmp_path):
    model = load_student(base_model_dir, lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(lr=1e-2, batch_size=2, max_len=48, warmup_ratio=0.0)
    summary = train(model, UNITS, sft_loss_fn(tok, None, cfg.max_len), cfg, live_dir=tmp_path / "live")
    assert summary["steps"] == 1 and np.isfinite(summary["final"]["loss"])
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        if "lora_B" in name:  # B starts at zero; after one step every B moved
            assert moved, name
        elif "lora_" not in name:
            assert not moved, f"base weight {name} changed"
    assert (tmp_path / "live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[0] == "step\tloss"
    assert json.loads((tmp_path / "live" / "metrics.json").read_text())["steps"] == 1


@pytest.mark.slow
def test_response_logprobs_match_a_full_forward_pass(base_model_dir, tok):
    model = load_student(base_model_dir, lora=LoraConfig(r=4))
    model.eval()
    batch = collate([encode(tok, u["prompt"], u["response"], 64) for u in UNITS], tok.pad_token_id)
    with torch.no_grad():
        sums, counts = response_logprobs(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        lp = torch.log_softmax(logits[:, :-1].float(), -1)
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE
        ref = (lp.gather(2, labels.clamp(min=0).unsqueeze(2)).squeeze(2) * mask).sum(1)
    assert torch.allclose(sums, ref, atol=1e-3) and counts.tolist() == mask.sum(1).tolist()
    # the same sequences packed into one row: the block-diagonal mask keeps them apart in the real Gemma too
    packed = pack([encode(tok, u["prompt"], u["response"], 64) for u in UNITS], tok.pad_token_id, 1000)
    assert len(packed["input_ids"]) == 1
    with torch.no_grad():
        packed_sums, packed_counts = response_logprobs(model, packed)
    assert torch.allclose(packed_sums, sums, atol=1e-4) and torch.equal(packed_counts, counts)


@pytest.mark.slow
def test_fast_tokenizer_load_encodes_like_autotokenizer(base_model_dir, tok):
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(base_model_dir))
    texts = [UNITS[0]["prompt"], "  two leading spaces\n\nand  doubles", "Ünïcödé — “quotes”\ttab", "<eos> in text",
             "<start_of_turn>user\nhi<end_of_turn>"]
    for text in texts:
        assert tok(text, add_special_tokens=False)["input_ids"] == auto(text, add_special_tokens=False)["input_ids"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (auto.bos_token_id, auto.eos_token_id,
                                                                      auto.pad_token_id)


@pytest.mark.slow
def test_gguf_adapter_changes_llama_cpp_like_it_changes_transformers(base_model_dir, base_gguf, tok, tmp_path):
    """The exported GGUF LoRA must move llama.cpp's next-token log-probs the way PEFT moves HF's."""
    from teachloop.llm import LLMConfig
    from teachloop.llm.llamacpp import LlamaCppBackend

    torch.manual_seed(0)
    model = load_student(base_model_dir, lora=LoraConfig(r=4, alpha=8), trainable=False)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    save_adapter(model, tmp_path / "ad")
    prompt = "The capital of France is"
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        hf1 = torch.log_softmax(model(ids).logits[0, -1].double(), -1).numpy()
        with model.disable_adapter():
            hf0 = torch.log_softmax(model(ids).logits[0, -1].double(), -1).numpy()
    top = np.argsort(-hf1)[:100]
    options = [tok.decode([int(t)]) for t in top]
    keep = [i for i, o in enumerate(options) if o.strip() and options.index(o) == i]
    top, options = top[keep][:40], [options[i] for i in keep][:40]

    def lc(lora):
        probs = LlamaCppBackend(LLMConfig(gguf=str(base_gguf), lora=lora, n_ctx=256)).option_probs(prompt, options)
        return np.log([probs[o] for o in options])

    d_lc = lc(str(tmp_path / "ad" / "adapter.gguf")) - lc("")
    sub = lambda x: x[top] - np.log(np.exp(x[top]).sum())  # renormalise over the same options
    d_hf = sub(hf1) - sub(hf0)
    assert np.abs(d_hf).mean() > 0.05  # the adapter does change the distribution
    assert np.corrcoef(d_hf, d_lc)[0, 1] > 0.9


# --- tiny random-config model: repeatability and the LoRA-settings check (fast, no download) ---------------------


def tiny_student(lora: LoraConfig):
    """A 2-layer Gemma-3 with a 64-token vocabulary and a LoRA, initialised from a fixed seed."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return get_peft_model(base, PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                               target_modules=resolve_targets(lora, base), task_type="CAUSAL_LM"))


def token_units(n: int) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    return [{"prompt": torch.randint(3, 64, (6,), generator=gen).tolist(),
             "response": torch.randint(3, 64, (4,), generator=gen).tolist()} for _ in range(n)]


def token_nll_loss(model, units):
    """SFT's loss on already-tokenised units (the tiny model has no tokenizer)."""
    batch = collate([(u["prompt"] + u["response"], [IGNORE] * len(u["prompt"]) + u["response"]) for u in units], 0)
    sums, counts = response_logprobs(model, batch)
    return -sums.sum() / counts.sum(), {"tokens": int(counts.sum())}


def test_two_identical_trainings_are_bit_identical(tmp_path):
    # dropout on: the seeded dropout masks are part of what must repeat
    cfg = TrainConfig(lr=1e-2, batch_size=2, epochs=2, max_len=16, warmup_ratio=0.0, threads=2,
                      lora=LoraConfig(r=4, alpha=8, dropout=0.1))
    runs = []
    for name in ("a", "b"):
        model = tiny_student(cfg.lora)
        summary = train(model, token_units(6), token_nll_loss, cfg, live_dir=tmp_path / name)
        runs.append(({n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}, summary))
    (lora_a, sum_a), (lora_b, sum_b) = runs
    assert sum_a == sum_b and sum_a["steps"] == 6 and "seconds" not in sum_a
    assert lora_a.keys() == lora_b.keys() and all(torch.equal(lora_a[n], lora_b[n]) for n in lora_a)
    assert any(p.abs().sum() > 0 for n, p in lora_a.items() if "lora_B" in n)  # it did train
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and {str(f) for f in files_a} >= {"metrics.json", "plots/metrics/loss.tsv",
                                                               "plots/metrics/lr.tsv", "plots/metrics/tokens.tsv"}
    for f in files_a:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    loss_rows = (tmp_path / "a" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
    assert loss_rows[0] == "step\tloss" and len(loss_rows) == 7  # no timestamp column, one row per step
    # training leaves torch's global settings as it found them
    assert not torch.are_deterministic_algorithms_enabled()


def test_continuing_an_adapter_with_other_lora_settings_fails(tmp_path):
    saved = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["v_proj", "q_proj"]}
    (tmp_path / "adapter_config.json").write_text(json.dumps(saved))
    check_lora_matches(LoraConfig(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"]), tmp_path)
    with pytest.raises(ConfigError) as err:
        check_lora_matches(LoraConfig(r=4, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"]), tmp_path,
                           "method_train.lora")
    message = str(err.value)
    assert "method_train.lora" in message and "r: params 4 vs adapter 8" in message and "alpha" not in message
    with pytest.raises(ConfigError, match="target_modules"):
        check_lora_matches(LoraConfig(r=8, alpha=16, dropout=0.05, target_modules=["q_proj"]), tmp_path)
