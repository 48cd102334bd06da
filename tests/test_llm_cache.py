"""The LLM layer on the fake backend: cache keys, zero calls on a re-run, bounded re-asks, recorded failures."""
from __future__ import annotations

import json
import threading

from teachloop.llm import LLM, CallCache, ParseError, Request
from teachloop.llm.fake import FakeBackend


def parse_json(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ParseError(str(e)) from e


def test_second_run_makes_zero_calls(tmp_path):
    prompts = [f"question {i}" for i in range(5)]
    first = LLM(FakeBackend(), CallCache(tmp_path))
    a = [first.complete(Request(p)) for p in prompts]
    assert first.stats.calls == 5 and first.stats.hits == 0
    backend = FakeBackend()
    second = LLM(backend, CallCache(tmp_path))
    assert [second.complete(Request(p)) for p in prompts] == a
    assert backend.calls == 0 and second.stats.hits == 5


def test_key_covers_every_sampling_parameter_and_model_identity(tmp_path):
    llm = LLM(FakeBackend(), CallCache(tmp_path))
    variants = [Request("p"), Request("p", max_tokens=7), Request("p", temperature=0.5), Request("p", seed=2),
                Request("p", stop=("x",)), Request("p", repeat_penalty=1.2), Request("p", json_schema={"type": "object"}),
                Request("p", top_p=0.9)]
    for req in variants:
        llm.complete(req)
    assert llm.stats.calls == len(variants)
    other_model = LLM(FakeBackend(name="other"), CallCache(tmp_path))
    other_model.complete(Request("p"))
    assert other_model.stats.calls == 1


def test_invalid_json_is_retried_then_recorded_as_failure(tmp_path):
    replies = iter(["not json", '{"ok": 1}'])
    llm = LLM(FakeBackend(lambda p: next(replies)), CallCache(tmp_path))
    res = llm.generate(Request("give json"), parse_json, attempts=3)
    assert res.ok and res.parsed == {"ok": 1} and res.attempts == 2 and res.raw == ["not json", '{"ok": 1}']
    assert llm.stats.retried == 1

    always_bad = LLM(FakeBackend(lambda p: "{broken"), CallCache(tmp_path / "b"))
    res = always_bad.generate(Request("give json"), parse_json, attempts=3)
    assert not res.ok and res.attempts == 3 and res.raw == ["{broken"] * 3 and res.error
    assert always_bad.stats.failed == 1 and always_bad.stats.calls == 3  # each re-ask is a distinct request


def test_cache_entries_are_atomic_under_concurrent_writers(tmp_path):
    cache = CallCache(tmp_path)
    payload = {"op": "complete", "x": 1}

    def write(i):
        cache.put("k" * 64, payload, f"answer {i}" * 1000)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = cache.get("k" * 64)
    assert got in {f"answer {i}" * 1000 for i in range(8)}
    assert not list(tmp_path.rglob(".tmp-*"))  # no torn temp files left behind


def test_interrupted_run_resumes_without_repeating_finished_calls(tmp_path):
    backend = FakeBackend()
    llm = LLM(backend, CallCache(tmp_path))
    for i in range(3):  # "killed" after three of five calls
        llm.complete(Request(f"q{i}"))
    resumed_backend = FakeBackend()
    resumed = LLM(resumed_backend, CallCache(tmp_path))
    for i in range(5):
        resumed.complete(Request(f"q{i}"))
    assert resumed_backend.calls == 2 and resumed.stats.hits == 3


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"]}


def test_replies_are_validated_against_the_schema_that_was_sent(tmp_path):
    replies = iter(['{"n": 0}', 'Here: {"m": 1}', '{"n": 2}'])
    seen = []
    llm = LLM(FakeBackend(lambda p: next(replies)), CallCache(tmp_path))
    res = llm.generate(Request("give json", json_schema=SCHEMA), lambda t: seen.append(t) or parse_json(t),
                       attempts=3)
    # the caller's parser ran only on the reply that met the schema; the others were re-asked
    assert res.ok and res.parsed == {"n": 2} and res.attempts == 3 and seen == ['{"n": 2}']
    assert llm.stats.retried == 1

    bad = LLM(FakeBackend(lambda p: '{"n": "two"}'), CallCache(tmp_path / "b"))
    res = bad.generate(Request("give json", json_schema=SCHEMA), attempts=2)
    assert not res.ok and "is not of type 'integer'" in res.error and "$.n" in res.error
    # without a parser the validated JSON itself is the parse
    good = LLM(FakeBackend(lambda p: '{"n": 5}'), CallCache(tmp_path / "c"))
    assert good.generate(Request("give json", json_schema=SCHEMA)).parsed == {"n": 5}


def test_grouped_requests_are_one_cache_entry_each(tmp_path):
    backend = FakeBackend()
    llm = LLM(backend, CallCache(tmp_path))
    many = llm.logprobs_many("p", ["a b", "", "c"])
    assert many[1] == [] and many[0] == backend.logprobs("p", "a b")
    probs = llm.option_probs_many(["x A", "y"], [" A", " B"])
    assert len(probs) == 2 and all(abs(sum(p.values()) - 1) < 1e-9 for p in probs)
    assert llm.stats.calls == 2 and len(list(tmp_path.rglob("*.json"))) == 2
    again = LLM(FakeBackend(), CallCache(tmp_path))
    assert again.logprobs_many("p", ["a b", "", "c"]) == many and again.stats.hits == 1
