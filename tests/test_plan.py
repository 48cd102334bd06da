"""`teachloop plan` predicts the requests each LLM stage makes: checked against the counts files of a tiny run of
the real stage scripts (fake backend for teacher, student and judge, so seconds, not minutes).

The fake teacher's echoes fail the rubric and ranking schemas, so re-asks happen; its identical samples trigger Tuna's
resamples: the check `requests - reasks - resamples == planned` is exercised with both non-zero.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from teachloop import embeddings
from teachloop.cli import main as cli
from teachloop.data import SPLITS, eval_paths, read_jsonl, split_path
from teachloop.plan import Tokens, first_attempts, plan, prepared_sets, table, unrolled_counts

ROOT = Path(__file__).resolve().parent.parent


def tiny_params(judge_mode: str = "probs") -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["prepare"]["sources"] = [str(ROOT / s) for s in p["prepare"]["sources"]]
    p["prepare"]["eval_sets"] = {k: str(ROOT / v) for k, v in p["prepare"]["eval_sets"].items()}
    for section in (p["teacher"], p["student"]["llm"], p["judge"]["llm"]):
        section["backend"] = "fake"
    p["rubrics"].update(k=3, attempts=2)
    p["citing"]["rounds"] = {"1": {"prev": "models/sft"}, "2": {"prev": "models/citing/1"}}
    p["citing"]["round"].update(sample_size=3, attempts=2)
    p["candidates"].update(sample_size=3, n=2, max_resamples=1)
    p["contextual"]["attempts"] = 2
    p["answer"]["max_per_set"] = 2
    p["candidate_sets"] = {"sft": {"adapter": "models/sft"}}
    p["probabilistic_sets"], p["contextual_sets"] = ["sft"], ["sft"]
    p["evaluate"]["models"] = {"sft": {"adapter": "models/sft", "mode": "plain"},
                               "citing_r2": {"adapter": "models/citing/2", "mode": "citing"}}
    p["evaluate"]["comparisons"] = {"citing_r2_vs_sft": {"a": "citing_r2", "b": "sft"}}
    p["judge"].update(mode=judge_mode, attempts=2)
    return p


def invoke(command, args: list[str]) -> None:
    result = CliRunner().invoke(command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def run_tiny(tmp: Path, params: dict) -> Path:
    """Every LLM stage of the tiny params through its real script; returns the counts dir."""
    from stages import (answer, candidates, citing_answer, citing_revise, judge, prepare, rank_contextual, rubrics,
                        score_probabilistic)

    pf = tmp / "params.yaml"
    pf.write_text(yaml.safe_dump(params))
    prep, emb, rub, counts = tmp / "prepared", tmp / "emb", tmp / "rubrics", tmp / "counts"
    invoke(prepare.main, ["--params", str(pf), "--out", str(prep)])
    rng = np.random.default_rng(0)  # the encoder is not what is tested: random unit vectors per record
    for name, path in {**{s: split_path(prep, s) for s in SPLITS}, **eval_paths(prep)}.items():
        rows = read_jsonl(path)
        v = rng.normal(size=(len(rows), 8))
        embeddings.save(emb / f"{name}.npz", [r["id"] for r in rows], v / np.linalg.norm(v, axis=1, keepdims=True))
    adapters = {}
    for name in ("sft", "citing1", "citing2"):
        adapters[name] = tmp / "models" / name
        adapters[name].mkdir(parents=True)
        (adapters[name] / "adapter_config.json").write_text("{}")
    common = ["--params", str(pf)]
    invoke(rubrics.main, common + ["--prepared", str(prep), "--embeddings", str(emb), "--out", str(rub),
                                   "--counts", str(counts / "rubrics.json")])
    for r, prev in (("1", "sft"), ("2", "citing1")):
        answers = tmp / "rounds" / r / "answers.jsonl"
        invoke(citing_answer.main, common + ["--round", r, "--prepared", str(prep), "--rubrics", str(rub),
                                             "--adapter", str(adapters[prev]), "--out", str(answers),
                                             "--counts", str(counts / f"citing_answer_{r}.json")])
        invoke(citing_revise.main, common + ["--round", r, "--answers", str(answers), "--rubrics", str(rub),
                                             "--out", str(tmp / "rounds" / r / "revisions.jsonl"),
                                             "--counts", str(counts / f"citing_revise_{r}.json")])
    cands = tmp / "cand" / "candidates.jsonl"
    invoke(candidates.main, common + ["--prepared", str(prep), "--adapter", str(adapters["sft"]), "--out", str(cands),
                                      "--counts", str(counts / "candidates_sft.json")])
    invoke(score_probabilistic.main, common + ["--candidates", str(cands), "--out", str(tmp / "cand" / "p.jsonl"),
                                               "--counts", str(counts / "probabilistic_sft.json")])
    invoke(rank_contextual.main, common + ["--candidates", str(cands), "--out", str(tmp / "cand" / "c.jsonl"),
                                           "--counts", str(counts / "contextual_sft.json")])
    for name, mode, adapter in (("sft", "plain", "sft"), ("citing_r2", "citing", "citing2")):
        invoke(answer.main, common + ["--name", name, "--adapter", str(adapters[adapter]), "--mode", mode,
                                      "--prepared", str(prep), "--rubrics", str(rub), "--out",
                                      str(tmp / "answers" / name), "--counts", str(counts / f"answer_{name}.json")])
    invoke(judge.main, common + ["--a-dir", str(tmp / "answers" / "citing_r2"), "--b-dir", str(tmp / "answers" / "sft"),
                                 "--a-name", "citing_r2", "--b-name", "sft", "--out", str(tmp / "judge"),
                                 "--counts", str(counts / "judge_citing_r2_vs_sft.json")])
    return counts


@pytest.mark.parametrize("judge_mode", ["probs", "generate"])
def test_plan_equals_the_counts_of_a_finished_run(tmp_path, monkeypatch, judge_mode):
    monkeypatch.setenv("TEACHLOOP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TEACHLOOP_RUNLOG", str(tmp_path / "runlog.jsonl"))
    params = tiny_params(judge_mode)
    counts = run_tiny(tmp_path, params)
    rows = plan(params, ROOT / "dvc.yaml")
    assert [r.stage for r in rows] == ["rubrics", "citing_answer@1", "citing_answer@2", "citing_revise@1",
                                       "citing_revise@2", "candidates@sft", "score_probabilistic@sft",
                                       "rank_contextual@sft", "answer@sft", "answer@citing_r2",
                                       "judge@citing_r2_vs_sft"]
    seen = {}
    for r in rows:
        got = json.loads((counts / Path(r.counts).name).read_text())
        seen[r.stage] = got
        assert first_attempts(got) == r.requests, (r.stage, got)
        assert r.requests <= got["requests"] <= r.max_requests, (r.stage, got)
    # the run really had re-asks and resamples for the subtraction to account for
    assert seen["rubrics"]["reasks"] > 0 and seen["rank_contextual@sft"]["reasks"] > 0
    assert seen["candidates@sft"]["resamples"] > 0
    # and the same check through the command line, against the same counts dir
    pf = tmp_path / "params.yaml"
    result = CliRunner().invoke(cli, ["plan", "--params", str(pf), "--dvc-yaml", str(ROOT / "dvc.yaml"),
                                      "--tokenizer", "", "--against", str(counts)])
    assert result.exit_code == 0, result.output
    assert "| judge@citing_r2_vs_sft | judge | fake |" in result.output and "chars/4" in result.output


def test_plan_flags_a_count_that_differs(tmp_path):
    params = tiny_params()
    rows = plan(params, ROOT / "dvc.yaml")
    counts = tmp_path / "counts"
    counts.mkdir()
    for r in rows:
        (counts / Path(r.counts).name).write_text(json.dumps({"requests": r.requests, "reasks": 0}))
    first = rows[0]
    (counts / Path(first.counts).name).write_text(json.dumps({"requests": first.requests + 1, "reasks": 0}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(cli, ["plan", "--params", str(tmp_path / "params.yaml"), "--dvc-yaml",
                                      str(ROOT / "dvc.yaml"), "--tokenizer", "", "--against", str(counts)])
    assert result.exit_code != 0
    assert f"{first.stage}: planned {first.requests}, counted {first.requests + 1}" in result.output


def test_server_calls_split_grouped_requests_and_cost_uses_each_roles_price():
    params = tiny_params()
    for section in (params["teacher"], params["judge"]["llm"]):
        section.update(backend="openai", server="vllm", model="m", base_url="http://127.0.0.1:1/v1",
                       price_per_mtok={"input": 2.0, "output": 8.0})
    rows = {r.stage: r for r in plan(params, ROOT / "dvc.yaml")}
    n_items = 3  # candidates.sample_size: one probabilistic request per item, one HTTP call per candidate
    assert rows["score_probabilistic@sft"].requests == n_items
    assert rows["score_probabilistic@sft"].server_calls == n_items * params["candidates"]["n"]
    judge_row = rows["judge@citing_r2_vs_sft"]  # probs: one request per order, one call per criterion
    assert judge_row.server_calls == judge_row.requests * len(params["judge"]["criteria"])
    assert judge_row.cost == pytest.approx((judge_row.prompt_tokens * 2.0 + judge_row.completion_tokens * 8.0) / 1e6)
    assert rows["answer@sft"].cost is None  # the fake student has no price: no cost, not a zero one
    assert "cost $" in table(list(rows.values()), Tokens().how)


def test_sizes_computed_in_memory_equal_the_prepare_stages(tmp_path):
    from stages import prepare

    params = tiny_params()
    pf = tmp_path / "params.yaml"
    pf.write_text(yaml.safe_dump(params))
    invoke(prepare.main, ["--params", str(pf), "--out", str(tmp_path / "prep")])
    mem_train, mem_evals = prepared_sets(params)
    disk_train, disk_evals = prepared_sets(params, tmp_path / "prep")
    assert [r["id"] for r in mem_train] == [r["id"] for r in disk_train]
    assert {k: [r["id"] for r in v] for k, v in mem_evals.items()} == \
        {k: [r["id"] for r in v] for k, v in disk_evals.items()}


def test_foreach_stages_resolve_their_counts_paths_from_dvc_yaml():
    got = unrolled_counts(tiny_params(), ROOT / "dvc.yaml")
    assert got["citing_revise@2"].endswith("citing_revise_2.json")
    assert got["score_probabilistic@sft"].endswith("probabilistic_sft.json")
    assert got["judge@citing_r2_vs_sft"].endswith("judge_citing_r2_vs_sft.json")
