"""The run's results for people and for DVC: metrics JSON, PNG plots, and the markdown report.

`build_report(...)` does it all from judge verdict records; run it through `python stages/report.py`. Plots use
matplotlib's Agg backend (files only, no display, no network).
"""
from __future__ import annotations

import csv
import math
import os
import random
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import ConfigError
from .data import read_jsonl, write_json
from .findings import judge_signal
from .metrics import CRITERIA_ORDER, average_win_rate, ordered, summarise_all

NAMES = {"base": "base (untuned)", "sft": "SFT", "tuna_p": "Tuna_p", "tuna_c": "Tuna_c", "tuna": "Tuna", "rrhf": "RRHF", "raft": "RAFT",
         "dpo": "DPO", "rlhf": "RLHF", "ppo": "PPO"}
SET_NAMES = {"test": "Held-out", "reading": "Reading", "factual": "Factual", "commonsense": "Commonsense"}
ROUND = re.compile(r"^citing_r(\d+)_vs_sft$")
PLOTS = ("reference", "rounds", "criteria", "loss")  # the report's figures; dvc.yaml names their files


@dataclass
class ReportConfig:
    """params.yaml `report`: statistics and presentation of the results."""

    n_boot: int = 1000  # bootstrap resamples of instructions for each CI
    ci: float = 0.95  # confidence level of the intervals
    seed: int = 0  # bootstrap seed: the same verdicts always give the same intervals
    n_examples: int = 4  # side-by-side examples shown in the report
    examples_from: str = ""  # comparison to draw them from; "" = the last CITING round vs SFT, else the first
    judge_model: str = ""  # named in the report; "" = described from params judge.llm
    teacher_model: str = ""  # "" = described from params teacher
    student_model: str = ""  # "" = described from params student.llm
    versus: list[str] = field(default_factory=lambda: ["base", "sft"])  # every model vs these, by reference
    headline_opponent: str = "sft"  # the headline's win rate (reference judge, ROUGE-L) is against this model
    rouge_margin: float = 0.02  # reference judge: a ROUGE-L difference within this is a tie
    cosine_margin: float = 0.02  # reference judge: the same for embedding cosine to the reference

    def validate(self, where: str) -> None:
        if self.n_boot < 10 or not 0 < self.ci < 1 or self.n_examples < 0:
            raise ConfigError(f"{where}: need n_boot >= 10, 0 < ci < 1, n_examples >= 0")
        if not (0 <= self.rouge_margin < 1 and 0 <= self.cosine_margin < 1):
            raise ConfigError(f"{where}: rouge_margin and cosine_margin must be in [0, 1)")


def model_name(model: str) -> str:
    m = re.match(r"^citing_r(\d+)$", model)
    return f"CITING r{m.group(1)}" if m else NAMES.get(model, model)


def comparison_label(comparison: str) -> str:
    a, _, b = comparison.partition("_vs_")
    return f"{model_name(a)} vs {model_name(b)}"


def load_judgements(root: str | Path) -> dict[str, list[dict]]:
    """{comparison: verdict records} from `root/<comparison>/verdicts.jsonl`."""
    root = Path(root)
    found = {p.parent.name: read_jsonl(p) for p in sorted(root.glob("*/verdicts.jsonl"))}
    if not found:
        raise FileNotFoundError(f"no */verdicts.jsonl under {root}: run the judge stages first")
    return found


def sort_comparisons(names) -> list[str]:
    """CITING first (by round), then the rest; opponents in the paper's order (SFT first, as NAMES lists them)."""
    rank = {m: i for i, m in enumerate(NAMES)}

    def key(n):
        a, _, b = n.partition("_vs_")
        m = re.match(r"^citing_r(\d+)$", a)
        return (0 if m else 1, int(m.group(1)) if m else 0, a, rank.get(b, len(rank)), b)
    return sorted(names, key=key)


def json_safe(obj):
    """JSON-safe and readable: NaN becomes null (strict JSON has no NaN), floats keep 4 decimals."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float):
        return None if math.isnan(obj) else round(obj, 4)
    return obj


def metrics_json(summaries: dict[str, dict]) -> dict:
    """{comparison: headline keys + by_eval_set + by_criterion}; per-cell detail stays in the report."""
    return json_safe({name: {k: v for k, v in s.items() if k != "by_cell"} for name, s in summaries.items()})


# ---- plots -----------------------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a CI machine or a server
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, ax, path, empty: str = "") -> None:
    """Legend (or an `empty` notice) and save. An empty plot is still written: dvc.yaml declares each as an out."""
    if empty:
        ax.text(0.5, 0.5, f"no data: {empty}", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(loc="best")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def _err(s: dict, key: str = "win_rate", prefix: str = "") -> tuple[float, float]:
    """Asymmetric error bar lengths from a summary's CI (0 where undefined)."""
    lo, hi, v = s[f"{prefix}ci_low"], s[f"{prefix}ci_high"], s[key]
    return (0.0, 0.0) if math.isnan(lo + hi + v) else (max(v - lo, 0.0), max(hi - v, 0.0))


def plot_rounds(summaries: dict[str, dict], path: str | Path) -> bool:
    """Win rate (and win + tie/2) of CITING round K over SFT against K; False when there is no such comparison."""
    rounds = sorted((int(m.group(1)), s) for n, s in summaries.items() if (m := ROUND.match(n)))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r for r, _ in rounds]
    for key, prefix, label in (("win_rate", "", "win rate"), ("score", "score_", "win + tie/2")):
        ys = [s[key] for _, s in rounds]
        errs = [[_err(s, key, prefix)[i] for _, s in rounds] for i in (0, 1)]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=4, label=label)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="parity (win + tie/2)")
    ax.set(xlabel="CITING round", ylabel="rate vs SFT", ylim=(0, 1), title="CITING vs SFT by round")
    ax.set_xticks(xs)
    _finish(fig, ax, path, "" if xs else "no citing_rK_vs_sft comparison")
    return bool(rounds)


def plot_criteria(summaries: dict[str, dict], path: str | Path, no_signal: str = "") -> bool:
    """Win rate per criterion (bars, CI error bars) for each comparison; `no_signal` is written over the bars."""
    names = sort_comparisons(summaries)
    crits = ordered({c for s in summaries.values() for c in s["by_criterion"]}, CRITERIA_ORDER)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(names) + 2), 4.5))
    width = 0.8 / max(len(crits), 1)
    for j, c in enumerate(crits):
        subs = [summaries[n]["by_criterion"].get(c) for n in names]
        ys = [0.0 if not s or math.isnan(s["win_rate"]) else s["win_rate"] for s in subs]
        errs = [[_err(s)[i] if s else 0.0 for s in subs] for i in (0, 1)]
        xs = [i + (j - (len(crits) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=c.replace("_", "-"))
    ax.set_xticks(range(len(names)), [comparison_label(n) for n in names], rotation=30, ha="right")
    ax.set(ylabel="win rate", ylim=(0, 1), title="Win rate per criterion (bootstrap CI)")
    if no_signal and crits:  # all-zero bars look like an empty frame: say in words why there is nothing to see
        ax.text(0.5, 0.6, "\n".join(textwrap.wrap(no_signal[0].upper() + no_signal[1:], 60)), ha="center",
                va="center", transform=ax.transAxes, fontsize=9, bbox={"facecolor": "white", "edgecolor": "grey"})
    _finish(fig, ax, path, "" if crits else "no verdicts")
    return bool(names and crits)


def read_loss_log(path: str | Path) -> tuple[list[float], list[float]]:
    """(steps, losses) from a tab-separated training log whose header names `step` and `loss` columns."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and not {"step", "loss"} <= set(rows[0]):
        raise ValueError(f"{path}: header must name 'step' and 'loss' columns, got {sorted(rows[0])}")
    # Rows without a numeric loss (e.g. an eval-only row with an empty cell) are skipped, not plotted as 0.
    points = [(float(r["step"]), float(r["loss"])) for r in rows if _number(r["step"]) and _number(r["loss"])]
    return [x for x, _ in points], [y for _, y in points]


def _number(text) -> bool:
    try:
        return not math.isnan(float(text))
    except (TypeError, ValueError):
        return False


def find_loss_logs(logs_dir: str | Path | None) -> dict[str, str]:
    """{training stage: its loss TSV} for every dvclive dir under `logs_dir` (dvclive keeps a metric's steps in
    `<dir>/plots/metrics/<metric>.tsv`)."""
    if not logs_dir or not Path(logs_dir).exists():
        return {}
    return {p.parents[2].name: str(p) for p in sorted(Path(logs_dir).glob("*/plots/metrics/loss.tsv"))}


def plot_losses(logs: dict[str, str], path: str | Path) -> list[str]:
    """Training loss curves, one line per log; returns the names whose log was missing or empty."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    missing = []
    for name, log in logs.items():
        steps, losses = read_loss_log(log) if Path(log).exists() else ([], [])
        if not steps:
            missing.append(name)
            continue
        ax.plot(steps, losses, label=name, linewidth=1.2)
    ax.set(xlabel="step", ylabel="loss", title="Training loss")
    _finish(fig, ax, path, "" if len(missing) < len(logs) else "no training log")
    return missing


# ---- markdown --------------------------------------------------------------------------------------------------

def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _cell(s: dict | None) -> str:
    if not s or math.isnan(s["win_rate"]):
        return "n/a"
    return f"{100 * s['win_rate']:.1f}% [{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}]"


def _table(head: list[str], rows: list[list]) -> str:
    lines = [head, ["---"] * len(head)] + rows
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


def paper_table(summaries: dict[str, dict]) -> str:
    """CITING paper layout: one row per comparison, each eval set's win rate, then the average; "win% [lo, hi]"."""
    sets = ordered({e for s in summaries.values() for e in s["by_eval_set"]})
    rows = [[comparison_label(n)] + [_cell(summaries[n]["by_eval_set"].get(e)) for e in sets] + [_cell(summaries[n])]
            for n in sort_comparisons(summaries)]
    return _table(["Comparison"] + [SET_NAMES.get(e, e) for e in sets] + ["Average"], rows)


def detail_table(summaries: dict[str, dict]) -> str:
    keys = ["win_rate", "tie_rate", "loss_rate", "score", "position_bias_rate", "first_position_rate"]
    pref = lambda v: "n/a" if v is None else f"{v:+.3f}"  # noqa: E731
    rows = [[comparison_label(n)] + [_pct(summaries[n][k]) for k in keys] + [pref(summaries[n]["mean_preference"]),
            summaries[n]["n_instructions"], summaries[n]["n_failed"]] for n in sort_comparisons(summaries)]
    return _table(["Comparison", "win", "tie", "loss", "win + tie/2", "position bias", "first chosen",
                   "graded pref.", "instructions", "failed"], rows)


def headline_lines(summaries: dict[str, dict]) -> list[str]:
    """The paper's headline per method of interest: its win rate averaged over its opponents (and over sets)."""
    by_a: dict[str, list[str]] = {}
    for n in sort_comparisons(summaries):
        by_a.setdefault(n.partition("_vs_")[0], []).append(n)
    out = []
    for a, names in by_a.items():
        avg = average_win_rate(summaries, names)
        opponents = ", ".join(model_name(n.partition("_vs_")[2]) for n in names)
        out.append(f"- {model_name(a)} over {opponents}: average win rate {_pct(avg['win_rate'])} "
                   f"(win + tie/2: {_pct(avg['score'])})")
    return out


def _quote(text: str, n: int = 700) -> str:
    text = text.strip() if len(text) <= n else text[:n].rstrip() + " [...]"
    return "\n".join("> " + line for line in (text.splitlines() or [""]))


def pick_examples(records: list[dict], n: int, seed: int) -> list[list[dict]]:
    """Up to `n` instructions (their records, one per criterion), mixing wins, losses and ties when possible."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["eval_set"], r["id"]), []).append(r)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    majority = {k: max(("win", "tie", "loss"), key=[r["verdict"] for r in groups[k]].count) for k in keys}
    chosen: list[tuple] = []
    for want in ("win", "loss", "tie"):  # one of each first, so the examples are not all alike
        chosen += [k for k in keys if majority[k] == want and k not in chosen][:1]
    chosen += [k for k in keys if k not in chosen]
    return [groups[k] for k in chosen[:n]]


def examples_md(records: list[dict], n: int, seed: int) -> str:
    parts = []
    for recs in pick_examples(records, n, seed):
        r = recs[0]
        verdicts = ", ".join(
            f"{x['criterion']}: **{x['verdict'] or 'failed'}** (orders: "
            f"{' / '.join(str(o['position_verdict']) for o in x['orders'])})" for x in recs)
        block = [f"**{SET_NAMES.get(r['eval_set'], r['eval_set'])} `{r['id']}`**: {r['instruction']}"]
        if r.get("input"):
            block.append(f"Input:\n{_quote(r['input'], 400)}")
        block += [f"*{model_name(r['a_model'])}* (A):\n{_quote(r['answer_a'])}",
                  f"*{model_name(r['b_model'])}* (B):\n{_quote(r['answer_b'])}",
                  f"Verdicts for A: {verdicts}"]
        parts.append("\n\n".join(block))
    return "\n\n---\n\n".join(parts) if parts else "_No judged pairs._"


def calls_table(calls: list[dict]) -> str:
    """LLM requests per stage with re-asks and failures, and whatever else each stage counted (skips, empties)."""
    if not calls:
        return "_No stage counts were found._"
    keys = ["stage", "requests", "retried", "failed"]
    other = lambda c: ", ".join(f"{k} {v}" for k, v in c.items() if k not in keys)  # noqa: E731
    return _table(keys + ["other counts"], [[c.get(k, "") for k in keys] + [other(c)] for c in calls])


def models_line(judge: str, teacher: str, student: str) -> str:
    line = f"Figures produced with judge **{judge}**, teacher **{teacher}**, student **{student}**."
    if "270m" in judge.lower():
        return line + (" With a 270M base-model judge these numbers show that the machinery works end to end "
                       "(both orders, ties, un-swapping, intervals), not the CITING paper's claim; that takes a "
                       "strong judge (`judge.mode: generate` with an OpenAI-compatible model).")
    return line + " Read them with the judge's position bias (below) in mind."


def default_examples_source(names: list[str]) -> str:
    """The last CITING round vs SFT when there is one: the comparison the paper's story is about."""
    rounds = sorted((int(m.group(1)), n) for n in names if (m := ROUND.match(n)))
    return rounds[-1][1] if rounds else sort_comparisons(names)[0]


def render_report(summaries, by_comparison, plots: dict[str, str], report_dir: Path, rubric_summary: str | None,
                  params: dict, calls: list[dict], models: tuple[str, str, str], cfg: ReportConfig,
                  missing_logs: list[str], found: dict | None = None) -> str:
    rel = {k: os.path.relpath(v, report_dir) for k, v in plots.items()}
    src = cfg.examples_from or default_examples_source(list(by_comparison))
    if src not in by_comparison:
        raise ConfigError(f"report.examples_from: no comparison {src!r}; have {sorted(by_comparison)}")
    from .report_findings import audit_table, findings_section  # the reference-grounded half of the report

    no_signal = judge_signal(summaries)
    out = ["# Results", "", models_line(*models), ""]
    if found:
        out += [f"Reference measures: answers generated by the student (**{models[2]}**) with each model's "
                "adapter; log-likelihoods from the same student's HF twin with that adapter "
                f"(`reference.dtype: {params.get('reference', {}).get('dtype', '?')}`). No LLM judges them.", ""]
        out += findings_section(found, cfg, rel)
    out += [f"## LLM judge: win rates ({100 * cfg.ci:.0f}% bootstrap CIs over instructions, {cfg.n_boot} resamples)",
            "",
            *([f"**The LLM judge carries no signal on this run**: {no_signal}. Its tables below show that the "
               "machinery works; read the reference measures above for findings.", ""] if no_signal else []),
           "Win rate of the first model over the second, macro-averaged over the criteria "
           f"({', '.join(ordered({c for s in summaries.values() for c in s['by_criterion']}, CRITERIA_ORDER))}); "
           "each pair judged in both orders, disagreement counted as a tie.", "",
           paper_table(summaries), "", *headline_lines(summaries), "", "### Detail", "", detail_table(summaries), "",
           "Position bias: share of judgements whose two orders chose the same position (the verdict followed "
           "the order, not the answers). First chosen: share of single-order verdicts that picked the answer "
           "shown first. Graded pref.: mean over both orders of P(A's answer) - P(B's answer) (probs mode), "
           "which cancels a constant pull toward one position.", ""]
    if found:
        out += ["### Judge audit", "", "The LLM judge against the reference judge (ROUGE-L) on the same items. "
                "Agreement counts items where the reference judge is decided; a judge tie there is a disagreement. "
                "Calibrated: each criterion's mean pull toward the first position (estimated from both orders) is "
                "removed from P(first) - P(second) before the tie margin applies.", "", audit_table(found), ""]
    out += ["## Plots", ""]
    titles = {"rounds": "CITING vs SFT by round", "criteria": "Win rate per criterion", "loss": "Training loss"}
    for key, title in titles.items():
        out += [f"![{title}]({rel[key]})", ""] if key in rel else [f"_{title}: no data._", ""]
    if missing_logs:
        out += [f"Training logs missing or empty: {', '.join(missing_logs)}.", ""]
    found = bool(rubric_summary) and Path(rubric_summary).exists()
    out += ["## Rubrics", "", Path(rubric_summary).read_text(encoding="utf-8").strip() if found else
            f"_No rubric summary found{f' at `{rubric_summary}`' if rubric_summary else ''}._", ""]
    out += [f"## Examples ({comparison_label(src)})", "", examples_md(by_comparison[src], cfg.n_examples, cfg.seed),
            "", "## LLM calls and skips", "", "Requests answered by the backend or the call cache; how many "
            "the cache answered is in the run log (`.cache/runlog.jsonl`), not here, so a re-run from cache "
            "gives the same report.", "", calls_table(calls), "", "## Params", "", "```yaml",
            yaml.safe_dump(params, sort_keys=False).strip(), "```", ""]
    return "\n".join(out)


def build_report(by_comparison: dict[str, list[dict]], cfg: ReportConfig, metrics_out: str | Path,
                 plot_paths: dict[str, str | Path], report_out: str | Path, logs: dict[str, str] | None = None,
                 rubric_summary: str | None = None, params: dict | None = None, calls: list[dict] | None = None,
                 models: tuple[str, str, str] = ("unspecified",) * 3, found: dict | None = None) -> dict[str, dict]:
    """Write metrics JSON, plots and the markdown report; return the per-comparison summaries.

    `found` (`findings.compute`) adds the reference-grounded sections and the reference plot in front.
    """
    summaries = summarise_all(by_comparison, cfg.n_boot, cfg.seed, cfg.ci)
    write_json(metrics_out, metrics_json(summaries))
    report_out = Path(report_out)
    paths = {k: str(plot_paths[k]) for k in PLOTS if k in plot_paths}
    missing = plot_losses(logs or {}, paths["loss"])
    has = {"rounds": plot_rounds(summaries, paths["rounds"]),
           "criteria": plot_criteria(summaries, paths["criteria"], judge_signal(summaries)),
           "loss": len(missing) < len(logs or {})}
    if "reference" in paths:
        from .report_findings import plot_reference

        has["reference"] = bool(found) and plot_reference(found, paths["reference"])
    plots = {k: p for k, p in paths.items() if has[k]}  # the report embeds only plots that show something
    report_out.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(summaries, by_comparison, plots, report_out.parent, rubric_summary, params or {},
                         calls or [], models, cfg, missing, found)
    report_out.write_text(text, encoding="utf-8")
    return summaries
