"""What the run found, from answers, reference answers, reference log-likelihoods and LLM verdicts.

`compute(...)` returns one JSON-able dict that the report renders (`leaderboard.rows` reads its numbers):
- `models`: per model, ROUGE-L of its answers to the references and its reference log-likelihood, each a
  macro mean over eval sets with a bootstrap CI and per-set entries (`reference.summarise_values`);
- `pairs`: per comparison (the configured ones, plus every model against each of `versus`), the paired per-item
  differences of both measures, the reference judge's win/tie/loss table per measure, and, where the LLM judge
  ran on that pair, its audit against the reference judge (`audit.audit`);
- `separated`: one sentence per (comparison, measure, eval set or macro) whose interval excludes zero.
Pure functions: the report stage reads the files and passes them in.
"""
from __future__ import annotations

import math

import numpy as np

from . import audit, reference
from .reference import Key

MEASURES = {"rouge_l": "ROUGE-L", "ref_loglik": "reference log-likelihood"}


class _EmbeddingMemo:
    """The sentence encoder with each distinct text embedded once: the same answers and references meet the
    reference judge in many pairs (every model against each `versus` model and the configured comparisons)."""

    def __init__(self, encoder):
        self.encoder, self.vectors = encoder, {}

    def encode(self, texts: list[str], **kwargs):
        new = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if new:
            self.vectors.update(zip(new, self.encoder.encode(new, **kwargs)))
        return np.stack([self.vectors[t] for t in texts])


def _pair_names(models: list[str], comparisons: dict[str, dict], versus: list[str]) -> dict[str, tuple[str, str]]:
    """{name: (a, b)}: the configured comparisons first, then every model against each `versus` model."""
    pairs = {name: (c["a"], c["b"]) for name, c in comparisons.items()}
    for b in versus:
        if b not in models:
            continue
        for a in models:
            if a != b and (a, b) not in pairs.values() and (b, a) not in pairs.values():
                pairs[f"{a}_vs_{b}"] = (a, b)
    return pairs


def _interval(s: dict) -> tuple[float, float]:
    return s["ci_low"], s["ci_high"]


def _excludes_zero(s: dict) -> bool:
    lo, hi = _interval(s)
    return not math.isnan(lo + hi) and (lo > 0 or hi < 0)


def intervals_checked(pairs: dict[str, dict]) -> int:
    """How many paired-difference intervals `separation_sentences` looks at (for the multiple-testing caveat)."""
    return sum(1 + len(p[f"{k}_diff"]["by_eval_set"]) for p in pairs.values() for k in MEASURES if f"{k}_diff" in p)


def separation_sentences(pairs: dict[str, dict], names=str, set_names=str) -> list[dict]:
    """One entry per (comparison, measure, scope) whose paired-difference interval excludes zero.

    Scope is "all" (macro over eval sets) or one eval set. `names(model)` and `set_names(set)` give display names.
    """
    out = []
    for cmp, p in pairs.items():
        for key, label in MEASURES.items():
            summ = p.get(f"{key}_diff")
            if not summ:
                continue
            scopes = [("all", summ)] + list(summ["by_eval_set"].items())
            for scope, s in scopes:
                if not _excludes_zero(s):
                    continue
                better, worse = (p["a"], p["b"]) if s["mean"] > 0 else (p["b"], p["a"])
                where = "averaged over eval sets" if scope == "all" else f"on {set_names(scope)}"
                out.append({"comparison": cmp, "measure": key, "scope": scope, "mean": s["mean"],
                            "ci_low": s["ci_low"], "ci_high": s["ci_high"], "n": s["n"],
                            "text": f"{names(better)} beats {names(worse)} on {label} {where}: "
                                    f"{names(p['a'])} - {names(p['b'])} = {s['mean']:+.3f} "
                                    f"[{s['ci_low']:+.3f}, {s['ci_high']:+.3f}], n={s['n']}"})
    return out


def compute(answers: dict[str, list[dict]], references: dict[Key, str], loglik: dict[str, dict[Key, float]],
            judgements: dict[str, list[dict]], comparisons: dict[str, dict], versus: list[str], encoder=None,
            n_boot: int = 1000, seed: int = 0, ci: float = 0.95, rouge_margin: float = 0.02,
            cosine_margin: float = 0.02, max_per_set: int = 0, names=str, set_names=str) -> dict:
    """All reference-grounded findings; see the module docstring. `answers[model]` holds every eval set's rows."""
    models = list(dict.fromkeys(list(answers) + list(loglik)))
    rouge = {m: reference.item_rouge(rows, references) for m, rows in answers.items()}
    boot = dict(n_boot=n_boot, seed=seed, ci=ci)
    per_model = {}
    for m in models:
        per_model[m] = {}
        if m in rouge:
            per_model[m]["rouge_l"] = reference.summarise_values(reference.by_set(rouge[m]), **boot)
        if m in loglik:
            per_model[m]["ref_loglik"] = reference.summarise_values(reference.by_set(loglik[m]), **boot)
    encoder = _EmbeddingMemo(encoder) if encoder is not None else None
    pairs = {}
    for name, (a, b) in _pair_names(models, comparisons, versus).items():
        p: dict = {"a": a, "b": b}
        for key, items in (("rouge_l", rouge), ("ref_loglik", loglik)):
            if a in items and b in items:
                p[f"{key}_diff"] = reference.summarise_values(reference.paired_by_set(items[a], items[b]), **boot)
        if a in answers and b in answers:
            records = reference.reference_judge(answers[a], answers[b], references, a, b, encoder,
                                                rouge_margin, cosine_margin, max_per_set)
            p["reference_judge"] = _strip(reference.summarise_reference(records, **boot))
            if name in judgements:
                p["llm_judge_audit"] = audit.audit(judgements[name], records)
        pairs[name] = p
    return {"models": per_model, "pairs": pairs, "separated": separation_sentences(pairs, names, set_names),
            "intervals_checked": intervals_checked(pairs),
            "n_per_set": {m: {s: v["n"] for s, v in d["ref_loglik"]["by_eval_set"].items()}
                          for m, d in per_model.items() if "ref_loglik" in d}}


def _strip(tables: dict) -> dict:
    """Reference-judge tables without the per-cell detail (one criterion per measure: a cell is a set)."""
    return {m: {k: v for k, v in s.items() if k not in ("by_cell", "by_criterion")} for m, s in tables.items()}


def judge_signal(summaries: dict[str, dict]) -> str:
    """"" when the LLM judge's verdicts carry some signal, else a sentence saying why they carry none."""
    if not summaries:
        return "no LLM judge verdicts"
    bias = [s["position_bias_rate"] for s in summaries.values() if not math.isnan(s["position_bias_rate"])]
    wins = [s["win_rate"] + s["loss_rate"] for s in summaries.values() if not math.isnan(s["win_rate"])]
    if bias and min(bias) >= 0.95:
        span = f"{100 * min(bias):.0f}" + ("" if max(bias) - min(bias) < 0.005 else f"-{100 * max(bias):.0f}")
        return (f"the LLM judge chose by position in {span}% of judgements "
                "(both orders picked the same slot), so every verdict is a tie: no signal")
    if wins and max(wins) == 0:
        return "every LLM verdict is a tie: no signal"
    return ""

