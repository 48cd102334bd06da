"""CITING's round logic on the fake backend: samples, revisions, training examples, and free re-runs."""
from __future__ import annotations

import json

import yaml
from click.testing import CliRunner

from teachloop.data import read_jsonl, write_json, write_jsonl
from teachloop.llm import LLM, CallCache
from teachloop.llm.fake import FakeBackend
from teachloop.methods import citing
from teachloop.methods.citing import RoundConfig, revise, sample_round, training_unit
from teachloop.student.prompting import revise_prompt

RECORDS = [{"id": f"id{i:02d}", "instruction": f"Explain thing {i}.", "input": "", "output": "ref"} for i in range(30)]
RUBRIC = "1. Correct. 2. Clear. 3. Complete."


def test_the_same_sample_every_round_unless_resampling():
    cfg = RoundConfig(sample_size=5)
    assert sample_round(RECORDS, cfg, 1) == sample_round(RECORDS, cfg, 2) == sample_round(RECORDS[::-1], cfg, 3)
    fresh = RoundConfig(sample_size=5, resample=True)
    assert sample_round(RECORDS, fresh, 1) != sample_round(RECORDS, fresh, 2)


def test_a_training_example_is_instruction_rubric_own_answer_to_revision():
    rec = {**RECORDS[0], "input": "some context"}
    unit = training_unit(rec, RUBRIC, "my draft", "the teacher's revision")
    assert unit == {"prompt": revise_prompt(rec["instruction"], "some context", RUBRIC, "my draft"),
                    "response": "the teacher's revision"}
    for part in (rec["instruction"], "some context", RUBRIC, "my draft"):
        assert part in unit["prompt"]
    assert "the teacher's revision" not in unit["prompt"]


def test_round_units_skip_failed_and_empty_revisions():
    cats = [{"id": 0, "rubric": RUBRIC}, {"id": 1, "rubric": "1. Short."}]
    rows = [{**RECORDS[0], "rubric_id": 1, "answer": "draft", "revision": "Better.", "ok": True},
            {**RECORDS[1], "rubric_id": 0, "answer": "draft", "revision": "", "ok": False},
            {**RECORDS[2], "rubric_id": 0, "answer": "draft", "revision": "  ", "ok": True}]
    units, counts = citing.build_units(rows, cats)
    assert units == [training_unit(RECORDS[0], "1. Short.", "draft", "Better.")]
    assert counts == {"units": 1, "skipped_failed_revisions": 1, "skipped_empty_revisions": 1}


def test_revision_sees_rubric_and_answer_and_failures_are_recorded(tmp_path):
    seen = []
    teacher = LLM(FakeBackend(lambda p: seen.append(p) or " Improved: fine. "), CallCache(tmp_path))
    got = revise(teacher, RECORDS[0], RUBRIC, "draft text", RoundConfig())
    assert got["ok"] and got["revision"] == "Improved: fine." and got["raw"] == [" Improved: fine. "]
    assert RUBRIC in seen[-1] and "draft text" in seen[-1] and RECORDS[0]["instruction"] in seen[-1]
    empty = LLM(FakeBackend(lambda p: "   "), CallCache(tmp_path / "e"))
    bad = revise(empty, RECORDS[0], RUBRIC, "draft", RoundConfig(attempts=2))
    assert not bad["ok"] and bad["revision"] == "" and bad["raw"] == ["   ", "   "] and empty.stats.failed == 1
    parrot = LLM(FakeBackend(lambda p: RUBRIC), CallCache(tmp_path / "p"))  # repeats the rubric: no revision
    copied = revise(parrot, RECORDS[0], RUBRIC, "draft", RoundConfig(attempts=2))
    assert not copied["ok"] and "repeats the rubric" in copied["error"] and parrot.stats.failed == 1


def _stage_inputs(tmp_path):
    params = yaml.safe_load(open("params.yaml"))
    params["teacher"] = {"backend": "fake"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_json(tmp_path / "rubrics" / "categories.json",
               [{"id": 0, "name": "explanations", "rubric": RUBRIC, "members": ["id00"]}])
    write_jsonl(tmp_path / "rubrics" / "assignments.jsonl", [])
    answers = [{**r, "round": 1, "category": 0, "answer": f"draft {i}"} for i, r in enumerate(RECORDS[:4])]
    write_jsonl(tmp_path / "answers.jsonl", answers)


def test_revise_stage_rerun_makes_zero_teacher_calls(tmp_path, monkeypatch):
    from stages.citing_revise import main
    from teachloop import runlog

    monkeypatch.setenv("TEACHLOOP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TEACHLOOP_RUNLOG", str(tmp_path / "runlog.jsonl"))
    _stage_inputs(tmp_path)
    args = ["--params", str(tmp_path / "params.yaml"), "--round", "1", "--answers", str(tmp_path / "answers.jsonl"),
            "--rubrics", str(tmp_path / "rubrics"), "--out", str(tmp_path / "out" / "revisions.jsonl"),
            "--counts", str(tmp_path / "out" / "counts.json")]
    counts = []
    for expected_calls, expected_hits in ((4, 0), (0, 4)):
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        counts.append((tmp_path / "out" / "counts.json").read_text())
        llm = runlog.read()[-1]["llm"]
        assert (llm["calls"], llm["hits"]) == (expected_calls, expected_hits)
    # the DVC-tracked counts do not depend on what the cache answered
    assert counts[0] == counts[1] and json.loads(counts[0])["requests"] == 4
    rows = read_jsonl(tmp_path / "out" / "revisions.jsonl")
    assert [r["id"] for r in rows] == ["id00", "id01", "id02", "id03"]
    assert all(r["rubric_id"] == 0 and r["category"] == 0 and r["ok"] and r["prompt_version"] for r in rows)
