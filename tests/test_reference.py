"""Reference-grounded measures and the reference judge on hand-made strings, a toy encoder and a tiny random LLaMA."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from teachloop import metrics, reference
from teachloop.student.prompting import record_prompt


def test_rouge_l_on_hand_made_strings():
    assert reference.rouge_l("The cat sat on the mat.", "the cat sat on the mat") == 1.0  # case, punctuation
    # LCS("a b c d", "a c d e") = 3 of 4 tokens each side: P = R = F = 0.75.
    assert reference.rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    # Stemming: "cats"/"cat" and "running"/"run" match, so the plural answer is as good as the reference.
    assert reference.rouge_l("cats running", "cat run") == 1.0
    # Unequal lengths: LCS 2, P = 2/2, R = 2/4, F = 2PR/(P+R) = 2/3.
    assert reference.rouge_l("dog barks", "the dog loudly barks") == pytest.approx(2 / 3)
    assert reference.rouge_l("", "a reference") == 0.0
    assert reference.rouge_l("nothing shared", "a reference") == 0.0


def test_mean_ci_and_paired_difference():
    rng = np.random.default_rng(0)
    values = rng.normal(0.4, 0.1, size=50)
    s = reference.mean_ci(values, n_boot=500, seed=3)
    assert s["ci_low"] < s["mean"] < s["ci_high"] and s["n"] == 50
    assert s["mean"] == pytest.approx(values.mean())
    assert reference.mean_ci(values, 500, seed=3) == s  # seeded
    # Item difficulty dominates each side; the per-item difference is a constant 0.05 plus small noise.
    difficulty = rng.uniform(0, 1, size=40)
    a, b = difficulty + 0.05 + rng.normal(0, 0.01, 40), difficulty
    d = reference.paired_diff_ci(a, b, n_boot=500)
    assert d["mean"] == pytest.approx(np.mean(a - b)) and d["ci_low"] > 0  # paired: clearly above zero
    unpaired_a, unpaired_b = reference.mean_ci(a, 500), reference.mean_ci(b, 500)
    assert unpaired_a["ci_low"] < unpaired_b["ci_high"]  # independent CIs overlap: pairing is what resolves it
    with pytest.raises(ValueError, match="one value per item"):
        reference.paired_diff_ci([1.0, 2.0], [1.0])


def test_summarise_values_is_a_macro_mean_over_eval_sets():
    s = reference.summarise_values({"reading": [1.0, 1.0], "test": [0.0] * 18}, n_boot=200)
    assert s["mean"] == pytest.approx(0.5) and s["n"] == 20  # pooled would be 0.1
    assert list(s["by_eval_set"]) == ["test", "reading"]
    assert s["by_eval_set"]["reading"] == {"mean": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 2}
    assert s["ci_low"] == s["ci_high"] == 0.5  # no spread within any set


class ToyEncoder:
    """Bag-of-words vectors over a fixed vocabulary, L2-normalised: the `SentenceTransformer.encode` contract."""

    def __init__(self, words):
        self.index = {w: i for i, w in enumerate(sorted(words))}

    def encode(self, texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False):
        out = np.zeros((len(texts), len(self.index) + 1), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, self.index.get(w, len(self.index))] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


REFS = {("test", "1"): "paris is the capital of france",
        ("test", "2"): "water boils at one hundred degrees",
        ("reading", "3"): "the story ends happily",
        ("reading", "4"): "she moved to a new city"}
A = {"1": "paris is the capital", "2": "it is cold", "3": "the story ends happily", "4": "a city"}
B = {"1": "london maybe", "2": "water boils at one hundred degrees celsius", "3": "the story ends happily",
     "4": "she moved"}


def rows(answers):
    return [{"id": i, "eval_set": s, "instruction": f"q{i}", "input": "", "answer": answers[i]} for s, i in REFS]


def test_reference_judge_picks_the_closer_answer_and_is_position_free():
    enc = ToyEncoder({w for t in [*REFS.values(), *A.values(), *B.values()] for w in t.split()})
    ab = reference.reference_judge(rows(A), rows(B), REFS, "a", "b", encoder=enc, rouge_margin=0.02)
    ba = reference.reference_judge(rows(B), rows(A), REFS, "b", "a", encoder=enc, rouge_margin=0.02)
    by_key = lambda recs: {(r["id"], r["criterion"]): r for r in recs}  # noqa: E731
    ab, ba = by_key(ab), by_key(ba)
    assert len(ab) == 8  # 4 items x (rouge_l, cosine)
    assert ab[("1", "rouge_l")]["verdict"] == "win" and ab[("2", "rouge_l")]["verdict"] == "loss"
    assert ab[("3", "rouge_l")]["verdict"] == "tie" and ab[("3", "cosine")]["verdict"] == "tie"  # same answer
    flip = {"win": "loss", "loss": "win", "tie": "tie"}
    for key, rec in ab.items():
        assert ba[key]["verdict"] == flip[rec["verdict"]]
        assert ba[key]["preference"] == -rec["preference"]
        # Both orders inside one record agree: no position can be preferred.
        assert len({o["verdict"] for o in rec["orders"]}) == 1
    s = reference.summarise_reference(list(ab.values()), n_boot=100)
    assert list(s) == ["rouge_l", "cosine"]
    assert s["rouge_l"]["position_bias_rate"] == 0.0 and s["rouge_l"]["agreement_rate"] == 1.0
    assert s["rouge_l"]["win_rate"] + s["rouge_l"]["tie_rate"] + s["rouge_l"]["loss_rate"] == pytest.approx(1)
    assert {"ci_low", "ci_high", "by_eval_set", "by_criterion"} <= set(s["cosine"])


def test_reference_judge_margin_makes_ties_and_missing_reference_is_a_clear_error():
    # With a margin above every possible ROUGE difference, everything is a tie.
    recs = reference.reference_judge(rows(A), rows(B), REFS, "a", "b", rouge_margin=1.0)
    assert {r["verdict"] for r in recs} == {"tie"} and {r["criterion"] for r in recs} == {"rouge_l"}
    with pytest.raises(KeyError, match="no reference answer"):
        reference.reference_judge(rows(A), rows(B), {}, "a", "b")


def test_item_rouge_and_paired_by_set():
    ra, rb = reference.item_rouge(rows(A), REFS), reference.item_rouge(rows(B), REFS)
    assert ra[("reading", "3")] == rb[("reading", "3")] == 1.0
    diffs = reference.paired_by_set(ra, rb)
    assert set(diffs) == {"test", "reading"} and diffs["reading"][0] == 0.0
    assert metrics.ordered(reference.by_set(ra)) == ["test", "reading"]


WORDS = ("[PAD] [UNK] <bos> <eos> the following is a task for an assistant. read it and write helpful, accurate "
         "reply. ### instruction: response: input: name colour of sky blue say hello hi there").split()


def tiny_model_and_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval(), tokenizer


def hand_mean_logprob(model, tokenizer, prompt: str, response: str) -> float:
    """Full-vocabulary forward of one unpadded sequence, log_softmax, mean over response tokens and EOS."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([[tokenizer.bos_token_id] + p + r])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    start = 1 + len(p)  # position of the first response token
    return float(np.mean([logp[t - 1, ids[0, t]].item() for t in range(start, ids.shape[1])]))


def test_reference_loglik_matches_a_hand_computation_on_a_tiny_llama():
    model, tokenizer = tiny_model_and_tokenizer()
    records = [{"instruction": "name the colour of the sky", "input": "", "output": "blue"},
               {"instruction": "say hello", "input": "hi there", "output": "hello there the sky is blue"},
               {"instruction": "say hi", "output": "hi"}]
    got = reference.reference_loglik(model, tokenizer, records, max_len=128, batch_size=2)  # padding in a batch
    want = [hand_mean_logprob(model, tokenizer, record_prompt(r), r["output"]) for r in records]
    assert got == pytest.approx(want, abs=1e-5)
    assert len({round(g, 6) for g in got}) == 3  # distinct values: each record is scored on its own tokens
    assert not model.training
    with pytest.raises(ValueError, match="max_len"):
        reference.reference_loglik(model, tokenizer, records, max_len=2)


@pytest.mark.slow
def test_real_student_and_encoder(base_model_dir):
    """The packaged gemma (softcapped logits) scores a reference as the hand forward does; the real encoder
    prefers the answer that restates the reference."""
    from transformers import AutoModelForCausalLM

    from teachloop.embeddings import load_encoder
    from teachloop.student.model import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32).eval()
    tokenizer = load_tokenizer(base_model_dir)
    rec = {"instruction": "What colour is the sky?", "input": "", "output": "The sky is blue."}
    got = reference.reference_loglik(model, tokenizer, [rec], max_len=96)
    assert got == pytest.approx([hand_mean_logprob(model, tokenizer, record_prompt(rec), rec["output"])], abs=1e-4)
    refs = {("test", "1"): "The sky is blue on a clear day."}
    a = [{"id": "1", "eval_set": "test", "instruction": "q", "answer": "On a clear day the sky looks blue."}]
    b = [{"id": "1", "eval_set": "test", "instruction": "q", "answer": "Bananas are rich in potassium."}]
    recs = reference.reference_judge(a, b, refs, "a", "b", encoder=load_encoder())
    assert {r["criterion"]: r["verdict"] for r in recs} == {"rouge_l": "win", "cosine": "win"}
