"""DPO's reference scores: computed under the training step's precision (so the policy's margin at step 0 is exactly
0, as DPO means it) and split over processes, each scoring its share."""
from __future__ import annotations

import pytest
import torch

from teachloop.methods import dpo
from teachloop.student import split
from teachloop.student.model import LoraConfig, load_student, load_tokenizer
from teachloop.student.train import TrainConfig, train_adapter
from tiny_models import char_tokenizer, tiny_llama

PAIRS = [{"prompt": f"### Task:\nSay {w}.\n\n### Answer:\n", "chosen": f"{w.title()}, friend!", "rejected": "No."}
         for w in ("hi", "hello", "hey", "bye")]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random 2-layer LLaMA with a character tokenizer, saved as an HF dir (no download)."""
    tok = char_tokenizer()
    model = tiny_llama(tok, hidden=64)
    out = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_the_reference_is_scored_in_the_training_precision(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("teachloop.student.gguf_lora.export_lora_gguf", lambda *a: None)  # no llama.cpp twin here
    cfg = TrainConfig(lr=1e-3, batch_size=1, epochs=1, max_len=48, precision="bf16", device="cpu", save_every=0,
                      lora=LoraConfig(r=2, alpha=4, dropout=0.0))
    units = [dict(PAIRS[0])]
    summary = train_adapter(tiny_dir, units, lambda tok: dpo.make_loss(tok, dpo.Config(), 48, cfg.row_tokens), cfg,
                            tmp_path / "out", before=lambda m, t, us, scope: dpo.before(m, t, us, 48, cfg.row_tokens,
                                                                                         scope))
    # A fresh LoRA changes nothing at step 0: the policy is the reference, to the bit, in bf16 as in fp32.
    assert summary["final"]["reward_margin"] == 0.0 and summary["final"]["reward_chosen"] == 0.0
    # An fp32 reference (what the stage computed before) is not the bf16 policy: the test can fail.
    tok = load_tokenizer(tiny_dir)
    model = load_student(tiny_dir, lora=cfg.lora, trainable=False)
    fp32 = dpo.add_reference_logprobs(model, tok, [dict(PAIRS[0])], 48, row_tokens=cfg.row_tokens)[0]
    assert fp32["ref_chosen"] != units[0]["ref_chosen"]


def test_each_process_scores_its_share_and_the_sum_holds_them_all(tiny_dir):
    tok = load_tokenizer(tiny_dir)
    model = load_student(tiny_dir, lora=LoraConfig(r=2, alpha=4, dropout=0.0), trainable=False)
    whole = dpo.add_reference_logprobs(model, tok, [dict(u) for u in PAIRS], 48, batch_size=3)
    shares, seen = [], []
    for rank in (0, 1):
        def add_up(t, rank=rank):  # stands in for the all-reduce: records this process's share, adds the other's
            seen.append(t.clone())
            return t if len(seen) == 1 else t + seen[0]
        scope = split.Split(share=1.0, rank=rank, world=2, add_up=add_up)
        shares.append(dpo.add_reference_logprobs(model, tok, [dict(u) for u in PAIRS], 48, batch_size=3, scope=scope))
    first, both = shares
    assert [u["ref_chosen"] for u in first[2:]] == [0.0, 0.0]  # rank 0 scored units 0-1 only
    assert seen[1][:2].tolist() == [0.0, 0.0] and seen[1][4:6].tolist() == [0.0, 0.0]  # rank 1: units 2-3 only
    for a, b in zip(both, whole):
        assert a["ref_chosen"] == pytest.approx(b["ref_chosen"], abs=1e-5)
        assert a["ref_rejected"] == pytest.approx(b["ref_rejected"], abs=1e-5)
