"""Judge audit: how far the LLM judge's verdicts follow content, measured against the reference judge.

Per comparison, from `teachloop.judge` records and `teachloop.reference.reference_judge` records on the same items:
- agreement with the reference judge (items where the reference judge is decided, i.e. not a tie);
- position bias (`metrics.position_bias`);
- for probability judges, calibrated verdicts: the judge's mean pull toward the first position is estimated from
  both orders and subtracted before the tie margin is applied (`calibrate`), then re-audited the same way.
`audit(judge_records, reference_records)` returns all of it as one JSON-able dict.
"""
from __future__ import annotations

import numpy as np

from . import metrics
from .judge import OPTIONS, combine, probs_verdict

_OUTCOME = {"ab": {"A": "win", "B": "loss", "C": "tie"}, "ba": {"A": "loss", "B": "win", "C": "tie"}}


def _probs_orders(rec: dict) -> bool:
    """Both orders hold next-token probabilities (a probs-mode judgement that did not fail)."""
    return rec.get("mode") == "probs" and len(rec["orders"]) == 2 and all(
        isinstance(o.get("raw"), dict) for o in rec["orders"])


def _gap(raw: dict) -> float:
    """P(first) - P(second) as the judge saw one order."""
    return raw.get(OPTIONS["A"], 0.0) - raw.get(OPTIONS["B"], 0.0)


def position_pull(records: list[dict]) -> dict[str, float]:
    """{criterion: mean over items of (P(first) - P(second)) averaged over both orders}.

    In order ab the gap is content + pull, in order ba it is -content + pull: the average of the two orders
    cancels the content preference and leaves the pull toward whichever answer is shown first. Estimated per
    criterion because each criterion asks its own question, which can pull differently.
    """
    gaps: dict[str, list[float]] = {}
    for r in records:
        if _probs_orders(r):
            gaps.setdefault(r["criterion"], []).append(np.mean([_gap(o["raw"]) for o in r["orders"]]))
    return {c: float(np.mean(v)) for c, v in gaps.items()}


def calibrate(records: list[dict], tie_margin: float | None = None,
              pull: dict[str, float] | None = None) -> list[dict]:
    """Probs-mode records with the position pull taken out of each order before the verdict, in the same layout.

    Each order's P(first) is lowered and P(second) raised by pull/2, so P(first) - P(second) drops by the pull
    and P(tie) keeps its meaning; then `judge.probs_verdict` applies the tie margin (the record's own unless
    `tie_margin` is given) and `judge.combine` merges both orders exactly as the judge does. `pull` defaults to
    `position_pull(records)`. Records without probabilities in both orders (generate mode, failures) are dropped.
    """
    pull = position_pull(records) if pull is None else pull
    out = []
    for r in records:
        if not _probs_orders(r):
            continue
        shift = pull.get(r["criterion"], 0.0)
        margin = r["tie_margin"] if tie_margin is None else tie_margin
        orders = []
        for o in r["orders"]:
            raw = o["raw"]
            adjusted = {**raw, OPTIONS["A"]: raw.get(OPTIONS["A"], 0.0) - shift / 2,
                        OPTIONS["B"]: raw.get(OPTIONS["B"], 0.0) + shift / 2}
            pos = probs_verdict(adjusted, margin)
            gap = _gap(adjusted)
            orders.append({"order": o["order"], "raw": raw, "adjusted": adjusted, "position_verdict": pos,
                           "verdict": _OUTCOME[o["order"]][pos], "first_chosen": pos == "A", "ok": True,
                           "error": "", "preference": gap if o["order"] == "ab" else -gap})
        out.append({**r, "orders": orders, "tie_margin": margin, "position_pull": shift, "calibrated": True,
                    **combine(orders)})
    return out


def reference_agreement(judge_records: list[dict], reference_records: list[dict]) -> dict[str, dict]:
    """{measure: agreement of the judge's verdicts with the reference judge's}, over (item, criterion) judgements.

    Counted only where the reference judge is decided (win or loss) and the judge gave a verdict. A judge tie
    there counts as a disagreement (the reference says one answer is closer); `decisive_agreement_rate` leaves
    judge ties out, and `judge_tie_rate` says how many there were.
    """
    # Verdicts are from A's side: records of B vs A (or another pair) would silently invert every agreement.
    ref_sides = {(r.get("a_model"), r.get("b_model")) for r in reference_records}
    judge_sides = {(r.get("a_model"), r.get("b_model")) for r in judge_records}
    if ref_sides and judge_sides and ref_sides != judge_sides:
        raise ValueError(f"reference records compare {sorted(ref_sides)}, judge records {sorted(judge_sides)}: "
                         "audit each comparison against the reference records of the same (A, B) pair")
    ref = {(r["eval_set"], r["id"], r["criterion"]): r["verdict"] for r in reference_records}
    measures = metrics.ordered({m for _, _, m in ref}, ("rouge_l", "cosine"))
    out = {}
    nan = float("nan")
    for m in measures:
        pairs = [(j["verdict"], ref.get((j["eval_set"], j["id"], m))) for j in judge_records]
        pairs = [(v, rv) for v, rv in pairs if v is not None and rv in ("win", "loss")]
        decisive = [(v, rv) for v, rv in pairs if v != "tie"]
        out[m] = {"agreement_rate": sum(v == rv for v, rv in pairs) / len(pairs) if pairs else nan,
                  "decisive_agreement_rate": sum(v == rv for v, rv in decisive) / len(decisive) if decisive else nan,
                  "judge_tie_rate": (len(pairs) - len(decisive)) / len(pairs) if pairs else nan,
                  "n": len(pairs)}
    return out


def _verdicts(records: list[dict]) -> dict:
    return {**metrics.counts([r["verdict"] for r in records]), **metrics.position_bias(records)}


def audit(judge_records: list[dict], reference_records: list[dict], tie_margin: float | None = None) -> dict:
    """One comparison's audit: the judge as it ran, and (probs mode) calibrated; `calibrated` is None otherwise.

    Keys: `judge` (win/tie/loss counts and position bias), `reference_agreement` ({measure: ...}), and
    `calibrated` with `position_pull` ({criterion: pull}), the same counts and bias, and its own agreement.
    """
    out = {"judge": _verdicts(judge_records),
           "reference_agreement": reference_agreement(judge_records, reference_records), "calibrated": None}
    if any(_probs_orders(r) for r in judge_records):
        pull = position_pull(judge_records)
        cal = calibrate(judge_records, tie_margin, pull)
        out["calibrated"] = {"position_pull": pull, **_verdicts(cal),
                             "reference_agreement": reference_agreement(cal, reference_records)}
    return out
