"""Pairwise judging with a fake backend: un-swapping, ties, failures recorded, cache reuse, re-parsing."""
from __future__ import annotations

import json

import pytest

from teachloop import judge
from teachloop.config import ConfigError, build
from teachloop.llm import LLM, CallCache
from teachloop.llm.fake import FakeBackend


def answers(model: str, text: str, n: int = 3, eval_set: str = "test") -> list[dict]:
    return [{"id": f"q{i}", "eval_set": eval_set, "instruction": f"Question {i}?", "input": "",
             "answer": f"{text} answer {i}", "model": model} for i in range(n)]


def first_shown(prompt: str) -> str:
    return prompt.split("### Response A:")[1].split("### Response B:")[0]


def prefers_first(prompt: str) -> str:
    return " A [[A]]"


def prefers_good(prompt: str) -> str:
    verdict = "A" if "good" in first_shown(prompt) else "B"
    return f" {verdict} [[{verdict}]]"


def run(responder, tmp_path, mode="probs", a=None, b=None, **cfg):
    backend = FakeBackend(responder)
    llm = LLM(backend, cache=CallCache(tmp_path / "cache"), name="judge")
    conf = judge.JudgeConfig(mode=mode, **cfg)
    recs = judge.judge_answers(llm, conf, a or answers("citing_r1", "good"), b or answers("sft", "bad"),
                               "citing_r1", "sft", progress=False)
    return recs, llm, backend


@pytest.mark.parametrize("mode", ["probs", "generate"])
def test_a_judge_that_always_picks_the_first_position_yields_all_ties(tmp_path, mode):
    recs, _, _ = run(prefers_first, tmp_path, mode)
    assert len(recs) == 3 * 3  # 3 instructions x 3 criteria
    assert {r["verdict"] for r in recs} == {"tie"}
    for r in recs:
        assert [o["first_chosen"] for o in r["orders"]] == [True, True]
        assert [o["verdict"] for o in r["orders"]] == ["win", "loss"]  # un-swapped: same position, opposite sides


@pytest.mark.parametrize("mode", ["probs", "generate"])
def test_a_judge_that_picks_the_better_answer_yields_all_wins(tmp_path, mode):
    recs, _, _ = run(prefers_good, tmp_path, mode)
    assert {r["verdict"] for r in recs} == {"win"}
    assert all(r["orders"][1]["position_verdict"] == "B" for r in recs)  # B's answer was shown first in order ba
    if mode == "probs":
        assert all(r["preference"] > 0.9 for r in recs)
    else:
        assert all(r["preference"] is None for r in recs)
    # And from the other side of the same comparison: all losses.
    recs, _, _ = run(prefers_good, tmp_path, mode, a=answers("sft", "bad"), b=answers("citing_r1", "good"))
    assert {r["verdict"] for r in recs} == {"loss"}


def test_records_keep_raw_output_and_provenance(tmp_path):
    recs, _, _ = run(prefers_good, tmp_path)
    r = recs[0]
    assert r["comparison"] == "citing_r1_vs_sft" and r["prompt_version"] == "1" and r["mode"] == "probs"
    assert set(r["orders"][0]["raw"]) == {" A", " B", " C"}
    assert [o["order"] for o in r["orders"]] == ["ab", "ba"]
    assert [x["criterion"] for x in recs[:3]] == ["articulate", "in_depth", "comprehensive"]


def test_malformed_replies_are_retried_then_recorded_as_failed(tmp_path):
    recs, llm, backend = run(lambda p: "Both seem fine to me.", tmp_path, "generate", attempts=2)
    assert len(recs) == 9 and all(r["failed"] and r["verdict"] is None for r in recs)
    order = recs[0]["orders"][0]
    assert not order["ok"] and order["attempts"] == ["Both seem fine to me."] * 2 and "no [[A]]" in order["error"]
    assert llm.stats.failed == 9 * 2 and backend.calls == 9 * 2 * 2  # every order, every attempt


def test_second_run_with_the_same_cache_makes_no_backend_calls(tmp_path):
    first, _, backend1 = run(prefers_good, tmp_path)
    second, llm, backend2 = run(prefers_good, tmp_path)
    assert backend1.calls == 3 * 2 * 3 and backend2.calls == 0
    assert llm.stats.hits == 3 * 2 and first == second  # probs mode: one request per (pair, order)


def test_only_instructions_answered_by_both_are_judged(tmp_path):
    a = answers("citing_r1", "good", 3) + answers("citing_r1", "good", 2, "reading")
    b = answers("sft", "bad", 2) + answers("sft", "bad", 2, "factual")
    recs, _, _ = run(prefers_good, tmp_path, a=a, b=b, criteria=["articulate"])
    assert sorted((r["eval_set"], r["id"]) for r in recs) == [("test", "q0"), ("test", "q1")]
    recs, _, _ = run(prefers_good, tmp_path, a=a, b=a, criteria=["articulate"], max_per_set=1)
    assert len(recs) == 2  # one per eval set


def test_reparse_applies_a_new_tie_margin_without_calls(tmp_path):
    # A judge that leans to the first answer only slightly: 0.4 vs 0.35.
    probs = {" A": 0.4, " B": 0.35, " C": 0.25}
    llm = LLM(FakeBackend(), cache=CallCache(tmp_path), name="judge")
    llm.option_probs_many = lambda prompts, options: [dict(probs) for _ in prompts]  # noqa: E731  (fixed probabilities)
    cfg = judge.JudgeConfig(tie_margin=0.0, criteria=["articulate"])
    recs = judge.judge_answers(llm, cfg, answers("a", "x", 1), answers("b", "y", 1), "a", "b", progress=False)
    assert [o["position_verdict"] for o in recs[0]["orders"]] == ["A", "A"] and recs[0]["verdict"] == "tie"
    redone = judge.reparse(recs, judge.JudgeConfig(tie_margin=0.1, criteria=["articulate"]))
    assert [o["position_verdict"] for o in redone[0]["orders"]] == ["C", "C"]
    assert redone[0]["tie_margin"] == 0.1 and redone[0]["preference"] == pytest.approx(0.0)


def test_reparse_of_generate_mode_uses_stored_attempts():
    order = {"order": "ba", "raw": "hmm", "attempts": ["hmm", "B wins [[B]]"]}
    rec = {"mode": "generate", "orders": [{**order, "order": "ab", "attempts": ["[[A]]"]}, order]}
    out = judge.reparse([rec], judge.JudgeConfig(mode="generate"))[0]
    assert [o["verdict"] for o in out["orders"]] == ["win", "win"] and out["verdict"] == "win"


def test_prompt_ends_with_the_criterion_question_and_keeps_braces_in_answers():
    p = judge.build_prompt("Say {criterion}", "ctx", "first {answer_b}", "second", "in_depth", 1000)
    assert p.endswith("Verdict:") and "Which response is more in-depth?" in p.splitlines()[-2]
    assert "first {answer_b}" in p and "Say {criterion}" in p and "### Input:\nctx" in p
    shared = [judge.build_prompt("Q", "", "x", "y", c, 1000).rsplit("### Question:", 1)[0] for c in judge.CRITERIA]
    assert len(set(shared)) == 1  # everything before the question is shared across criteria (KV cache reuse)
    assert "[...]" in judge.build_prompt("Q", "", "x" * 50, "y", "articulate", 10)


def test_config_is_validated():
    cfg = build(judge.JudgeConfig, {"mode": "generate", "llm": {"backend": "fake"}}, "judge")
    assert cfg.llm.backend == "fake"
    for bad in ({"mode": "vote"}, {"criteria": ["witty"]}, {"tie_margin": 1.5}, {"criteria": []}):
        with pytest.raises(ConfigError):
            build(judge.JudgeConfig, bad, "judge")


def test_probs_mode_asks_the_criteria_of_one_order_as_one_request(tmp_path):
    recs, llm, backend = run(prefers_good, tmp_path)
    assert llm.stats.calls == 3 * 2 and backend.calls == 3 * 2 * 3  # one request per (pair, order), 3 prompts each
    entries = sorted((tmp_path / "cache").rglob("*.json"))
    assert len(entries) == 3 * 2
    request = json.loads(entries[0].read_text())["request"]
    assert request["op"] == "option_probs_many" and len(request["request"]["prompts"]) == 3
