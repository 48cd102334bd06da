"""Grouped sampling (`complete_samples`) on the real packaged model: N samples of a prompt as one llama.cpp request
are a function of the request alone (fresh process or not), distinct per seed, bounded per stream, and drawn with
the student's LoRA when it has one."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from teachloop.llm import LLM, CallCache, LLMConfig, Request
from teachloop.llm.llamacpp import LlamaCppBackend

pytestmark = pytest.mark.slow

PROMPT = "### Instruction:\nName three primary colours and say why.\n\n### Response:\n"
REQ = Request(PROMPT, max_tokens=10, temperature=0.9, seed=7, stop=("\n###",), repeat_penalty=1.1)
N_CTX = 512

# Runs in a new interpreter: the request is the first and only thing that process's llama.cpp ever evaluates.
FRESH = """
import json, sys
from teachloop.llm import LLMConfig, Request
from teachloop.llm.llamacpp import LlamaCppBackend
req = Request(**json.loads(sys.argv[2]))
backend = LlamaCppBackend(LLMConfig(gguf=sys.argv[1], n_ctx=int(sys.argv[3])))
print(json.dumps(backend.complete_samples(req, int(sys.argv[4]))))
"""


@pytest.fixture(scope="module")
def backend(base_gguf):
    return LlamaCppBackend(LLMConfig(gguf=str(base_gguf), n_ctx=N_CTX))


def fresh_process_samples(gguf, req: Request, n: int) -> list[str]:
    fields = {k: v for k, v in req.__dict__.items() if k != "json_schema"}
    out = subprocess.run([sys.executable, "-c", FRESH, str(gguf), json.dumps(fields), str(N_CTX), str(n)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_grouped_samples_are_the_same_bytes_in_a_fresh_process_and_after_other_requests(backend, base_gguf):
    first = fresh_process_samples(base_gguf, REQ, 4)
    # a history in this process: single completions, option probabilities, other groups of other sizes
    backend.complete(Request("The capital of France is", max_tokens=6))
    backend.option_probs("Is fire hot? Answer yes or no:", [" yes", " no"])
    backend.complete_samples(Request("Write a haiku about rain.\n", max_tokens=9, temperature=1.0, seed=3), 4)
    backend.complete_samples(Request(PROMPT + "Red", max_tokens=5, temperature=0.7, seed=7), 2)
    after = backend.complete_samples(REQ, 4)
    assert after == first
    assert backend.complete_samples(REQ, 4) == first


def test_grouped_samples_are_distinct_per_seed_reproducible_and_one_cache_entry(backend, tmp_path):
    llm = LLM(backend, CallCache(tmp_path))
    samples = llm.complete_samples(REQ, 4)
    assert len(samples) == 4 and len(set(samples)) == 4 and all(s.strip() for s in samples)
    other = llm.complete_samples(Request(**{**REQ.__dict__, "seed": REQ.seed + 100}), 4)
    assert other != samples
    assert llm.stats.calls == 2 and len(list(tmp_path.rglob("*.json"))) == 2
    # a second LLM over the same cache is served without a call, and the backend alone agrees with it
    again = LLM(backend, CallCache(tmp_path))
    assert again.complete_samples(REQ, 4) == samples and again.stats.hits == 1 and again.stats.calls == 0
    assert backend.complete_samples(REQ, 4) == samples


def test_each_stream_stops_at_its_stop_string_and_max_tokens(backend):
    capped = backend.complete_samples(Request(PROMPT, max_tokens=6, temperature=1.0, seed=2), 3)
    tokens = [backend.gen.tokenize(s.encode(), add_bos=False, special=False) for s in capped]
    assert all(0 < len(t) <= 6 for t in tokens)
    # "e" occurs early in nearly any English text: every stream is cut right before its first one
    stopped = backend.complete_samples(Request(PROMPT, max_tokens=12, temperature=1.0, seed=2, stop=("e",)), 3)
    assert all("e" not in s for s in stopped)
    one = backend.complete_samples(Request(PROMPT, max_tokens=6, temperature=1.0, seed=2), 1)
    assert len(one) == 1 and one[0].strip()


def test_grouped_samples_use_the_lora_adapter(base_model_dir, base_gguf, tmp_path):
    """Without the adapter applied to the grouped context, a student's candidates would be the base model's."""
    import torch

    from teachloop.student.model import LoraConfig, load_student, save_adapter

    torch.manual_seed(0)
    model = load_student(base_model_dir, lora=LoraConfig(r=4, alpha=8), trainable=False)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # large enough to change greedy text within a few tokens
    save_adapter(model, tmp_path / "ad")
    greedy = Request(PROMPT, max_tokens=8, temperature=0.0)
    base = LlamaCppBackend(LLMConfig(gguf=str(base_gguf), n_ctx=N_CTX))
    tuned = LlamaCppBackend(LLMConfig(gguf=str(base_gguf), lora=str(tmp_path / "ad" / "adapter.gguf"), n_ctx=N_CTX))
    with_lora, without = tuned.complete_samples(greedy, 2), base.complete_samples(greedy, 2)
    assert with_lora != without
    # the first token of a greedy sample comes from the prompt's logits, as in a single completion
    first = lambda b, text: b.gen.tokenize(text.encode(), add_bos=False, special=False)[:1]
    assert first(tuned, with_lora[0]) == first(tuned, tuned.complete(greedy))
