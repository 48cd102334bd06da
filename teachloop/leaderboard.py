"""The leaderboard: one row per model, sorted by the primary measure, and a verdict computed from its numbers.

`rows(...)` reads every number from `findings.compute`'s dict and the LLM judge's summaries (`metrics.summarise`)
without recomputing any; `verdict(...)` turns the rows into at most five sentences; `headline(...)` keeps about
three numbers per model for `dvc metrics show`; `to_csv` / `to_markdown` write the same rows as data and as text.
Every interval here is over eval items of one training run (`INTERVAL`): a later run-level interval (several
training seeds) adds its own `interval` value, and every cell keeps saying which one it is.
"""
from __future__ import annotations

import csv
import io
import math
import re

INTERVAL = "items"  # what the bootstrap resamples; run-level intervals (training replicates) would say "runs"
# Reference measures: key in findings -> (label, higher is better, digits). The one table of them.
MEASURES = {"ref_loglik": ("ref. log-lik", True, 3), "rouge_l": ("ROUGE-L", True, 3)}
ROUND = re.compile(r"^citing_r(\d+)$")
NAN = float("nan")


def _nan(v) -> float:
    return NAN if v is None else float(v)


def triple(s: dict | None, key: str = "mean", lo: str = "ci_low", hi: str = "ci_high") -> dict:
    """{mean, lo, hi} of a summary entry; NaN where it is absent."""
    if not s:
        return {"mean": NAN, "lo": NAN, "hi": NAN}
    return {"mean": _nan(s[key]), "lo": _nan(s[lo]), "hi": _nan(s[hi])}


def excludes_zero(t: dict, centre: float = 0.0) -> bool:
    return not math.isnan(t["lo"] + t["hi"]) and (t["lo"] > centre or t["hi"] < centre)


def _flip_diff(t: dict) -> dict:
    return {"mean": -t["mean"], "lo": -t["hi"], "hi": -t["lo"]}


def _flip_rate(t: dict) -> dict:
    return {"mean": 1 - t["mean"], "lo": 1 - t["hi"], "hi": 1 - t["lo"]}


def pair_entry(pairs: dict, a: str, b: str) -> tuple[dict | None, bool]:
    """(the pair a vs b, False) or, where only b vs a was computed, (that pair, True: flip it to a's side)."""
    if f"{a}_vs_{b}" in pairs:
        return pairs[f"{a}_vs_{b}"], False
    if f"{b}_vs_{a}" in pairs:
        return pairs[f"{b}_vs_{a}"], True
    return None, False


def score_vs(summaries: dict, a: str, b: str) -> dict:
    """A's win rate with ties as half (win + tie/2) against b, from whichever order the comparison was run in."""
    s, flip = pair_entry(summaries, a, b)
    t = triple(s, "score", "score_ci_low", "score_ci_high")
    return _flip_rate(t) if flip else t


def rows(found: dict, llm_summaries: dict[str, dict], order: list[str], baseline: str, primary: str,
         no_signal: str = "") -> list[dict]:
    """One row per model of `order` (evaluate.models), sorted by the primary measure (best first).

    Per measure: the macro mean with its interval and the paired difference from `baseline`; the reference judge's
    (ROUGE-L) and the LLM judge's win rate against `baseline` (ties as half); the LLM judge's is None where the
    judge carries no signal (`no_signal`) and NaN where that pair was not LLM-judged; n per measure.
    """
    better = MEASURES[primary][1]
    out = []
    for m in order:
        d = found["models"].get(m, {})
        row: dict = {"model": m}
        for key in MEASURES:
            row[key] = triple(d.get(key))
            row[f"{key}_n"] = (d.get(key) or {}).get("n", 0)
            pair, flip = pair_entry(found["pairs"], m, baseline)
            diff = triple((pair or {}).get(f"{key}_diff"))
            row[f"{key}_diff"] = None if m == baseline else (_flip_diff(diff) if flip else diff)
        pair, flip = pair_entry(found["pairs"], m, baseline)
        ref = triple((pair or {}).get("reference_judge", {}).get("rouge_l"), "score", "score_ci_low", "score_ci_high")
        row["ref_judge"] = None if m == baseline else (_flip_rate(ref) if flip else ref)
        row["ref_judge_n"] = ((pair or {}).get("reference_judge", {}).get("rouge_l") or {}).get("n_instructions", 0)
        row["llm_judge"] = None if m == baseline or no_signal else score_vs(llm_summaries, m, baseline)
        out.append(row)
    key = lambda r: (math.isnan(r[primary]["mean"]), -r[primary]["mean"] if better else r[primary]["mean"])  # noqa: E731
    return sorted(out, key=key)


def best(rows_: list[dict], column: str) -> float:
    """The best mean in a column (NaN when none): the leaderboard prints it in bold."""
    measure = column.removesuffix("_diff")
    higher = MEASURES[measure][1] if measure in MEASURES else True  # a win rate: higher is better
    values = [r[column]["mean"] for r in rows_ if r.get(column) and not math.isnan(r[column]["mean"])]
    return (max(values) if higher else min(values)) if values else NAN


def fmt(t: dict | None, digits: int = 3, signed: bool = False, pct: bool = False) -> str:
    """"mean [lo, hi]"; rates as percentages."""
    if t is None or math.isnan(t["mean"]):
        return "n/a"
    scale, f = (100, "{:.0f}") if pct else (1, f"{{:{'+' if signed else ''}.{digits}f}}")
    tail = "%" if pct else ""
    if math.isnan(t["lo"] + t["hi"]):
        return f.format(scale * t["mean"]) + tail
    return f"{f.format(scale * t['mean'])}{tail} [{f.format(scale * t['lo'])}, {f.format(scale * t['hi'])}]"


def columns(baseline_name: str, primary: str) -> list[tuple[str, str]]:
    """(row key, header) in leaderboard order: the primary measure first, then the other measures, then judges."""
    keys = [primary] + [k for k in MEASURES if k != primary]
    out = []
    for k in keys:
        label, higher, _ = MEASURES[k]
        out += [(k, f"{label} {'↑' if higher else '↓'}"), (f"{k}_diff", f"Δ vs {baseline_name}")]
    return out + [("ref_judge", f"ref. judge vs {baseline_name} ↑"), ("llm_judge", f"LLM judge vs {baseline_name} ↑")]


def cell(row: dict, key: str, no_signal: str = "") -> str:
    """One markdown cell: value [interval]; a difference whose interval excludes zero (a win rate: 50%) gets `*`."""
    t = row.get(key)
    if key == "llm_judge" and no_signal and t is None and row.get("ref_judge") is not None:
        return "no signal"
    if t is None:
        return "—"
    if key.endswith("_diff"):
        return fmt(t, MEASURES[key.removesuffix("_diff")][2], signed=True) + ("*" if excludes_zero(t) else "")
    if key in ("ref_judge", "llm_judge"):
        return "not judged" if math.isnan(t["mean"]) else fmt(t, pct=True) + ("*" if excludes_zero(t, 0.5) else "")
    return fmt(t, MEASURES[key][2])


def to_markdown(rows_: list[dict], names, baseline: str, primary: str, no_signal: str = "") -> str:
    """The leaderboard as a markdown table: rank, model, the columns of `columns`, n; the best per column bold."""
    cols = columns(names(baseline), primary)
    bests = {k: best(rows_, k) for k, _ in cols}
    head = ["#", "Model"] + [h for _, h in cols] + ["n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:", "---"] + ["---"] * (len(cols) + 1)) + "|"]
    for i, r in enumerate(rows_, 1):
        cells = []
        for k, _ in cols:
            text = cell(r, k, no_signal)
            t = r.get(k)
            if t is not None and not math.isnan(t["mean"]) and t["mean"] == bests[k] and text not in ("—", "n/a"):
                text = f"**{text}**"
            cells.append(text)
        n = f"{r[primary + '_n']} / {r['rouge_l_n']}" if primary != "rouge_l" else f"{r['rouge_l_n']}"
        lines.append("| " + " | ".join([str(i), names(r["model"])] + cells + [n]) + " |")
    return "\n".join(lines)


def n_legend(primary: str) -> str:
    other = "" if primary == "rouge_l" else f"{MEASURES[primary][0]} items / "
    return f"n = {other}answered items"


def to_csv(rows_: list[dict], names) -> str:
    """The same rows as CSV: one column per number (mean, lo, hi), the interval's unit named in `interval`."""
    fields = ["rank", "model", "name"]
    for k in MEASURES:
        fields += [f"{k}{s}" for s in ("", "_lo", "_hi")] + [f"{k}_diff{s}" for s in ("", "_lo", "_hi")] + [f"{k}_n"]
    fields += [f"{j}{s}" for j in ("ref_judge", "llm_judge") for s in ("", "_lo", "_hi")] + ["llm_judge_signal",
                                                                                             "interval"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for i, r in enumerate(rows_, 1):
        out = {"rank": i, "model": r["model"], "name": names(r["model"]), "interval": INTERVAL,
               "llm_judge_signal": "no" if r["llm_judge"] is None and r["ref_judge"] is not None else ""}
        for k in list(MEASURES) + [f"{k}_diff" for k in MEASURES] + ["ref_judge", "llm_judge"]:
            t = r.get(k) or {}
            for s, part in (("", "mean"), ("_lo", "lo"), ("_hi", "hi")):
                v = t.get(part, NAN)
                out[f"{k}{s}"] = "" if math.isnan(v) else repr(round(v, 4))
        for k in MEASURES:
            out[f"{k}_n"] = r[f"{k}_n"]
        w.writerow(out)
    return buf.getvalue()


def headline(rows_: list[dict], primary: str, baseline: str) -> dict:
    """Per model at most three numbers for `dvc metrics show`: the primary measure, its paired difference from the
    baseline, and the reference judge's win rate against it (ties as half)."""
    out = {}
    for r in rows_:
        entry = {primary: r[primary]["mean"]}
        if r[f"{primary}_diff"] is not None:
            entry[f"{primary}_vs_{baseline}"] = r[f"{primary}_diff"]["mean"]
        if r["ref_judge"] is not None:
            entry[f"win_vs_{baseline}"] = r["ref_judge"]["mean"]
        out[r["model"]] = entry
    return out


def _rounds(rows_: list[dict]) -> list[tuple[int, dict]]:
    return sorted((int(m.group(1)), r) for r in rows_ if (m := ROUND.match(r["model"])))


def verdict(rows_: list[dict], names, baseline: str, primary: str, no_signal: str, ci: float) -> list[str]:
    """At most five sentences, every one computed from the rows: who leads, where the rest stand against the
    baseline, CITING's rounds, the LLM judge, and what the intervals cover."""
    label = MEASURES[primary][0]
    ranked = [r for r in rows_ if not math.isnan(r[primary]["mean"])]
    if not ranked:
        return [f"No model has a {label} value: nothing to rank."]
    lead = ranked[0]
    d = lead[f"{primary}_diff"]
    if d is None:  # the baseline itself leads: name the models whose paired interval still includes zero
        level = [names(r["model"]) for r in ranked[1:] if r[f"{primary}_diff"] is not None
                 and not math.isnan(r[f"{primary}_diff"]["mean"]) and not excludes_zero(r[f"{primary}_diff"])]
        tail = f"; {', '.join(level)} {'is' if len(level) == 1 else 'are'} level with it" if level else ""
        out = [f"{names(lead['model'])} leads on {label} ({fmt(lead[primary])}){tail}."]
    else:
        sure = "excludes" if excludes_zero(d) else "includes"
        out = [f"{names(lead['model'])} leads on {label} ({fmt(lead[primary])}), {fmt(d, signed=True)} over "
               f"{names(baseline)} (the paired interval {sure} zero)."]
    diffs = [r for r in ranked if r[f"{primary}_diff"] is not None]
    below = [r for r in diffs if excludes_zero(r[f"{primary}_diff"]) and r[f"{primary}_diff"]["mean"] < 0]
    above = [r for r in diffs if excludes_zero(r[f"{primary}_diff"]) and r[f"{primary}_diff"]["mean"] > 0]
    out.append(f"Against {names(baseline)}, {len(above)} of {len(diffs)} models are above and {len(below)} below "
               f"on {label} beyond item noise (paired {100 * ci:.0f}% intervals).")
    rounds = _rounds(ranked)
    if rounds:
        parts = ", ".join(f"r{k} {fmt(r[f'{primary}_diff'], signed=True)}" for k, r in rounds
                          if r[f"{primary}_diff"] is not None)
        means = [r[f"{primary}_diff"]["mean"] for _, r in rounds if r[f"{primary}_diff"] is not None]
        trend = ("each round below the one before" if len(means) > 1 and all(b < a for a, b in zip(means, means[1:]))
                 else "each round above the one before" if len(means) > 1 and all(b > a for a, b in
                                                                                   zip(means, means[1:]))
                 else "")
        out.append(f"CITING's rounds against {names(baseline)} on {label}: {parts}" + (f" ({trend})." if trend else "."))
    if no_signal:
        out.append(f"The LLM judge carries no signal ({no_signal.removesuffix(': no signal')}): read the reference "
                   "measures.")
    else:
        judged = [r for r in ranked if r["llm_judge"] is not None and not math.isnan(r["llm_judge"]["mean"])]
        sep = [names(r["model"]) for r in judged if excludes_zero(r["llm_judge"], 0.5)]
        out.append(f"The LLM judge separates {len(sep)} of {len(judged)} judged models from {names(baseline)}"
                   + (f" ({', '.join(sep)})." if sep else "."))
    out.append(f"Intervals are {100 * ci:.0f}% bootstrap intervals over eval items of one training run per model: "
               "they leave out run-to-run (training seed) variation.")
    return out[:5]
