"""One tiny real LoRA step per method on the packaged student (max_len 64): the loss is finite, every adapter
weight moved and no base weight did. The adapter starts from non-zero weights, standing in for the SFT adapter
every method continues from (a fresh LoRA has B = 0, so its A matrices get no gradient on the first step)."""
import math

import pytest
import torch

from teachloop.methods import dpo, raft, rrhf, tuna
from teachloop.student.model import LoraConfig, load_student, load_tokenizer, save_adapter
from teachloop.student.train import TrainConfig, train

pytestmark = pytest.mark.slow

CFG = TrainConfig(lr=1e-3, epochs=1, batch_size=2, max_len=64, warmup_ratio=0.0, precision="fp32",
                  lora=LoraConfig(r=4, dropout=0.0))  # fp32: exact checks (the log 2 start); bf16: test_precision.py
ITEMS = [
    {"id": "q1", "prompt": "### Instruction:\nName a primary colour.\n\n### Response:\n",
     "candidates": ["Red is a primary colour.", "Blue.", "I like turtles and also some other things."],
     "ranking": [0, 1, 2], "scores": [-1.0, -1.5, -3.0]},
    {"id": "q2", "prompt": "### Instruction:\nWhat is 2 + 2?\n\n### Response:\n",
     "candidates": ["2 + 2 = 4.", "Four", "5"], "ranking": [0, 1, 2], "scores": [-0.5, -0.7, -2.5]},
]


@pytest.fixture(scope="module")
def tokenizer(base_model_dir):
    return load_tokenizer(base_model_dir)


def student(base_model_dir, adapter=None):
    torch.manual_seed(0)
    model = load_student(base_model_dir, adapter=adapter, lora=CFG.lora)
    if adapter is None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
    return model


def snapshot(model):
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    # Base weights: exact copies would double ~1 GB; a float64 sum plus a strided sample catches any update.
    base = {n: (p.detach().double().sum().item(), p.detach().flatten()[::1009].clone())
            for n, p in model.named_parameters() if "lora_" not in n}
    return lora, base


def assert_one_step_effects(model, before, summary):
    lora0, base0 = before
    assert summary["steps"] == 1 and math.isfinite(summary["final"]["loss"])
    params = dict(model.named_parameters())
    assert lora0, "no LoRA parameters found"
    unchanged = [n for n, p in lora0.items() if torch.equal(p, params[n].detach())]
    assert not unchanged, f"LoRA weights that did not move: {unchanged[:5]}"
    for n, (total, sample) in base0.items():
        p = params[n].detach()
        assert not params[n].requires_grad, n
        assert p.double().sum().item() == total and torch.equal(p.flatten()[::1009], sample), f"base moved: {n}"


def test_tuna_step_then_continue_from_saved_adapter(base_model_dir, tokenizer, tmp_path):
    data, _ = tuna.build_units(ITEMS, tuna.Config(mix_reference=0))
    model = student(base_model_dir)
    before = snapshot(model)
    loss_fn = tuna.make_loss(tokenizer, tuna.Config(loss=tuna.LossConfig(margin=0.1, mle_on="all")), CFG.max_len)
    summary = train(model, data, loss_fn, CFG, live_dir=tmp_path / "live", desc="tuna_p")
    assert_one_step_effects(model, before, summary)
    assert {"mle", "rank", "ordered", "tokens"} <= set(summary["final"])
    assert (tmp_path / "live" / "plots" / "metrics" / "rank.tsv").exists()
    # Tuna = p then c: the c stage loads the p adapter trainable and keeps training it
    save_adapter(model, tmp_path / "tuna_p")
    assert (tmp_path / "tuna_p" / "adapter.gguf").exists()
    again = student(base_model_dir, adapter=tmp_path / "tuna_p")
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    loaded = {n: p.detach() for n, p in again.named_parameters() if "lora_" in n}
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[n], loaded[n]) for n in saved)
    before = snapshot(again)
    best = tuna.Config(loss=tuna.LossConfig(mle_on="best"))
    summary = train(again, data, tuna.make_loss(tokenizer, best, CFG.max_len), CFG)
    assert_one_step_effects(again, before, summary)


def test_rrhf_step(base_model_dir, tokenizer):
    data, _ = rrhf.build_units(ITEMS, rrhf.Config(reward="scores"))
    model = student(base_model_dir)
    before = snapshot(model)
    summary = train(model, data, rrhf.make_loss(tokenizer, rrhf.Config(), CFG.max_len), CFG)
    assert_one_step_effects(model, before, summary)
    assert summary["final"]["sft"] > 0


def test_dpo_step_starts_at_log2(base_model_dir, tokenizer):
    pairs, _ = dpo.build_units(ITEMS, dpo.Config())
    model = student(base_model_dir)
    data = dpo.add_reference_logprobs(model, tokenizer, pairs, CFG.max_len)  # in place, as `dpo.before`
    assert data is pairs and model.training and all(u["ref_chosen"] < 0 and u["ref_rejected"] < 0 for u in data)
    before = snapshot(model)
    summary = train(model, data, dpo.make_loss(tokenizer, dpo.Config(beta=0.1), CFG.max_len), CFG)
    assert_one_step_effects(model, before, summary)
    # the policy starts as the reference, so the first step's loss is log 2 (dropout is off here)
    assert summary["final"]["loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_sft_step_on_raft_selection(base_model_dir, tokenizer):
    data, counts = raft.build_units(ITEMS, raft.Config(mode="local", alpha=0.2))
    assert counts["units"] == 2 and [u["response"] for u in data] == ["Red is a primary colour.", "2 + 2 = 4."]
    model = student(base_model_dir)
    before = snapshot(model)
    summary = train(model, data, raft.make_loss(tokenizer, raft.Config(), CFG.max_len), CFG)
    assert_one_step_effects(model, before, summary)
    assert summary["final"]["tokens"] > 0
