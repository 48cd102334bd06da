"""Candidates, teacher rankings and method units with scripted fake backends (no model): ROUGE-L, Tuna's
near-duplicate resampling, contextual-ranking parsing/validation/failure records, probabilistic ordering."""
import dataclasses

import pytest

from teachloop.llm import LLM, BackendError, CallCache, ParseError
from teachloop.llm.fake import FakeBackend
from teachloop.methods import candidates as cands
from teachloop.methods import dpo, ranking, raft, rrhf, tuna
from teachloop.methods.candidates import CandidatesConfig
from teachloop.methods.ranking import ContextualConfig


class ScriptedBackend(FakeBackend):
    """Answers `reply(req)` (it sees seed and temperature, unlike FakeBackend's prompt-only responder)."""

    def __init__(self, reply, logprobs=None):
        super().__init__(name="scripted")
        self.reply = reply
        self.requests = []
        self._logprobs = logprobs

    def complete(self, req):
        self.calls += 1
        self.requests.append(req)
        return self.reply(req)

    def logprobs(self, prompt, continuation):
        self.calls += 1
        return self._logprobs(prompt, continuation)


def make_llm(tmp_path, backend):
    return LLM(backend, cache=CallCache(tmp_path / "cache"))


RECORDS = [{"id": f"r{i}", "instruction": f"Name a colour number {i}.", "input": "", "output": "Blue."}
           for i in range(5)]


# --- ROUGE-L -----------------------------------------------------------------------------------------------------


def test_similarity_is_rouge_score_rouge_l_with_stemming():
    from teachloop.reference import rouge_l

    # stemming and rouge-score's tokenizer: plurals, case and punctuation do not count
    assert cands.similarity("The cats sat.", "the cat sat") == 1.0
    assert cands.similarity("a b c", "x y z") == 0.0
    # LCS("a b c d", "a c d e") = 3 -> P = R = 3/4
    assert cands.similarity("a b c d", "a c d e") == pytest.approx(0.75)
    # LCS = 2 ("a c"), P = 2/2, R = 2/4 -> F = 2 * 1 * .5 / 1.5; symmetric
    assert cands.similarity("a c", "a b c d") == pytest.approx(2 / 3) == cands.similarity("a b c d", "a c")
    assert cands.similarity("running fast", "he runs fast") == rouge_l("running fast", "he runs fast")
    # two non-answers are the same non-answer; rouge-score alone would call them distinct (0.0)
    assert cands.similarity("", "  ") == 1.0 and rouge_l("", "  ") == 0.0
    assert cands.similarity("", "a word") == 0.0
    assert not hasattr(cands, "lcs_length")  # the hand-written LCS is gone: one ROUGE-L in the project


def test_sample_records_is_seeded_and_order_free():
    a = cands.sample_records(RECORDS, 3, seed=1)
    b = cands.sample_records(list(reversed(RECORDS)), 3, seed=1)
    assert [r["id"] for r in a] == [r["id"] for r in b] and len(a) == 3
    assert len(cands.sample_records(RECORDS, 0, seed=1)) == 5
    assert 1 <= cands.item_seed(11, "r1") <= 2**24


# --- resampling ---------------------------------------------------------------------------------------------------


def test_resampling_replaces_near_duplicates(tmp_path):
    # Every draw below temperature 0.75 is the same sentence; hotter draws are distinct.
    def reply(req):
        if req.temperature < 0.75:
            return "the capital of france is paris"
        return f"answer {req.seed} is something else entirely {req.temperature}"

    backend = ScriptedBackend(reply)
    cfg = CandidatesConfig(n=4, temperature=0.7, max_resamples=3)
    out = cands.draw_candidates(make_llm(tmp_path, backend), "P", cfg, base_seed=100)
    # pairs (0,1), (0,2), (0,3) are duplicates in turn: the later one is redrawn each time, 0.1 hotter
    assert out["resamples"] == 3 and not out["duplicates_remain"]
    assert out["temperatures"] == [0.7, 0.8, 0.9, 1.0]
    assert out["seeds"] == [100, 104, 105, 106]
    assert len({r.seed for r in backend.requests}) == len(backend.requests) == 7
    assert out["candidates"][0] == "the capital of france is paris"
    assert out["max_rouge"] < cfg.rouge_threshold


def test_resampling_stops_after_max_and_records_duplicates(tmp_path):
    backend = ScriptedBackend(lambda req: "always the same words here")
    cfg = CandidatesConfig(n=3, max_resamples=2)
    out = cands.draw_candidates(make_llm(tmp_path, backend), "P", cfg, base_seed=1)
    assert out["resamples"] == 2 and out["duplicates_remain"] and out["max_rouge"] == 1.0
    assert backend.calls == 3 + 2


def test_distinct_candidates_need_no_resample(tmp_path):
    backend = ScriptedBackend(lambda req: f"reply number {req.seed} with words {req.seed * 7}")
    llm = make_llm(tmp_path, backend)
    items, counts = cands.build_candidates(llm, RECORDS[:2], CandidatesConfig(n=4, source="teacher"))
    assert counts == {"items": 2, "candidates": 8, "resamples": 0, "items_resampled": 0,
                      "duplicates_remain": 0, "empty_candidates": 0}
    assert items[0]["id"] == "r0" and items[0]["source"] == "teacher" and "### Response:" in items[0]["prompt"]
    # a backend without grouped sampling answers each sample separately: 8 completions, one per seed ...
    assert backend.calls == 8 and [r.seed for r in backend.requests[:4]] == items[0]["seeds"]
    # ... but the cache holds one entry per instruction, and a second run is served by it: zero new calls
    assert llm.stats.calls == 2 and len(list((tmp_path / "cache").rglob("*.json"))) == 2
    again, _ = cands.build_candidates(make_llm(tmp_path, backend), RECORDS[:2], CandidatesConfig(n=4, source="teacher"))
    assert backend.calls == 8 and again == items


class GroupedBackend(ScriptedBackend):
    """A backend with native grouped sampling: records each (request, n) it is asked for."""

    def __init__(self, reply):
        super().__init__(reply)
        self.groups = []

    def complete_samples(self, req, n):
        self.groups.append((req, n))
        return [self.reply(dataclasses.replace(req, seed=req.seed + k)) for k in range(n)]


def test_first_draws_are_one_grouped_request_and_redraws_single_ones(tmp_path):
    def reply(req):
        if req.temperature < 0.75:
            return "the capital of france is paris"
        return f"reply {req.seed} says {req.seed * 7} other things"

    backend = GroupedBackend(reply)
    llm = make_llm(tmp_path, backend)
    out = cands.draw_candidates(llm, "P", CandidatesConfig(n=4, temperature=0.7, max_resamples=3), base_seed=100)
    assert [(r.seed, r.temperature, n) for r, n in backend.groups] == [
        (100, 0.7, 4), (104, 0.8, 1), (105, 0.9, 1), (106, 1.0, 1)]
    assert backend.calls == 0  # never fell back to separate completions
    assert out["seeds"] == [100, 104, 105, 106] and not out["duplicates_remain"]
    assert {k: llm.stats.counts()[k] for k in ("requests", "retried", "failed")} == {"requests": 4, "retried": 0, "failed": 0}


def test_config_validation():
    from teachloop.config import ConfigError, build

    assert build(CandidatesConfig, {"n": 3}, "tuna_p.candidates").n == 3
    with pytest.raises(ConfigError, match="source"):
        build(CandidatesConfig, {"source": "judge"}, "x")
    with pytest.raises(ConfigError, match="temperature"):
        build(CandidatesConfig, {"temperature": 0}, "x")


# --- contextual ranking -------------------------------------------------------------------------------------------


ITEM = {"id": "q1", "instruction": "Say hi.", "input": "", "prompt": "PROMPT",
        "candidates": ["hello there", "hi", "", "greetings, friend"]}


def test_parse_ranking_rejects_non_permutations():
    assert ranking.parse_ranking('{"ranking": [4, 3, 2, 1]}', 4) == [4, 3, 2, 1]
    for bad in ['{"ranking": [1, 2, 3]}', '{"ranking": [1, 2, 3, 5]}', '{"ranking": [1, 2, 2, 3]}',
                "Response 2 is best", '{"ranking": "1,2,3,4"}', '{"ranking": [1, "x", 2, 3]}']:
        with pytest.raises(ParseError):
            ranking.parse_ranking(bad, 4)


def test_contextual_ranking_maps_display_order_back(tmp_path):
    backend = ScriptedBackend(lambda req: '{"ranking": [2, 1, 4, 3]}')
    llm = make_llm(tmp_path, backend)
    cfg = ContextualConfig(shuffle=True)
    out, counts = ranking.rank_contextual(llm, [ITEM], cfg)
    it = out[0]
    order = it["shown_order"]
    assert sorted(order) == [0, 1, 2, 3] and order == ranking.display_order(ITEM, cfg)
    assert it["ranking"] == [order[1], order[0], order[3], order[2]]
    assert it["ok"] and it["attempts"] == 1 and counts == {"items": 1, "ok": 1, "retried": 0, "failed": 0}
    # one prompt lists every candidate, the empty one marked, and the reply is schema-constrained
    req = backend.requests[0]
    assert req.prompt.count("### Response ") == 4 and "(empty response)" in req.prompt
    items_schema = req.json_schema["properties"]["ranking"]
    assert items_schema["items"]["enum"] == [1, 2, 3, 4] and items_schema["minItems"] == 4


def test_contextual_ranking_unshuffled_and_retried(tmp_path):
    replies = {1: '{"ranking": [1, 1, 2, 3]}', 2: '{"ranking": [3, 1, 2, 4]}'}
    backend = ScriptedBackend(lambda req: replies[req.seed])
    out, counts = ranking.rank_contextual(make_llm(tmp_path, backend), [ITEM], ContextualConfig(shuffle=False, seed=1))
    assert out[0]["ranking"] == [2, 0, 1, 3] and out[0]["attempts"] == 2 and len(out[0]["raw"]) == 2
    assert counts["retried"] == 1 and counts["failed"] == 0


def test_contextual_failure_is_recorded_and_excluded(tmp_path):
    backend = ScriptedBackend(lambda req: "I like the second one best.")
    llm = make_llm(tmp_path, backend)
    out, counts = ranking.rank_contextual(llm, [ITEM, {**ITEM, "id": "q2"}], ContextualConfig(attempts=3))
    assert counts == {"items": 2, "ok": 0, "retried": 0, "failed": 2}
    bad = out[0]
    assert bad["ranking"] is None and not bad["ok"] and bad["raw"] == ["I like the second one best."] * 3
    assert "no JSON" in bad["error"] and llm.stats.failed == 2
    good = {**ITEM, "id": "q3", "ranking": [0, 1, 2, 3]}
    got, tcounts = tuna.build_units(out + [good], tuna.Config(mix_reference=0))
    assert len(got) == 1 and tcounts["failed_rankings"] == 2
    # re-parsing stored raw text (e.g. after a parser fix) costs no call
    calls = backend.calls
    fixed = ranking.reparse_contextual([{**bad, "raw": bad["raw"] + ['{"ranking": [4, 3, 2, 1]}']}])
    assert fixed[0]["ok"] and fixed[0]["ranking"] == [bad["shown_order"][k] for k in (3, 2, 1, 0)]
    assert backend.calls == calls


# --- probabilistic ranking ----------------------------------------------------------------------------------------


def test_probabilistic_scores_order_and_length_normalisation(tmp_path):
    table = {"hello there": [-1.0, -1.0], "hi": [-1.5], "greetings, friend": [-0.5, -0.5, -3.5]}
    backend = ScriptedBackend(None, logprobs=lambda prompt, cont: table[cont])
    out, counts = ranking.rank_probabilistic(make_llm(tmp_path, backend), [ITEM])
    it = out[0]
    # means: -1.0, -1.5, (empty) None, -1.5 -> best..worst 0, then 1 and 3 tied (earlier first), empty last
    assert it["scores"] == [-1.0, -1.5, None, pytest.approx(-1.5)]
    assert it["ranking"] == [0, 1, 3, 2] and counts["unscored_candidates"] == 1
    assert "### Instruction:\nSay hi." in ranking.score_prompt(ITEM)
    # length_penalty 0 ranks by the raw sum instead: -2, -1.5, None, -4.5
    raw, _ = ranking.rank_probabilistic(make_llm(tmp_path, backend), [ITEM], length_penalty=0.0)
    assert raw[0]["ranking"] == [1, 0, 3, 2]


def test_probabilistic_ranking_explains_missing_logprobs(tmp_path):
    def no_logprobs(prompt, cont):
        raise BackendError("server does not return prompt log-probabilities")

    backend = ScriptedBackend(None, logprobs=no_logprobs)
    with pytest.raises(BackendError, match="probabilistic ranking needs the teacher's log-probabilities"):
        ranking.rank_probabilistic(make_llm(tmp_path, backend), [ITEM])


# --- units --------------------------------------------------------------------------------------------------------


RANKED = {"id": "q1", "prompt": "P", "candidates": ["a", "b", "c", ""], "ranking": [2, 0, 1, 3],
          "scores": [-1.0, -2.0, -0.5, None]}
Q2 = {**RANKED, "id": "q2", "scores": [-3.0, -0.1, -4.0, None]}


def test_tuna_units_drop_empty_candidates_and_count():
    one_left = {**RANKED, "id": "q3", "candidates": ["", " ", "only", "\n"]}
    none_left = {**RANKED, "id": "q4", "candidates": ["", " ", "", "\t"]}
    got, counts = tuna.build_units([RANKED, one_left, none_left], tuna.Config(mix_reference=1, seed=0), RECORDS[:3])
    # q1 loses its empty last-ranked candidate; q3 keeps one candidate (MLE only); q4 has none and is skipped
    assert got[0] == {"prompt": "P", "candidates": ["c", "a", "b"]}
    assert got[1] == {"prompt": "P", "candidates": ["only"]}
    assert got[2]["candidates"] == ["Blue."] and len(got) == 3
    assert counts == {"units": 3, "ranked": 3, "failed_rankings": 0, "extra_records": 1,
                      "empty_candidates_dropped": 1 + 3 + 4, "units_mle_only": 1, "units_skipped_empty": 1}
    assert all(c.strip() for u in got for c in u["candidates"])


def test_rrhf_units_drop_empty_candidates_and_count():
    rr, counts = rrhf.build_units([RANKED], rrhf.Config(reward="rank"))
    assert rr == [{"prompt": "P", "candidates": ["a", "b", "c"], "rewards": [2.0, 1.0, 3.0]}]
    assert counts["empty_candidates_dropped"] == 1 and counts["units_skipped_empty"] == 0
    rs, _ = rrhf.build_units([RANKED], rrhf.Config(reward="scores"))
    assert rs[0]["rewards"] == [-1.0, -2.0, -0.5]
    # a non-empty candidate the teacher could not score ranks below every scored one
    unscored = {**RANKED, "candidates": ["a", "b", "c", "d"]}
    assert rrhf.build_units([unscored], rrhf.Config(reward="scores"))[0][0]["rewards"] == [-1.0, -2.0, -0.5, -3.0]
    _, empty = rrhf.build_units([{**RANKED, "candidates": ["", "", " ", ""]}], rrhf.Config())
    assert empty["units"] == 0 and empty["units_skipped_empty"] == 1 and empty["empty_candidates_dropped"] == 4


def test_dpo_units_never_use_an_empty_answer_and_skip_identical_pairs():
    full = {**RANKED, "id": "q5", "candidates": ["a", "b", "c", "d"]}
    same = {**RANKED, "candidates": ["x", "x", "x", "x"]}
    lone = {**RANKED, "candidates": ["", "", "only", " "]}
    pairs, counts = dpo.build_units([RANKED, same, full, lone], dpo.Config())
    # RANKED's worst is the empty answer: the rejected side is the worst non-empty one instead
    assert pairs == [{"prompt": "P", "chosen": "c", "rejected": "b"}, {"prompt": "P", "chosen": "c", "rejected": "d"}]
    assert all(u["chosen"].strip() and u["rejected"].strip() for u in pairs)
    assert counts == {"units": 2, "failed_rankings": 0, "identical_pairs": 1, "too_few_nonempty": 1,
                      "empty_candidates": 4}


def test_dpo_units_from_revisions_skip_failed_and_empty():
    base = {"id": "i", "instruction": "Say hi.", "input": "", "output": "hi"}
    rows = [{**base, "ok": True, "revision": "Hello there.", "answer": "hi"},
            {**base, "ok": False, "revision": "", "answer": "hi"},
            {**base, "ok": True, "revision": "Hello there.", "answer": "  "},
            {**base, "ok": True, "revision": "same", "answer": "same "}]
    pairs, counts = dpo.build_units(rows, dpo.Config())
    assert [(u["chosen"], u["rejected"]) for u in pairs] == [("Hello there.", "hi")]
    assert counts == {"units": 1, "failed_revisions": 1, "empty_pairs": 1, "identical_pairs": 1}


def test_raft_units_never_keep_empty_candidates():
    got, rc = raft.build_units([RANKED, Q2], raft.Config(mode="local", alpha=0.2))
    assert [u["response"] for u in got] == ["c", "b"] and rc["samples"] == 6 and rc["empty_candidates_dropped"] == 2
    top, _ = raft.build_units([RANKED, Q2], raft.Config(mode="global", alpha=0.3))
    assert [u["response"] for u in top] == ["c", "b"]  # best two of six: -0.5 (q1) and -0.1 (q2), in sample order
    # rank rewards put the empty answer last, but even when it is the only candidate it is never kept
    lonely, lc = raft.build_units([{**RANKED, "candidates": ["", "", "", ""]}], raft.Config(reward="rank"))
    assert lonely == [] and lc["empty_candidates_dropped"] == 4


def test_sft_units_skip_empty_outputs():
    from teachloop.methods import sft

    recs = RECORDS[:3] + [{**RECORDS[3], "output": "  "}]
    got, counts = sft.build_units(recs, sft.Config(max_examples=0))
    assert len(got) == 3 and counts == {"units": 3, "skipped_empty": 1}
    capped, _ = sft.build_units(RECORDS, sft.Config(max_examples=2, seed=1))
    assert len(capped) == 2
