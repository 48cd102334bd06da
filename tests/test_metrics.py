"""Win-rate, bootstrap and position-bias arithmetic on hand-made verdict records."""
from __future__ import annotations

import math

import pytest

from teachloop import metrics

CRITERIA = ["articulate", "in_depth", "comprehensive"]


def rec(id_, verdict, eval_set="test", criterion="articulate", positions=("A", "B")) -> dict:
    outcome = {"ab": {"A": "win", "B": "loss", "C": "tie"}, "ba": {"A": "loss", "B": "win", "C": "tie"}}
    orders = [{"order": o, "position_verdict": p, "verdict": outcome[o][p] if p else None}
              for o, p in zip(("ab", "ba"), positions)]
    return {"id": id_, "eval_set": eval_set, "criterion": criterion, "verdict": verdict, "orders": orders,
            "preference": None}


def block(wins: int, ties: int, losses: int, eval_set="test", criteria=CRITERIA, start=0) -> list[dict]:
    """Instructions with the same verdict on every criterion: wins first, then ties, then losses."""
    verdicts = ["win"] * wins + ["tie"] * ties + ["loss"] * losses
    return [rec(f"{eval_set}-{start + i}", v, eval_set, c) for i, v in enumerate(verdicts) for c in criteria]


def test_rates_on_known_counts():
    s = metrics.summarise(block(6, 2, 2), n_boot=200, seed=1)
    assert s["win_rate"] == pytest.approx(0.6) and s["tie_rate"] == pytest.approx(0.2)
    assert s["loss_rate"] == pytest.approx(0.2) and s["score"] == pytest.approx(0.7)
    assert s["n_instructions"] == 10 and s["n_judgements"] == 30 and s["n_failed"] == 0
    assert s["by_criterion"]["in_depth"]["win_rate"] == pytest.approx(0.6)
    assert s["by_cell"]["test"]["comprehensive"]["tie_rate"] == pytest.approx(0.2)


def test_average_is_over_eval_sets_and_criteria_not_pooled():
    # A small set where A always wins, a large set where A always loses: macro average 0.5, pooled would be 0.1.
    recs = block(2, 0, 0, "reading") + block(0, 0, 18, "test")
    s = metrics.summarise(recs, n_boot=100)
    assert s["win_rate"] == pytest.approx(0.5)
    assert s["by_eval_set"]["reading"]["win_rate"] == 1.0 and s["by_eval_set"]["test"]["win_rate"] == 0.0
    assert list(s["by_eval_set"]) == ["test", "reading"]  # canonical order, not alphabetical
    # Per criterion: articulate wins everywhere, the others lose everywhere.
    recs = [rec(f"q{i}", "win" if c == "articulate" else "loss", criterion=c) for i in range(4) for c in CRITERIA]
    s = metrics.summarise(recs, n_boot=100)
    assert s["win_rate"] == pytest.approx(1 / 3) and s["by_criterion"]["articulate"]["win_rate"] == 1.0


def test_ci_contains_the_estimate_and_narrows_with_more_data():
    small = metrics.summarise(block(6, 2, 2), n_boot=2000, seed=3)
    large = metrics.summarise(block(60, 20, 20), n_boot=2000, seed=3)
    for s in (small, large):
        assert s["ci_low"] <= s["win_rate"] <= s["ci_high"]
        assert s["score_ci_low"] <= s["score"] <= s["score_ci_high"]
        for sub in list(s["by_eval_set"].values()) + list(s["by_criterion"].values()):
            assert sub["ci_low"] <= sub["win_rate"] <= sub["ci_high"]
    assert large["ci_high"] - large["ci_low"] < 0.6 * (small["ci_high"] - small["ci_low"])
    # Binomial sanity: 100 instructions at p = 0.6 give a 95% interval about +-0.096 wide.
    assert large["ci_high"] - large["ci_low"] == pytest.approx(2 * 1.96 * math.sqrt(0.24 / 100), rel=0.2)


def test_bootstrap_is_seeded_and_unanimous_data_has_a_zero_width_ci():
    recs = block(5, 3, 4)
    assert metrics.summarise(recs, 300, seed=7) == metrics.summarise(recs, 300, seed=7)
    s = metrics.summarise(block(10, 0, 0), n_boot=200)
    assert s["ci_low"] == s["ci_high"] == s["win_rate"] == 1.0


def test_failed_judgements_are_counted_apart_and_left_out_of_the_rates():
    recs = block(3, 0, 1, criteria=["articulate"]) + [rec("bad", None, positions=(None, "A"))]
    s = metrics.summarise(recs, n_boot=100)
    assert s["win_rate"] == pytest.approx(0.75) and s["n_failed"] == 1 and s["n_judgements"] == 4
    assert metrics.counts(["win", None, "loss"])["n_failed"] == 1


def test_position_bias():
    recs = [rec("a", "tie", positions=("A", "A")),  # both orders chose the first shown: position bias
            rec("b", "tie", positions=("B", "B")),  # both chose the second shown: position bias too
            rec("c", "win", positions=("A", "B")),  # consistent
            rec("d", "tie", positions=("C", "C"))]  # a tie twice is consistent, not bias
    pb = metrics.position_bias(recs)
    assert pb["position_bias_rate"] == pytest.approx(0.5)
    assert pb["agreement_rate"] == pytest.approx(0.5)
    assert pb["first_position_rate"] == pytest.approx(3 / 8)


def test_average_win_rate_over_comparisons_and_empty_input():
    sums = {"x_vs_sft": metrics.summarise(block(8, 0, 2), 100), "x_vs_rrhf": metrics.summarise(block(4, 2, 4), 100)}
    avg = metrics.average_win_rate(sums)
    assert avg["win_rate"] == pytest.approx(0.6) and avg["score"] == pytest.approx(0.65) and avg["n_comparisons"] == 2
    empty = metrics.summarise([], n_boot=50)
    assert math.isnan(empty["win_rate"]) and empty["n_instructions"] == 0 and empty["by_eval_set"] == {}
