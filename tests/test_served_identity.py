"""A served student's cache keys follow its adapter's bytes: a retrained adapter keeps its served name, so without
its hash in the backend identity the answer stage would be served the old adapter's cached replies."""
from __future__ import annotations

import pytest

from teachloop import roles
from teachloop.llm import BackendError, CallCache, Request
from teachloop.llm.cache import request_key


def student_params(adapter_dir) -> dict:
    return {"student": {"llm": {"backend": "openai", "model": "base", "base_url": "http://127.0.0.1:1/v1",
                                "server": "vllm", "api_key_env": "TEST_LOCAL_KEY",
                                "served": {str(adapter_dir): "sft"}}}}


def key_of(llm) -> str:
    """The cache key `LLM.complete` uses for one fixed request."""
    import dataclasses

    return request_key({"op": "complete", "model": llm.backend.identity(),
                        "request": dataclasses.asdict(Request("### Task:\nSay hi.\n"))})


def test_rewriting_a_served_adapter_changes_the_students_cache_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_LOCAL_KEY", "not-a-secret")
    adapter = tmp_path / "models" / "sft"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights of the first training")
    (adapter / "train_summary.json").write_text("{}")  # not the adapter: it leaves the key alone
    params = student_params(adapter)
    first = roles.student_llm(params, adapter)
    assert first.backend.identity()["model"] == "sft" and "adapter_sha256" in first.backend.identity()
    first_key = key_of(first)
    assert key_of(roles.student_llm(params, adapter)) == first_key
    (adapter / "train_summary.json").write_text('{"steps": 2}')
    assert key_of(roles.student_llm(params, adapter)) == first_key
    (adapter / "adapter_model.safetensors").write_bytes(b"weights of the second training")  # retrained
    retrained = roles.student_llm(params, adapter)
    assert retrained.backend.identity()["model"] == "sft" and key_of(retrained) != first_key
    # the base, served under `model`, has no adapter to hash
    assert "adapter_sha256" not in roles.student_llm(params, None).backend.identity()


def test_a_retrained_adapter_is_never_answered_from_the_old_cache(tmp_path, monkeypatch):
    """End to end through `LLM.complete` with a stand-in for the server call: the retrained adapter's request is
    a new call, the unchanged one a cache hit."""
    monkeypatch.setenv("TEST_LOCAL_KEY", "not-a-secret")
    adapter = tmp_path / "sft"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter.gguf").write_bytes(b"v1")
    cache = CallCache(tmp_path / "cache")
    replies = iter(["old adapter's answer", "new adapter's answer"])

    def answer(adapter_dir):
        llm = roles.student_llm(student_params(adapter_dir), adapter_dir)
        llm.cache = cache
        monkeypatch.setattr(llm.backend, "complete", lambda req: next(replies))
        return llm.complete(Request("### Task:\nSay hi.\n")), llm.stats.as_dict()

    assert answer(adapter)[0] == "old adapter's answer"
    text, stats = answer(adapter)
    assert text == "old adapter's answer" and stats["hits"] == 1
    (adapter / "adapter.gguf").write_bytes(b"v2")
    assert answer(adapter)[0] == "new adapter's answer"


def test_a_served_adapter_dir_without_adapter_files_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_LOCAL_KEY", "not-a-secret")
    (tmp_path / "sft").mkdir()
    with pytest.raises(BackendError, match="holds no adapter files"):
        roles.student_llm(student_params(tmp_path / "sft"), tmp_path / "sft").backend.identity()
