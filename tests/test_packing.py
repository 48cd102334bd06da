"""Packed batches (sequences end to end, positions restarting per sequence) against padded ones on a tiny random
Gemma 3: the same per-sequence scores, the same loss and the same gradients for SFT, Tuna and DPO, units never
mixed, and a packed training that repeats bit for bit."""
import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from teachloop.config import ConfigError, build
from teachloop.methods import dpo, sft, tuna
from teachloop.methods.common import score_candidates
from teachloop.student.logprobs import IGNORE, MAX_PADDING, collate, encode, pack, pack_rows, padding_ratio, response_logprobs
from teachloop.student.model import LoraConfig
from teachloop.student.train import TrainConfig, train

MAX_LEN = 48
# Small enough that a step's sequences fill several rows, so the tests cross row boundaries too.
ROWS = 40


class ByteTokenizer:
    """Bytes shifted past the special ids; what `encode` needs of a tokenizer and nothing more."""
    pad_token_id, eos_token_id, bos_token_id = 0, 1, 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + b for b in text.encode()]}


def tiny_model():
    torch.manual_seed(0)
    # Two sliding layers with a window shorter than the sequences, as Gemma 3 interleaves local and global layers.
    config = Gemma3TextConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                              max_position_embeddings=128)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


PROMPTS = ["Name a colour.", "What is two plus two, in words?", "Say hi.", "List three fruits, please, briefly."]
UNITS_SFT = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, ["Red.", "Four, it is four.", "Hi there, friend!", "Apple."])]
UNITS_TUNA = [{"prompt": PROMPTS[0], "candidates": ["Red is one.", "Blue.", "I like turtles a lot."]},
              {"prompt": PROMPTS[1], "candidates": ["Four."]},
              {"prompt": PROMPTS[2], "candidates": ["Hi!", "Hello to you, how are you today?"]}]
UNITS_DPO = [{"prompt": PROMPTS[i], "chosen": c, "rejected": r, "ref_chosen": -40.0 - i, "ref_rejected": -50.0 + i}
             for i, (c, r) in enumerate([("Red.", "Turtles."), ("Four.", "It is five, I think."), ("Hi!", "No.")])]


def loss_and_grads(make, units, row_tokens):
    model = tiny_model()
    loss, _ = make(ByteTokenizer(), row_tokens)(model, units)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name,make,units", [
    ("sft", lambda tok, rows: sft.make_loss(tok, None, MAX_LEN, rows), UNITS_SFT),
    ("tuna", lambda tok, rows: tuna.make_loss(tok, tuna.Config(loss=tuna.LossConfig(margin=0.5)), MAX_LEN, rows),
     UNITS_TUNA),
    ("dpo", lambda tok, rows: dpo.make_loss(tok, dpo.Config(beta=0.1), MAX_LEN, rows), UNITS_DPO),
])
def test_packed_loss_and_gradients_equal_padded(name, make, units):
    loss0, grads0 = loss_and_grads(make, units, 0)
    for rows in (ROWS, 10_000):  # several rows, and everything in one row
        loss, grads = loss_and_grads(make, units, rows)
        assert loss.item() == pytest.approx(loss0.item(), abs=1e-5), (name, rows)
        assert grads.keys() == grads0.keys() and len(grads) > 10
        for n, g in grads.items():
            assert torch.allclose(g, grads0[n], atol=1e-5, rtol=1e-5), (name, rows, n, (g - grads0[n]).abs().max())


def test_packing_does_not_hide_a_wrong_mask():
    # The same sequences with positions that run on across a row (no restart) would let them see each other:
    # their scores must then differ, or the equality above would prove nothing.
    tok = ByteTokenizer()
    encoded = [encode(tok, u["prompt"], u["response"], MAX_LEN) for u in UNITS_SFT]
    model = tiny_model().eval()
    packed = pack(encoded, 0, 10_000)
    assert len(packed["input_ids"]) == 1
    leaky = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1]).unsqueeze(0)}
    with torch.no_grad():
        good, _ = response_logprobs(model, packed)
        bad, _ = response_logprobs(model, leaky)
        padded, _ = response_logprobs(model, collate(encoded, 0))
    assert torch.allclose(good, padded, atol=1e-5)
    assert not torch.allclose(bad, padded, atol=1e-3)


def test_pack_layout_keeps_every_token_once_and_cuts_padding():
    tok = ByteTokenizer()
    encoded = [encode(tok, u["prompt"], c, MAX_LEN) for u in UNITS_TUNA for c in u["candidates"]]
    packed, padded = pack(encoded, 0, ROWS), collate(encoded, 0)
    for i, (ids, labels) in enumerate(encoded):
        at = packed["seq"] == i
        assert packed["input_ids"][at].tolist() == ids and packed["labels"][at].tolist() == labels
        assert packed["position_ids"][at].tolist() == list(range(len(ids)))
    assert int((packed["seq"] < 0).sum()) == packed["seq"].numel() - sum(len(ids) for ids, _ in encoded)
    assert padding_ratio(packed) < padding_ratio(padded)
    assert padding_ratio(packed) <= MAX_PADDING
    assert padding_ratio(pack(encoded, 0, 10_000)) == 1.0  # one row: no padding at all
    # deterministic: the layout is a function of the lengths only
    assert pack_rows([len(ids) for ids, _ in encoded], ROWS) == pack_rows([len(ids) for ids, _ in encoded], ROWS)


def test_pack_rows_places_each_sequence_once_within_the_padding_bound():
    gen = torch.Generator().manual_seed(3)
    for _ in range(300):
        lengths = torch.randint(1, 257, (int(torch.randint(1, 20, (1,), generator=gen)),), generator=gen).tolist()
        rows = pack_rows(lengths, 512)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        width = max(sum(lengths[i] for i in row) for row in rows)
        assert len(rows) * width <= MAX_PADDING * sum(lengths)


def test_pack_refuses_a_sequence_that_starts_scored():
    with pytest.raises(ValueError, match="unscored"):
        pack([([5, 6], [IGNORE, 6]), ([7, 8], [7, 8])], 0, 100)


def test_packed_candidates_stay_with_their_unit():
    # Each unit's grid row, scored packed with the others, equals that unit scored alone.
    model, tok = tiny_model().eval(), ByteTokenizer()
    with torch.no_grad():
        sums, counts, valid = score_candidates(model, tok, UNITS_TUNA, MAX_LEN, ROWS)
        for b, unit in enumerate(UNITS_TUNA):
            alone, n_alone, _ = score_candidates(model, tok, [unit], MAX_LEN, 0)
            k = len(unit["candidates"])
            assert valid[b].sum() == k
            assert torch.allclose(sums[b, :k], alone[0], atol=1e-5) and torch.equal(counts[b, :k], n_alone[0])


def test_packed_training_repeats_bit_for_bit():
    cfg = TrainConfig(lr=1e-2, batch_size=3, epochs=2, max_len=MAX_LEN, warmup_ratio=0.0, row_tokens=ROWS,
                      lora=LoraConfig(r=4, dropout=0.0))
    units = [{"prompt": u["prompt"], "candidates": u["candidates"]} for u in UNITS_TUNA] * 2
    runs = []
    for _ in range(2):
        model, times = tiny_model(), {}
        summary = train(model, units, tuna.make_loss(ByteTokenizer(), tuna.Config(), MAX_LEN, ROWS), cfg, times=times)
        runs.append((summary, {n: p.detach().clone() for n, p in model.named_parameters()}))
        assert times["startup_s"] > 0 and "startup_s" not in summary  # run-dependent: the run log, not the summary
    (s1, w1), (s2, w2) = runs
    assert s1 == s2 and s1["steps"] == 4
    assert all(torch.equal(w1[n], w2[n]) for n in w1)
    assert any(not torch.equal(w1[n], tiny_model().state_dict()[n]) for n in w1)  # it did train


def test_row_tokens_must_not_be_negative():
    assert build(TrainConfig, {"row_tokens": 0}, "sft.train").row_tokens == 0
    with pytest.raises(ConfigError, match="row_tokens"):
        build(TrainConfig, {"row_tokens": -1}, "sft.train")
