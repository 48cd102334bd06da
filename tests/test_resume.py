"""Resuming after `kill -9` gives the bytes of an uninterrupted run, on the real packaged model.

A stage killed part-way and re-run answers its finished requests from the call cache and makes the rest in a new
process, after a different history. That only reproduces an uninterrupted run if every reply is a function of its
request alone (`teachloop.llm.llamacpp` starts each request from a fresh state). The stage scripts run here as
subprocesses on a tiny params file and are SIGKILLed when the cache holds k entries, for several k.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from teachloop.data import read_jsonl, write_json, write_jsonl
from teachloop.llm import LLMConfig, Request, make_backend
from teachloop.student.prompting import record_prompt

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RECORDS = [{"id": "r1", "instruction": "Name three primary colours.", "input": "", "output": "Red, yellow, blue."},
           {"id": "r2", "instruction": "Give one tip for sleeping well.", "input": "", "output": "Keep a routine."}]
RUBRIC = "1. Gives the correct answer. 2. Is clear and short."


@pytest.fixture(scope="module")
def inputs(base_gguf, tmp_path_factory) -> Path:
    """params.yaml (tiny: 2 instructions, n=3, 16 tokens), data/prepared, rubrics and answers to revise."""
    d = tmp_path_factory.mktemp("inputs")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    llm = {"backend": "llamacpp", "gguf": str(base_gguf), "n_ctx": 1024, "n_threads": 2}
    params["teacher"] = dict(llm)
    params["student"]["llm"] = dict(llm)
    params["candidates"].update(n=3, sample_size=0, max_tokens=16)
    params["citing"]["round"].update(revise_max_tokens=16, attempts=2)
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    write_jsonl(d / "prepared" / "train.jsonl", RECORDS)
    write_json(d / "rubrics" / "categories.json", [{"id": 0, "name": "short answers", "rubric": RUBRIC}])
    # A student reply that is the rubric itself: the teacher tends to copy it, the copy is rejected and re-asked
    # (at temperature 0.7 with a new seed), so the revise stage really exercises re-asks across a kill.
    answers = [{**RECORDS[0], "category": 0, "answer": RUBRIC},
               {**RECORDS[1], "category": 0, "answer": "Drink coffee late."},
               {**RECORDS[0], "id": "r3", "category": 0, "answer": RUBRIC}]
    write_jsonl(d / "answers.jsonl", answers)
    return d


def _entries(cache: Path) -> int:
    return sum(1 for p in cache.rglob("*.json") if not p.name.startswith(".tmp-"))


def run_stage(args: list[str], work: Path, kill_at: list[int]) -> int:
    """Run the stage with its cache in `work`, SIGKILLed once the cache holds k entries for each k in `kill_at`,
    then once more to the end; returns how many runs were really killed."""
    cache = work / "cache"
    env = {**os.environ, "TEACHLOOP_CACHE": str(cache), "TEACHLOOP_RUNLOG": str(work / "runlog.jsonl"),
           "PYTHONPATH": str(ROOT)}
    killed = 0
    for k in kill_at:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and (not cache.exists() or _entries(cache) < k):
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed += proc.returncode == -signal.SIGKILL
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return killed


def _compare(args_for, tmp_path: Path, kill_at: list[int]) -> tuple[Path, Path]:
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_stage(args_for(whole), whole, [])
    killed = run_stage(args_for(resumed), resumed, kill_at)
    assert killed >= 2, f"only {killed} runs were killed before finishing; the test did not interrupt the stage"
    return whole, resumed


def test_candidates_resumed_after_kills_equal_an_uninterrupted_run(inputs, adapter, tmp_path):
    def args(d: Path) -> list[str]:
        return ["stages/candidates.py", "--params", str(inputs / "params.yaml"), "--prepared",
                str(inputs / "prepared"), "--adapter", str(adapter), "--out", str(d / "candidates.jsonl"),
                "--counts", str(d / "c.json")]

    # 2 instructions, each one grouped request of 3 draws (plus any redraws): kills fall between requests.
    whole, resumed = _compare(args, tmp_path, kill_at=[1, 2, 4, 5])
    assert (resumed / "candidates.jsonl").read_bytes() == (whole / "candidates.jsonl").read_bytes()
    assert (resumed / "c.json").read_bytes() == (whole / "c.json").read_bytes()
    items = read_jsonl(whole / "candidates.jsonl")
    assert len(items) == 2 and all(len(it["candidates"]) == 3 for it in items)


def test_revise_with_reasks_resumed_after_kills_equals_an_uninterrupted_run(inputs, tmp_path):
    def args(d: Path) -> list[str]:
        return ["stages/citing_revise.py", "--params", str(inputs / "params.yaml"), "--round", "1",
                "--answers", str(inputs / "answers.jsonl"), "--rubrics", str(inputs / "rubrics"),
                "--out", str(d / "revisions.jsonl"), "--counts", str(d / "c.json")]

    whole, resumed = _compare(args, tmp_path, kill_at=[1, 3, 4])
    assert (resumed / "revisions.jsonl").read_bytes() == (whole / "revisions.jsonl").read_bytes()
    assert (resumed / "c.json").read_bytes() == (whole / "c.json").read_bytes()
    rows = read_jsonl(whole / "revisions.jsonl")
    counts = json.loads((whole / "c.json").read_text())
    assert sum(r["attempts"] for r in rows) > len(rows) and counts["requests"] > len(rows)  # re-asks happened
    assert any(len(r["raw"]) > 1 for r in rows)


# --- the same request, the same reply, whatever ran before it ----------------------------------------------------


@pytest.fixture(scope="module")
def cfg(base_gguf) -> LLMConfig:
    return LLMConfig(gguf=str(base_gguf), n_ctx=1024)


def test_complete_does_not_depend_on_earlier_requests(cfg):
    # Similar prompts in a row, 32 greedy tokens each: with the previous prompt's prefix kept, 4 of these 10
    # answers came out different from the answer to the same request in a fresh context.
    instructions = ["Name three primary colours.", "Name three primary colours and say why.",
                    "Name three famous painters.", "Give one tip for sleeping well.", "Give two tips for sleeping well.",
                    "Explain why the sky is blue.", "Explain why the sea is salty.", "Write a haiku about rain.",
                    "Write a haiku about snow.", "List three uses of a brick."]
    reqs = [Request(record_prompt({"instruction": i}), max_tokens=32, stop=("###",), repeat_penalty=1.1)
            for i in instructions]
    used = make_backend(cfg)
    after_history = [used.complete(req) for req in reqs]
    first_ever = [make_backend(cfg).complete(req) for req in reqs]  # each the first request of a new context
    assert after_history == first_ever


def test_grouped_judge_and_score_requests_do_not_depend_on_earlier_requests(cfg):
    from teachloop import judge

    fresh, used = make_backend(cfg), make_backend(cfg)
    options = list(judge.OPTIONS.values())

    def criteria(first: str, second: str) -> list[str]:
        return [judge.build_prompt("Name a colour.", "", first, second, c, 300) for c in judge.CRITERIA]

    group, other = criteria("Blue.", "Red, of course."), criteria("Red, of course.", "Blue.")
    want = fresh.option_probs_many(group, options)
    used.option_probs_many(other, options)  # shares everything up to the answers with `group`
    used.option_probs("Is fire hot? Answer yes or no:", [" yes", " no"])
    assert used.option_probs_many(group, options) == want  # exact floats, not approximately

    prompt = "### Instruction:\nName a colour.\n\n### Response:\n"
    conts = ["Blue.", "Red, of course.", "Green is a colour."]
    want = fresh.logprobs_many(prompt, conts)
    used.logprobs_many(prompt, conts[::-1])
    assert used.logprobs_many(prompt, conts) == want
