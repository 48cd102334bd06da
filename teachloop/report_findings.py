"""The reference-grounded detail tables: per model and eval set, pairwise differences, the reference judge and the
LLM judge's audit, all from `findings.compute`'s dict. `report.render_details` puts them on the detail pages.
"""
from __future__ import annotations

import math

from .report import Names, _cell, _pct, _table


def _num(s: dict | None, digits: int = 3, signed: bool = False) -> str:
    """"mean [lo, hi]" of a `reference.summarise_values`-style summary."""
    if not s or math.isnan(s["mean"]):
        return "n/a"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(s['mean'])} [{f.format(s['ci_low'])}, {f.format(s['ci_high'])}]"


def model_table(found: dict, key: str, names: Names) -> str:
    """One row per model: the measure on each eval set (n items beside the set's name) and the macro mean."""
    rows = [(m, d[key]) for m, d in found["models"].items() if key in d]
    if not rows:
        return "_Not computed._"
    sets = names.sets({e for _, s in rows for e in s["by_eval_set"]})
    n = {e: max(s["by_eval_set"][e]["n"] for _, s in rows if e in s["by_eval_set"]) for e in sets}
    return _table(["Model"] + [f"{names.eval_set(e)} (n={n[e]})" for e in sets] + ["Average"],
                  [[names(m)] + [_num(s["by_eval_set"].get(e)) for e in sets] + [_num(s)] for m, s in rows])


def diff_table(found: dict, key: str, names: Names) -> str:
    """One row per comparison: the paired per-item difference A - B on each eval set and macro; * = CI excludes 0."""
    rows = [(c, p[f"{key}_diff"]) for c, p in found["pairs"].items() if f"{key}_diff" in p]
    if not rows:
        return "_Not computed._"
    sets = names.sets({e for _, s in rows for e in s["by_eval_set"]})

    def cell(s):
        if not s:
            return "n/a"
        star = "*" if not math.isnan(s["ci_low"] + s["ci_high"]) and (s["ci_low"] > 0 or s["ci_high"] < 0) else ""
        return _num(s, signed=True) + star

    return _table(["A - B"] + [names.eval_set(e) for e in sets] + ["Average"],
                  [[names.pair(c)] + [cell(s["by_eval_set"].get(e)) for e in sets] + [cell(s)] for c, s in rows])


def reference_judge_table(found: dict, measure: str, names: Names) -> str:
    """The reference judge in the LLM judge's layout: A's win rate per eval set and macro, then tie and loss."""
    rows = [(c, p["reference_judge"][measure]) for c, p in found["pairs"].items()
            if measure in p.get("reference_judge", {})]
    if not rows:
        return "_Not computed._"
    sets = names.sets({e for _, s in rows for e in s["by_eval_set"]})
    return _table(["Comparison"] + [names.eval_set(e) for e in sets] + ["Average win", "tie", "loss", "n"],
                  [[names.pair(c)] + [_cell(s["by_eval_set"].get(e)) for e in sets]
                   + [_cell(s), _pct(s["tie_rate"]), _pct(s["loss_rate"]), s["n_instructions"]] for c, s in rows])


def audit_table(found: dict, names: Names) -> str:
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
        rows.append([names.pair(c), _pct(a["judge"]["position_bias_rate"]), _pct(agree.get("agreement_rate")),
                     _pct(a["judge"]["win_rate"]), _pct(a["judge"]["tie_rate"]),
                     ", ".join(f"{v:+.3f}" for v in pull.values()) or "n/a",
                     _pct(cal.get("position_bias_rate")), _pct(cal.get("win_rate")), _pct(cal.get("tie_rate")),
                     _pct(cal_agree.get("agreement_rate")), agree.get("n", 0)])
    if not rows:
        return "_No LLM-judged comparison has reference-judge records._"
    return _table(["Comparison", "position bias", "agrees w/ ROUGE-L judge", "win", "tie",
                   "pull to 1st (per criterion)", "calibrated: position bias", "win", "tie", "agrees", "n"], rows)
