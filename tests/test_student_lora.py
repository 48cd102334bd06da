"""A tiny real LoRA step on the packaged model, and the GGUF export llama.cpp generates with."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from teachloop.methods.trainers import sft_loss_fn
from teachloop.student.logprobs import IGNORE, collate, encode, response_logprobs
from teachloop.student.model import LoraConfig, load_student, load_tokenizer, save_adapter
from teachloop.student.train import TrainConfig, train

pytestmark = pytest.mark.slow

UNITS = [{"prompt": "### Instruction:\nSay hello.\n\n### Response:\n", "response": "Hello there!"},
         {"prompt": "### Instruction:\nName a colour.\n\n### Response:\n", "response": "Blue."}]


@pytest.fixture(scope="module")
def tok(base_model_dir):
    return load_tokenizer(base_model_dir)


def test_one_lora_step_moves_every_adapter_weight_and_no_base_weight(base_model_dir, tok, tmp_path):
    model = load_student(base_model_dir, lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(lr=1e-2, batch_size=2, max_len=48, warmup_ratio=0.0)
    summary = train(model, UNITS, sft_loss_fn(tok, cfg.max_len), cfg, log_path=tmp_path / "log.tsv")
    assert summary["steps"] == 1 and np.isfinite(summary["final"]["loss"])
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        if "lora_B" in name:  # B starts at zero; after one step every B moved
            assert moved, name
        elif "lora_" not in name:
            assert not moved, f"base weight {name} changed"
    assert (tmp_path / "log.tsv").read_text().splitlines()[0].split("\t")[:4] == ["step", "epoch", "lr", "loss"]


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
