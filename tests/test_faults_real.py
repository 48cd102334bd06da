"""Every LLM stage survives transport faults in front of a real server, and counts them: `python -m llama_cpp.server`
on the packaged model behind a seeded fault proxy on 127.0.0.1 (`teachloop.llm.testserver.FaultProxy`).

Each stage script runs twice on the same inputs with separate call caches: through the proxy at 0% faults, then at
30% (a delay past the client's timeout, 429 with Retry-After, 500, a truncated or HTML 200, a dropped connection).
Its output files must be the same bytes, and its counts file's fault counts must equal what the proxy injected
during that run. The proxy sends a one-token reset prompt before each forwarded request, so every reply is a
function of the request alone (the server otherwise reuses the previous prompt's KV prefix; see FaultProxy).

Not covered: score_probabilistic. llama-cpp-python's server builds echoed prompt log-probabilities by sorting the
whole 262k-token vocabulary in Python for every prompt token (~0.45 s a token on this 2-core machine, ~30 s per
candidate), which does not fit a test of minutes; its fault handling is the same `_call` as every other request's.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from teachloop import embeddings
from teachloop.data import SPLITS, eval_paths, read_jsonl, split_path, write_jsonl
from teachloop.llm import openai_backend as ob
from teachloop.llm.client import ACCUMULATED
from teachloop.llm.testserver import FAULTS, FaultProxy, llama_cpp_server

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
# The client's timeout: a real request here takes 2-25 s on a loaded 2-core machine, and may queue behind one other
# (the server answers one at a time); a real request past it would be a timeout the proxy did not inject.
TIMEOUT_S = 60
# The proxy draws its faults in arrival order from one seeded stream, so which faults a run meets depends only on the
# seed and the number of requests: seed 201 injects all five kinds, exactly one timeout (each costs TIMEOUT_S), for
# any total of 10 to 25 requests (this test makes ~16).
FAULT_RATE, FAULT_SEED = 0.3, 201


@pytest.fixture(scope="module")
def proxy(base_gguf):
    """The fault proxy in front of llama_cpp.server (default n_batch; the proxy's reset keeps replies pure)."""
    args = ["--model", str(base_gguf), "--n_ctx", "2048", "--n_threads", "2", "--seed", "1"]
    with llama_cpp_server(args) as url, FaultProxy(url, seed=FAULT_SEED, timeout_delay_s=TIMEOUT_S + 1,
                                                   reset_prompt="\u00a4") as p:
        yield p


def tiny_params(base_url: str, adapter: Path) -> dict:
    """The default params with every role served through the proxy and every size cut to a few requests."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["prepare"]["sources"] = [str(ROOT / s) for s in p["prepare"]["sources"]]
    p["prepare"]["eval_sets"] = {k: str(ROOT / v) for k, v in p["prepare"]["eval_sets"].items()}
    served = dict(backend="openai", base_url=base_url, api="completions", server="llamacpp",
                  api_key_env="TEST_LOCAL_KEY", timeout_s=TIMEOUT_S, max_retries=10, max_concurrency=2)
    p["teacher"].update(served, model="teacher")
    p["student"]["llm"].update(served, model="base", served={str(adapter): "sft"})
    p["judge"]["llm"].update(served, model="judge")
    p["student"]["decode"]["max_tokens"] = 12
    p["rubrics"].update(k=1, examples_per_category=2, max_tokens=24, attempts=1)
    p["citing"]["rounds"] = {"1": {"prev": str(adapter)}}
    p["citing"]["round"].update(sample_size=2, revise_max_tokens=16, attempts=1)
    p["candidates"].update(sample_size=1, n=2, max_tokens=8, max_resamples=1)
    p["contextual"].update(max_tokens=16, attempts=2)
    p["answer"]["max_per_set"] = 1
    p["judge"].update(criteria=["articulate"], mode="probs")
    return p


def test_every_stage_gives_the_same_bytes_through_faults_and_counts_them(proxy, tmp_path, monkeypatch):
    from stages import (answer, candidates, citing_answer, citing_revise, judge, prepare, rank_contextual,
                        rubrics)

    monkeypatch.setattr(ob, "BACKOFF_BASE_S", 0.05)
    monkeypatch.setenv("TEST_LOCAL_KEY", "not-a-secret")
    monkeypatch.setenv("TEACHLOOP_RUNLOG", str(tmp_path / "runlog.jsonl"))
    adapter = tmp_path / "models" / "sft"  # the server serves one model whatever the name; the dir names it
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    pf = tmp_path / "params.yaml"
    pf.write_text(yaml.safe_dump(tiny_params(proxy.base_url, adapter)))
    prep, emb = tmp_path / "prepared", tmp_path / "emb"
    result = CliRunner().invoke(prepare.main, ["--params", str(pf), "--out", str(prep)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rng = np.random.default_rng(0)  # the encoder is not what is tested: random unit vectors per record
    for name, path in {**{s: split_path(prep, s) for s in SPLITS}, **eval_paths(prep)}.items():
        v = rng.normal(size=(len(read_jsonl(path)), 8))
        embeddings.save(emb / f"{name}.npz", [r["id"] for r in read_jsonl(path)],
                        v / np.linalg.norm(v, axis=1, keepdims=True))

    def run(stage: str, command, args) -> Path:
        """The stage fault-free, then faulty; returns the fault-free run's dir. `{o}` in args = the run's dir."""
        got = {}
        for run_name, rate in (("clean", 0.0), ("faulty", FAULT_RATE)):
            out = tmp_path / run_name / stage
            monkeypatch.setenv("TEACHLOOP_CACHE", str(tmp_path / "cache" / run_name))
            proxy.faults = rate
            before = Counter(proxy.injected)
            result = CliRunner().invoke(command, ["--params", str(pf), "--counts", str(out / "counts.json"),
                                                  *[a.format(o=out) for a in args]], catch_exceptions=False)
            assert result.exit_code == 0, (stage, run_name, result.output)
            injected = proxy.injected - before
            counts = json.loads((out / "counts.json").read_text())
            got[run_name] = counts
            assert {k: counts[k] for k in FAULTS} == {k: injected[k] for k in FAULTS}, (stage, run_name, counts)
            assert counts["transport_retries"] == sum(injected.values()) and counts["transport_failures"] == 0
            injected_total[stage] = injected_total.get(stage, Counter()) + injected
        outputs = {run_name: {f.relative_to(tmp_path / run_name / stage): f.read_bytes()
                              for f in sorted((tmp_path / run_name / stage).rglob("*"))
                              if f.is_file() and f.name != "counts.json"} for run_name in got}
        assert outputs["clean"] and list(outputs["faulty"]) == list(outputs["clean"]), stage
        for name, data in outputs["clean"].items():
            assert outputs["faulty"][name] == data, (stage, str(name))
        # what the inputs decide (requests, re-asks, failures, the stage's own counts) is the same in both runs
        assert {k: v for k, v in got["faulty"].items() if k not in ACCUMULATED} == \
            {k: v for k, v in got["clean"].items() if k not in ACCUMULATED}
        return tmp_path / "clean" / stage

    injected_total: dict[str, Counter] = {}
    rub = run("rubrics", rubrics.main, ["--prepared", str(prep), "--embeddings", str(emb), "--out", "{o}/out"]) / "out"
    answers = run("citing_answer", citing_answer.main,
                  ["--round", "1", "--prepared", str(prep), "--rubrics", str(rub), "--adapter", str(adapter),
                   "--out", "{o}/answers.jsonl"]) / "answers.jsonl"
    run("citing_revise", citing_revise.main, ["--round", "1", "--answers", str(answers), "--rubrics", str(rub),
                                              "--out", "{o}/revisions.jsonl"])
    cands = run("candidates", candidates.main, ["--prepared", str(prep), "--adapter", str(adapter), "--out",
                                                "{o}/candidates.jsonl"]) / "candidates.jsonl"
    run("rank_contextual", rank_contextual.main, ["--candidates", str(cands), "--out", "{o}/contextual.jsonl"])
    ans = run("answer", answer.main, ["--name", "sft", "--adapter", str(adapter), "--mode", "plain", "--prepared",
                                      str(prep), "--rubrics", str(rub), "--out", "{o}/out"]) / "out"
    # The judge compares the student's test answers with the references: one item, both orders, one criterion.
    a_dir, b_dir = tmp_path / "judge_in" / "a", tmp_path / "judge_in" / "b"
    a_dir.mkdir(parents=True)
    shutil.copy(ans / "test.jsonl", a_dir / "test.jsonl")
    refs = {r["id"]: r["output"] for r in read_jsonl(split_path(prep, "test"))}
    write_jsonl(b_dir / "test.jsonl", [{**r, "model": "reference", "answer": refs[r["id"]]}
                                       for r in read_jsonl(ans / "test.jsonl")])
    run("judge", judge.main, ["--a-dir", str(a_dir), "--b-dir", str(b_dir), "--a-name", "sft", "--b-name",
                              "reference", "--out", "{o}/out"])

    total = sum(injected_total.values(), Counter())
    print(f"faults injected per stage: { {k: dict(v) for k, v in injected_total.items()} }; "
          f"requests the server answered (both runs): {proxy.forwarded}")
    assert set(total) == set(FAULTS), total  # every kind of fault was met, and survived, somewhere
