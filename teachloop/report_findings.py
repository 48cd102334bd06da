"""The reference-grounded half of the report: per-model and pairwise tables, the judge audit, the lead section
("what separates the models") and the per-model plot, all from `findings.compute`'s dict.

`report.render_report` / `report.build_report` call these; the shared naming and table helpers live in `report`.
"""
from __future__ import annotations

import math
from pathlib import Path

from .findings import MEASURES
from .metrics import ordered
from .report import SET_NAMES, ReportConfig, _cell, _pct, _plt, _table, comparison_label, model_name


def plot_reference(found: dict, path: str | Path) -> bool:
    """Per model, ROUGE-L and reference log-likelihood (macro mean, bootstrap CI), one panel per measure."""
    models = [m for m in found["models"] if found["models"][m]]
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 0.9 * len(models) + 4), 4.2))
    for ax, key in zip(axes, MEASURES):
        rows = [(m, found["models"][m][key]) for m in models if key in found["models"][m]]
        xs = list(range(len(rows)))
        ys = [s["mean"] for _, s in rows]
        errs = [[max(s["mean"] - s["ci_low"], 0) for _, s in rows], [max(s["ci_high"] - s["mean"], 0) for _, s in rows]]
        ax.errorbar(xs, ys, yerr=errs, fmt="o", capsize=4, label=f"{MEASURES[key]} (95% CI)")
        ax.set_xticks(xs, [model_name(m) for m, _ in rows], rotation=35, ha="right")
        ax.set(title=MEASURES[key], ylabel="macro mean over eval sets")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return bool(models)


def _num(s: dict | None, digits: int = 3, signed: bool = False) -> str:
    """"mean [lo, hi]" of a `reference.summarise_values`-style summary."""
    if not s or math.isnan(s["mean"]):
        return "n/a"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(s['mean'])} [{f.format(s['ci_low'])}, {f.format(s['ci_high'])}]"


def model_table(found: dict, key: str) -> str:
    """One row per model: the measure on each eval set (n items beside the set's name) and the macro mean."""
    rows = [(m, d[key]) for m, d in found["models"].items() if key in d]
    if not rows:
        return "_Not computed._"
    sets = ordered({e for _, s in rows for e in s["by_eval_set"]})
    n = {e: max(s["by_eval_set"][e]["n"] for _, s in rows if e in s["by_eval_set"]) for e in sets}
    return _table(["Model"] + [f"{SET_NAMES.get(e, e)} (n={n[e]})" for e in sets] + ["Average"],
                  [[model_name(m)] + [_num(s["by_eval_set"].get(e)) for e in sets] + [_num(s)] for m, s in rows])


def diff_table(found: dict, key: str) -> str:
    """One row per comparison: the paired per-item difference A - B on each eval set and macro; * = CI excludes 0."""
    rows = [(c, p[f"{key}_diff"]) for c, p in found["pairs"].items() if f"{key}_diff" in p]
    if not rows:
        return "_Not computed._"
    sets = ordered({e for _, s in rows for e in s["by_eval_set"]})

    def cell(s):
        if not s:
            return "n/a"
        star = "*" if not math.isnan(s["ci_low"] + s["ci_high"]) and (s["ci_low"] > 0 or s["ci_high"] < 0) else ""
        return _num(s, signed=True) + star

    return _table(["A - B"] + [SET_NAMES.get(e, e) for e in sets] + ["Average"],
                  [[comparison_label(c)] + [cell(s["by_eval_set"].get(e)) for e in sets] + [cell(s)]
                   for c, s in rows])


def reference_judge_table(found: dict, measure: str) -> str:
    """The reference judge in the LLM judge's layout: A's win rate per eval set and macro, then tie and loss."""
    rows = [(c, p["reference_judge"][measure]) for c, p in found["pairs"].items()
            if measure in p.get("reference_judge", {})]
    if not rows:
        return "_Not computed._"
    sets = ordered({e for _, s in rows for e in s["by_eval_set"]})
    return _table(["Comparison"] + [SET_NAMES.get(e, e) for e in sets] + ["Average win", "tie", "loss", "n"],
                  [[comparison_label(c)] + [_cell(s["by_eval_set"].get(e)) for e in sets]
                   + [_cell(s), _pct(s["tie_rate"]), _pct(s["loss_rate"]), s["n_instructions"]] for c, s in rows])


def audit_table(found: dict) -> str:
    """Per LLM-judged comparison: agreement with the reference judge, position bias, and the calibrated judge."""
    rows = []
    for c, p in found["pairs"].items():
        a = p.get("llm_judge_audit")
        if not a:
            continue
        agree = a["reference_agreement"].get("rouge_l", {})
        cal = a["calibrated"] or {}
        cal_agree = cal.get("reference_agreement", {}).get("rouge_l", {})
        pull = cal.get("position_pull", {})
        rows.append([comparison_label(c), _pct(a["judge"]["position_bias_rate"]), _pct(agree.get("agreement_rate")),
                     _pct(a["judge"]["win_rate"]), _pct(a["judge"]["tie_rate"]),
                     ", ".join(f"{v:+.3f}" for v in pull.values()) or "n/a",
                     _pct(cal.get("position_bias_rate")), _pct(cal.get("win_rate")), _pct(cal.get("tie_rate")),
                     _pct(cal_agree.get("agreement_rate")), agree.get("n", 0)])
    if not rows:
        return "_No LLM-judged comparison has reference-judge records._"
    return _table(["Comparison", "position bias", "agrees w/ ROUGE-L judge", "win", "tie",
                   "pull to 1st (per criterion)", "calibrated: position bias", "win", "tie", "agrees", "n"], rows)


def findings_section(found: dict, cfg: ReportConfig, plots: dict[str, str]) -> list[str]:
    """The report's lead: what separates models (reference measures), per model, then pairwise."""
    seps = found["separated"]
    compared = sorted({c for c in found["pairs"]})
    separated_cmps = {s["comparison"] for s in seps}
    ci = f"{100 * cfg.ci:.0f}%"
    out = ["## What separates the models", "",
           f"Reference-grounded measures against each eval item's reference answer, with {ci} bootstrap intervals "
           "over items (paired per item for differences). Intervals that exclude zero:", ""]
    out += [f"- {s['text']}" for s in seps if s["scope"] == "all"] or ["- none averaged over eval sets."]
    per_set = [s for s in seps if s["scope"] != "all"]
    if per_set:
        out += ["", "On single eval sets:", ""] + [f"- {s['text']}" for s in per_set]
    quiet = [comparison_label(c) for c in compared if c not in separated_cmps]
    if quiet:
        out += ["", f"No interval excludes zero for: {', '.join(quiet)}."]
    checked = found.get("intervals_checked", 0)
    if checked:
        out += ["", f"{checked} intervals were checked (comparisons x measures x eval sets and averages); at "
                f"{ci} about {checked * (1 - cfg.ci):.0f} would exclude zero by chance alone, so a single-set "
                "finding is a lead to re-test, while one that holds on the average and on most sets is not chance."]
    out += ["", "## Per model", "", "ROUGE-L F (stemmed, `rouge-score`, as Tuna scores Super-NaturalInstructions) of "
            "each model's answer to the reference:", "", model_table(found, "rouge_l"), "",
            "Mean token log-likelihood of the reference answer under each model (teacher-forced, the training "
            "prompt format, response tokens only; higher = the reference is more likely). It covers every item of "
            "every set (n above) and needs no generation and no judge:", "", model_table(found, "ref_loglik"), ""]
    if "reference" in plots:
        out += [f"![Reference measures per model]({plots['reference']})", ""]
    out += ["## Pairwise, by reference", "", "Paired differences A - B (* = interval excludes zero). ROUGE-L:", "",
            diff_table(found, "rouge_l"), "", "Reference log-likelihood:", "", diff_table(found, "ref_loglik"), "",
            "Reference judge: for each item the answer closer to the reference wins (ROUGE-L; a difference within "
            "the margin is a tie). Position-free by construction: it never sees an order.", "",
            reference_judge_table(found, "rouge_l"), "", "The same with the packaged sentence encoder's cosine "
            "similarity to the reference:", "", reference_judge_table(found, "cosine"), ""]
    return out
