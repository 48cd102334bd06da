"""The openai backend against real local servers on 127.0.0.1 (`teachloop.llm.testserver`): strict OpenAI request
shapes for every stage's requests, server flavours, seeded transport faults survived and counted, bounded
concurrency in input order, counts files that accumulate across resumed invocations."""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time

import numpy as np
import pytest

from teachloop import judge, rubrics
from teachloop.llm import LLM, BackendError, CallCache, LLMConfig, Request
from teachloop.llm import openai_backend as ob
from teachloop.llm.client import counts_file
from teachloop.llm.fake import FakeBackend
from teachloop.llm.testserver import FAULTS, SERVED_MODEL, LocalServer
from teachloop.methods import citing, ranking
from teachloop.methods.candidates import CandidatesConfig, build_candidates
from teachloop.roles import DecodeConfig
from teachloop.student.prompting import record_prompt

RECORDS = [{"id": f"r{i}", "instruction": f"Explain topic number {i} briefly.", "input": "", "output": "Fine."}
           for i in range(4)]


def responder(prompt: str) -> str:
    """Replies each stage's parser accepts, chosen by what the prompt asks for; otherwise a text fixed by the prompt."""
    h = hashlib.sha256(prompt.encode()).hexdigest()
    if prompt.rstrip().endswith("JSON:"):
        return json.dumps({"name": f"group {h[:4]}", "rubric": "1. Is correct. 2. Is clear. 3. Gives a reason " + h[:8]})
    shown = re.findall(r"### Response (\d+):", prompt)
    if shown:
        return json.dumps({"ranking": sorted(map(int, shown), key=lambda k: hashlib.sha256(f"{h}{k}".encode()).digest())})
    if prompt.rstrip().endswith("Verdict:"):
        return "[[A]]" if int(h[0], 16) % 2 else "Second is better. [[B]]"
    return f"Reply {h[:6]} with detail {h[6:12]}."


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(ob, "BACKOFF_BASE_S", 0.005)
    monkeypatch.setenv("OPENAI_API_KEY", "local")


def openai_llm(srv: LocalServer, tmp_path, name: str, **cfg) -> LLM:
    cfg = LLMConfig(backend="openai", model="teacher-model", base_url=srv.base_url, **cfg)
    return LLM(ob.OpenAIBackend(cfg), CallCache(tmp_path / name), name=name, max_concurrency=cfg.max_concurrency)


def every_stage(llm: LLM, judge_mode: str = "generate") -> dict:
    """What each LLM-calling stage asks of its LLM, through the library functions the stages call."""
    out = {}
    vectors = np.eye(len(RECORDS), 3, dtype=np.float32) + 0.1
    out["rubrics"] = rubrics.categories_by_cluster(RECORDS, vectors, rubrics.RubricsConfig(k=2, attempts=2), llm)
    out["citing_revise"] = llm.map(lambda r: citing.revise(llm, r, "1. Be right.", "draft", citing.RoundConfig()),
                                   RECORDS)
    decode = DecodeConfig()
    out["answer"] = llm.map(lambda r: llm.complete(decode.request(record_prompt(r))), RECORDS)
    items, _ = build_candidates(llm, RECORDS[:2], CandidatesConfig(n=2, max_resamples=1, max_tokens=16))
    out["candidates"] = items
    out["rank_contextual"] = ranking.rank_contextual(llm, items, ranking.ContextualConfig())[0]
    out["score_probabilistic"] = ranking.rank_probabilistic(llm, items)[0]
    a = [{**r, "eval_set": "test", "answer": f"A says {r['id']}"} for r in RECORDS[:2]]
    b = [{**r, "eval_set": "test", "answer": f"B says {r['id']}"} for r in RECORDS[:2]]
    cfg = judge.JudgeConfig(mode=judge_mode, criteria=["articulate", "in_depth"])
    out["judge"] = judge.judge_answers(llm, cfg, a, b, "a", "b", progress=False)
    return out


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_every_stage_request_is_a_documented_openai_request(api, tmp_path):
    with LocalServer(responder, strict=True) as srv:
        llm = openai_llm(srv, tmp_path, "teacher", api=api, server="openai")
        out = every_stage(llm)
        every_stage(openai_llm(srv, tmp_path, "judge", api=api, server="openai"), judge_mode="probs")
    assert srv.rejected == []
    paths = {r["path"] for r in srv.requests}
    assert paths >= {f"/v1/{'chat/' if api == 'chat' else ''}completions", "/v1/completions"}
    assert not any("extra_body" in r or "repeat_penalty" in r or "grammar" in r for r in srv.requests)
    # The teacher's revision has its own stops; the student's "###" never reaches the teacher.
    revision_stops = {tuple(r["stop"]) for r in srv.requests if "Improved reply" in json.dumps(r)}
    assert revision_stops == {tuple(citing.RoundConfig().revise_stop)}
    if api == "chat":
        assert any(r.get("response_format", {}).get("type") == "json_schema" for r in srv.requests)
        assert all(r["top_logprobs"] <= 20 for r in srv.requests if "top_logprobs" in r)
    else:
        assert all(r["logprobs"] <= 5 for r in srv.requests if "logprobs" in r)
    assert all(item["ok"] for item in out["rank_contextual"]) and all(c["ok"] for c in out["rubrics"])
    assert llm.stats.models == ["teacher-model" + SERVED_MODEL] and llm.stats.prompt_tokens > 0


def test_a_strict_server_rejects_what_a_llamacpp_flavour_sends(tmp_path):
    # The recording server is the judge of "documented": the same requests with server: llamacpp carry extras.
    with LocalServer(responder, strict=True) as srv:
        llm = openai_llm(srv, tmp_path, "t", server="llamacpp", max_retries=0)
        with pytest.raises(BackendError, match=rf"{re.escape(srv.base_url)}.*HTTP 400.*repeat_penalty"):
            llm.complete(Request("hello", repeat_penalty=1.1))
    assert llm.stats.transport_failures == 1 and llm.stats.transport_retries == 0  # a 400 is not retried


def test_flavours_send_extras_and_schemas_only_where_declared(capsys):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    req = Request("p", repeat_penalty=1.2, json_schema=schema, stop=("\n",))
    base = LLMConfig(backend="openai", model="m", base_url="http://127.0.0.1:1/v1")
    kw = {(s, a): ob.request_kwargs(base.replace(server=s, api=a), req)
          for s in ("openai", "vllm", "llamacpp", "generic") for a in ("completions", "chat")}
    assert "extra_body" not in kw["openai", "completions"] and "extra_body" not in kw["openai", "chat"]
    assert kw["openai", "chat"]["response_format"]["json_schema"]["schema"] == schema
    assert kw["vllm", "chat"]["extra_body"] == {"repetition_penalty": 1.2, "top_k": 40, "min_p": 0.05}
    # llama.cpp's in-process sampler (top-k 40, min-p 0.05) is what a vLLM or llama.cpp server is asked for, and a
    # repeat penalty of 1.0 reaches llama_cpp.server too (its own default is 1.1)
    assert kw["llamacpp", "chat"]["extra_body"]["top_k"] == 40 and kw["llamacpp", "chat"]["extra_body"]["min_p"] == 0.05
    assert ob.request_kwargs(base.replace(server="llamacpp"), Request("p"))["extra_body"]["repeat_penalty"] == 1.0
    assert kw["vllm", "completions"]["extra_body"]["response_format"]["type"] == "json_schema"
    for api in ("completions", "chat"):
        assert kw["llamacpp", api]["extra_body"]["repeat_penalty"] == 1.2
        assert "root ::=" in kw["llamacpp", api]["extra_body"]["grammar"]
        assert "extra_body" not in kw["generic", api] and "response_format" not in kw["generic", api]
    with pytest.raises(BackendError, match="at most 4 stop"):
        ob.request_kwargs(base, Request("p", stop=("a", "b", "c", "d", "e")))
    ob.OpenAIBackend(base.replace(server="generic"))
    assert "JSON schemas are not sent" in capsys.readouterr().err


def test_a_malformed_200_is_a_retried_backend_error_naming_the_url(tmp_path):
    with LocalServer(responder, strict=False, faults=1.0, seed=1) as srv:
        srv.rng.choice = lambda kinds: "malformed"  # every request meets a malformed 200
        llm = openai_llm(srv, tmp_path, "t", max_retries=2)
        with pytest.raises(BackendError, match=rf"{re.escape(srv.base_url)}.*failed after 2 retries.*malformed"):
            llm.complete(Request("hello"))
    assert (llm.stats.malformed, llm.stats.transport_retries, llm.stats.transport_failures) == (3, 2, 1)


def test_seeded_faults_change_nothing_but_the_counts(tmp_path):
    """30% of requests meet a fault (429 + Retry-After, 500, malformed 200, dropped connection, a delay past the
    client timeout): every stage's output is byte-identical to a fault-free run, and the counts are the faults."""
    with LocalServer(responder) as clean_srv:
        clean = openai_llm(clean_srv, tmp_path, "clean", max_concurrency=4)
        want = json.dumps(every_stage(clean), sort_keys=True)
    with LocalServer(responder, faults=0.3, seed=7, timeout_delay_s=1.5) as srv:
        faulty = openai_llm(srv, tmp_path, "faulty", max_concurrency=4, timeout_s=0.5, max_retries=12)
        got = json.dumps(every_stage(faulty), sort_keys=True)
    assert got == want
    assert all(clean.stats.as_dict()[k] == 0 for k in FAULTS) and clean.stats.transport_retries == 0
    assert {k: faulty.stats.as_dict()[k] for k in FAULTS} == {k: srv.injected[k] for k in FAULTS}
    assert faulty.stats.transport_retries == sum(srv.injected.values()) > 0
    assert faulty.stats.transport_failures == 0 and faulty.stats.calls == clean.stats.calls


def test_map_keeps_input_order_and_bounds_the_calls_in_flight(tmp_path):
    live, peak, lock = [0], [0], threading.Lock()

    def slow(prompt: str) -> str:
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.02 * (int(prompt) % 3))  # later items often finish first
        with lock:
            live[0] -= 1
        return f"reply {prompt}"

    llm = LLM(FakeBackend(slow), CallCache(tmp_path), max_concurrency=4)
    got = llm.map(lambda i: llm.complete(Request(str(i))), list(range(20)))
    assert got == [f"reply {i}" for i in range(20)]
    assert 1 < peak[0] <= 4 and llm.stats.calls == 20

    def fail_on_3(i: int) -> int:
        if i == 3:
            raise BackendError("item 3 failed")
        return i

    with pytest.raises(BackendError, match="item 3"):
        llm.map(fail_on_3, list(range(10)))


def test_counts_file_accumulates_faults_and_a_run_without_calls_leaves_it_unchanged(tmp_path):
    path = tmp_path / "counts.json"
    for _ in range(2):  # two invocations, each meeting one timeout
        llm = LLM(FakeBackend(), CallCache(tmp_path / "cache"))
        with counts_file(path, llm) as extra:
            llm.complete(Request("x"))
            llm.stats.add("timeouts")
            extra["items"] = 1
    first = json.loads(path.read_text())
    assert first["timeouts"] == 2 and first["requests"] == 1 and first["items"] == 1
    before = path.read_bytes()
    llm = LLM(FakeBackend(), CallCache(tmp_path / "cache"))
    with counts_file(path, llm) as extra:
        llm.complete(Request("x"))  # a cache hit: no call
        extra["items"] = 1
    assert path.read_bytes() == before
    with pytest.raises(BackendError):  # a stage stopped by a fault still records it
        with counts_file(path, llm):
            llm.stats.add("transport_failures")
            raise BackendError("server gone")
    assert json.loads(path.read_text())["transport_failures"] == 1
