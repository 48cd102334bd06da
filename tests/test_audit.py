"""Judge audit on hand-built records: agreement with the reference judge, and calibration of a position pull."""
from __future__ import annotations

import pytest

from teachloop import audit, judge

OUTCOME = {"ab": {"A": "win", "B": "loss", "C": "tie"}, "ba": {"A": "loss", "B": "win", "C": "tie"}}


def probs_record(id_: str, content: float, pull: float, criterion="articulate", margin=0.05,
                 p_tie=0.05) -> dict:
    """A probs-mode judge record as `judge.judge_answers` writes it.

    `content` > 0 means the judge truly prefers A's answer; every order adds `pull` to P(first) - P(second).
    """
    orders = []
    for order, sign in (("ab", 1), ("ba", -1)):
        gap = sign * content + pull  # P(first) - P(second)
        raw = {" A": (1 - p_tie + gap) / 2, " B": (1 - p_tie - gap) / 2, " C": p_tie}
        pos = judge.probs_verdict(raw, margin)
        orders.append({"order": order, "raw": raw, "position_verdict": pos, "verdict": OUTCOME[order][pos],
                       "first_chosen": pos == "A", "ok": True, "error": "",
                       "preference": (raw[" A"] - raw[" B"]) * sign})
    return {"comparison": "x_vs_y", "a_model": "x", "b_model": "y", "id": id_, "eval_set": "test",
            "criterion": criterion, "mode": "probs", "tie_margin": margin, "orders": orders, **judge.combine(orders)}


def ref_record(id_: str, verdict: str, criterion="rouge_l") -> dict:
    return {"a_model": "x", "b_model": "y", "id": id_, "eval_set": "test", "criterion": criterion,
            "verdict": verdict}


TRUTH = {"q0": 0.2, "q1": -0.2, "q2": 0.15, "q3": -0.25, "q4": 0.2, "q5": -0.15, "q6": 0.0, "q7": 0.0}
WANT = {i: "win" if c > 0 else "loss" if c < 0 else "tie" for i, c in TRUTH.items()}


def test_calibration_removes_a_constant_position_pull():
    recs = [probs_record(i, c, pull=0.3) for i, c in TRUTH.items()]
    # As judged: every order prefers whatever is shown first, so every verdict is a position-driven tie.
    assert {r["verdict"] for r in recs} == {"tie"}
    assert all(o["position_verdict"] == "A" for r in recs for o in r["orders"])
    # The pull is recovered exactly, because contents cancel across the two orders of each item.
    assert audit.position_pull(recs) == {"articulate": pytest.approx(0.3)}
    cal = audit.calibrate(recs)
    assert {r["id"]: r["verdict"] for r in cal} == WANT
    assert all(len({o["verdict"] for o in r["orders"]}) == 1 for r in cal)  # both orders now agree
    # Same layout as the judge's records: the LLM judge's summary code applies unchanged.
    assert cal[0]["orders"][0]["raw"] == recs[0]["orders"][0]["raw"] and cal[0]["position_pull"] == pytest.approx(0.3)


def test_zero_pull_reproduces_the_judge_own_verdicts():
    recs = [probs_record(i, c, pull=p) for i, c in TRUTH.items() for p in (0.0, 0.1, -0.12)]
    same = audit.calibrate(recs, pull={"articulate": 0.0})
    assert [r["verdict"] for r in same] == [r["verdict"] for r in recs]
    assert [r["preference"] for r in same] == pytest.approx([r["preference"] for r in recs])


def test_audit_reports_agreement_before_and_after_calibration():
    recs = [probs_record(i, c, pull=0.3) for i, c in TRUTH.items()]
    refs = [ref_record(i, v) for i, v in WANT.items()] + [ref_record(i, "tie", "cosine") for i in TRUTH]
    a = audit.audit(recs, refs)
    assert a["judge"]["tie_rate"] == 1.0 and a["judge"]["position_bias_rate"] == 1.0
    rouge = a["reference_agreement"]["rouge_l"]
    assert rouge["n"] == 6 and rouge["agreement_rate"] == 0.0 and rouge["judge_tie_rate"] == 1.0
    assert a["reference_agreement"]["cosine"]["n"] == 0  # the reference judge never decided by cosine
    cal = a["calibrated"]
    assert cal["position_pull"] == {"articulate": pytest.approx(0.3)} and cal["position_bias_rate"] == 0.0
    assert cal["win_rate"] == pytest.approx(3 / 8) and cal["tie_rate"] == pytest.approx(2 / 8)
    assert cal["reference_agreement"]["rouge_l"]["agreement_rate"] == 1.0


def test_agreement_counts_on_a_known_mix():
    recs = [probs_record("q0", 0.3, 0.0), probs_record("q1", -0.3, 0.0), probs_record("q2", 0.0, 0.0),
            probs_record("q3", 0.3, 0.0)]  # judge: win, loss, tie, win
    refs = [ref_record("q0", "win"), ref_record("q1", "win"), ref_record("q2", "loss"), ref_record("q3", "tie")]
    got = audit.reference_agreement(recs, refs)["rouge_l"]
    assert got["n"] == 3 and got["agreement_rate"] == pytest.approx(1 / 3)
    assert got["decisive_agreement_rate"] == pytest.approx(1 / 2) and got["judge_tie_rate"] == pytest.approx(1 / 3)


def test_generate_mode_has_no_calibration_and_mismatched_sides_are_an_error():
    recs = [probs_record("q0", 0.3, 0.0)]
    gen = [{**recs[0], "mode": "generate", "orders": [{**o, "raw": "[[A]]"} for o in recs[0]["orders"]]}]
    assert audit.audit(gen, [ref_record("q0", "win")])["calibrated"] is None
    swapped = [{**ref_record("q0", "loss"), "a_model": "y", "b_model": "x"}]
    with pytest.raises(ValueError, match="same \\(A, B\\) pair"):
        audit.audit(recs, swapped)
