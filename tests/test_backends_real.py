"""Real backends on the packaged gemma-3-270m: llama.cpp in process, and the openai backend against
`python -m llama_cpp.server` on localhost (started and stopped here)."""
from __future__ import annotations

import json
import math
import os

import pytest

from teachloop.llm.testserver import free_port, llama_cpp_server

from teachloop.llm import LLM, BackendError, CallCache, LLMConfig, Request, make_backend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llamacpp(base_gguf):
    return make_backend(LLMConfig(gguf=str(base_gguf), n_ctx=1024))


def test_llamacpp_greedy_completion_is_reproducible_and_cached(llamacpp, tmp_path):
    llm = LLM(llamacpp, CallCache(tmp_path))
    req = Request("The three primary colours are", max_tokens=12)
    first = llm.complete(req)
    assert first.strip() and llm.stats.calls == 1
    assert llamacpp.complete(req) == first  # greedy: same text again without the cache
    assert llm.complete(req) == first and llm.stats.hits == 1
    assert llm.identity()["gguf_sha256"] and len(llm.identity()["gguf_sha256"]) == 64


def test_llamacpp_json_schema_constrains_the_reply(llamacpp):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}}, "required": ["name"]}
    text = llamacpp.complete(Request("Give a JSON object with a name for a cat:", max_tokens=40, json_schema=schema))
    assert isinstance(json.loads(text)["name"], str)


def test_llamacpp_logprobs_and_option_probs(llamacpp):
    lp = llamacpp.logprobs("The capital of France is", " Paris")
    assert len(lp) >= 1 and all(v <= 0 for v in lp)
    likely = sum(llamacpp.logprobs("The capital of France is", " Paris."))
    unlikely = sum(llamacpp.logprobs("The capital of France is", " banana."))
    assert likely > unlikely
    probs = llamacpp.option_probs("Is fire hot? Answer yes or no:", [" yes", " no"])
    assert math.isclose(sum(probs.values()), 1.0, rel_tol=1e-6) and set(probs) == {" yes", " no"}


def test_llamacpp_grouped_requests_mean_what_single_ones_do(llamacpp):
    prompts = [f"Question: is {x} hot? Answer yes or no:" for x in ("fire", "ice", "the sun")]
    many = llamacpp.option_probs_many(prompts, [" yes", " no"])
    singles = [llamacpp.option_probs(p, [" yes", " no"]) for p in prompts]
    for got, want in zip(many, singles):  # prefix reuse inside the request changes rounding, not meaning
        assert got == pytest.approx(want, abs=1e-3)
    conts = [" Paris.", "", " banana."]
    lps = llamacpp.logprobs_many("The capital of France is", conts)
    assert lps[1] == [] and len(lps) == 3
    for got, c in zip(lps, conts):
        assert got == pytest.approx(llamacpp.logprobs("The capital of France is", c), abs=1e-3)


def test_llamacpp_prompt_format_auto_follows_the_gguf_template(base_gguf):
    auto = make_backend(LLMConfig(gguf=str(base_gguf), n_ctx=512, prompt_format="auto"))
    has_template = bool(auto.gen.metadata.get("tokenizer.chat_template"))
    assert auto.uses_chat_template() == has_template
    assert auto.complete(Request("Name a colour.", max_tokens=6)) is not None
    plain = make_backend(LLMConfig(gguf=str(base_gguf), n_ctx=512, prompt_format="plain"))
    assert not plain.uses_chat_template()


def test_llamacpp_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(BackendError, match="dvc repro base"):
        make_backend(LLMConfig(gguf=str(tmp_path / "none.gguf")))


@pytest.fixture(scope="module")
def server(base_gguf):
    with llama_cpp_server(["--model", str(base_gguf), "--n_ctx", "1024", "--n_threads", "2", "--seed", "1"]) as url:
        yield url


def test_openai_backend_against_a_local_server(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_LOCAL_KEY", "not-a-secret")
    cfg = LLMConfig(backend="openai", model="gemma", base_url=server, api_key_env="TEST_LOCAL_KEY", timeout_s=60)
    llm = LLM(make_backend(cfg), CallCache(tmp_path))
    text = llm.complete(Request("The capital of France is", max_tokens=8))
    assert text.strip()
    assert llm.complete(Request("The capital of France is", max_tokens=8)) == text and llm.stats.hits == 1
    entry = next(tmp_path.rglob("*.json")).read_text()
    assert "not-a-secret" not in entry and "TEST_LOCAL_KEY" not in entry  # the key never reaches the cache
    probs = llm.option_probs("Is fire hot? Answer yes or no:", [" yes", " no"])
    assert math.isclose(sum(probs.values()), 1.0, rel_tol=1e-6)


def test_openai_backend_errors_are_clear(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(BackendError, match="NO_SUCH_KEY_VAR is not set"):
        make_backend(LLMConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1",
                               api_key_env="NO_SUCH_KEY_VAR"))
    os.environ["TEST_DEAD_KEY"] = "x"
    dead = make_backend(LLMConfig(backend="openai", model="m", base_url=f"http://127.0.0.1:{free_port()}/v1",
                                  api_key_env="TEST_DEAD_KEY", timeout_s=2, max_retries=1))
    with pytest.raises(BackendError, match="failed after 1 retries"):
        dead.complete(Request("hi", max_tokens=2))
