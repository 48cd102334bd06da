"""Win/tie/loss rates, bootstrap confidence intervals and position bias from judge verdict records.

Pure functions over the records `teachloop.judge` writes (one per instruction and criterion, with `eval_set`,
`id`, `criterion`, `verdict` in win/tie/loss or None when the judgement failed, and both `orders`).
Averages are macro: a rate per (eval set, criterion) cell first, then the mean over cells, so a large eval set
does not outweigh a small one; this is the CITING paper's "average win rate" over criteria and datasets.
"""
from __future__ import annotations

import warnings

import numpy as np

EVAL_SET_ORDER = ("test", "reading", "factual", "commonsense")
CRITERIA_ORDER = ("articulate", "in_depth", "comprehensive")
CODES = {"win": 1.0, "tie": 0.0, "loss": -1.0}  # NaN marks a failed (or absent) judgement


def ordered(names, order=EVAL_SET_ORDER) -> list[str]:
    """`names` in the canonical order first, the rest alphabetically."""
    names = set(names)
    return [n for n in order if n in names] + sorted(names - set(order))


def counts(verdicts: list[str | None]) -> dict:
    """Plain rates over the verdicts that exist; failures are counted apart.

    >>> counts(["win", "win", "tie", "loss", None])
    {'n': 4, 'n_failed': 1, 'win_rate': 0.5, 'tie_rate': 0.25, 'loss_rate': 0.25, 'score': 0.625}
    """
    ok = [v for v in verdicts if v is not None]
    n = len(ok)
    rate = {k: (sum(v == k for v in ok) / n if n else float("nan")) for k in CODES}
    return {"n": n, "n_failed": len(verdicts) - n, "win_rate": rate["win"], "tie_rate": rate["tie"],
            "loss_rate": rate["loss"], "score": rate["win"] + rate["tie"] / 2}


def tables(records: list[dict]) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """(eval sets, criteria, {eval set: codes of shape (instructions, criteria)}): the unit of resampling is a row."""
    sets = ordered({r["eval_set"] for r in records})
    crits = ordered({r["criterion"] for r in records}, CRITERIA_ORDER)
    cols = {c: j for j, c in enumerate(crits)}
    out = {}
    for s in sets:
        rows = [r for r in records if r["eval_set"] == s]
        ids = {i: k for k, i in enumerate(dict.fromkeys(r["id"] for r in rows))}
        arr = np.full((len(ids), len(crits)), np.nan)
        for r in rows:
            if r.get("verdict") is not None:
                arr[ids[r["id"]], cols[r["criterion"]]] = CODES[r["verdict"]]
        out[s] = arr
    return sets, crits, out


def _cell_rates(arr: np.ndarray) -> dict[str, np.ndarray]:
    """Win/tie/loss rate per criterion over the instruction axis (second-to-last); NaN where nothing was judged."""
    valid = ~np.isnan(arr)
    n = valid.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {k: np.where(n > 0, (arr == code).sum(axis=-2) / n, np.nan) for k, code in CODES.items()}


def _nanmean(x: np.ndarray, axis) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN slice is a legitimate "nothing judged"
        return np.nanmean(x, axis=axis)


def bootstrap_cells(arrays: dict[str, np.ndarray], n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Win/tie/loss rate per (resample, eval set, criterion), resampling instructions within each eval set.

    Resampling whole instructions keeps the three criteria of one answer pair together (they are correlated);
    resampling within each eval set keeps every set in every resample, so the macro average stays defined.
    """
    rng = np.random.default_rng(seed)
    per_set = []
    for arr in arrays.values():
        idx = rng.integers(0, len(arr), size=(n_boot, len(arr))) if len(arr) else np.zeros((n_boot, 0), int)
        per_set.append(_cell_rates(arr[idx]))  # arr[idx]: (n_boot, instructions, criteria)
    return {k: np.stack([p[k] for p in per_set], axis=1) for k in CODES}  # (n_boot, sets, criteria)


def _summary(point: dict[str, np.ndarray], boot: dict[str, np.ndarray], rows: slice, cols: slice,
             ci: float) -> dict:
    """Point rates and percentile CIs for the mean of the (sets, criteria) cells point[rows, cols]."""
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    out = {}
    for name, key in (("win_rate", "win"), ("tie_rate", "tie"), ("loss_rate", "loss")):
        out[name] = float(_nanmean(point[key][rows, cols], (0, 1)))
    out["score"] = out["win_rate"] + out["tie_rate"] / 2
    win = _nanmean(boot["win"][:, rows, cols], (1, 2))
    score = win + _nanmean(boot["tie"][:, rows, cols], (1, 2)) / 2
    for prefix, values in (("", win), ("score_", score)):
        values = values[~np.isnan(values)]
        lo, hi = (np.percentile(values, [lo_q, hi_q]) if len(values) else (np.nan, np.nan))
        out[f"{prefix}ci_low"], out[f"{prefix}ci_high"] = float(lo), float(hi)
    return out


def position_bias(records: list[dict]) -> dict:
    """How much the judge follows position rather than content.

    position_bias_rate: share of judgements (both orders parsed) whose two orders chose the same position, i.e.
    the verdict flipped with the order. first_position_rate: share of single-order verdicts choosing the first
    answer shown (0.5 of the non-ties would be unbiased). agreement_rate: both orders gave the same verdict.
    """
    both = [r for r in records if all(o.get("position_verdict") for o in r["orders"])]
    same_pos = sum(len({o["position_verdict"] for o in r["orders"]}) == 1 and r["orders"][0]["position_verdict"]
                   != "C" for r in both)
    agree = sum(len({o["verdict"] for o in r["orders"]}) == 1 for r in both)
    singles = [o for r in records for o in r["orders"] if o.get("position_verdict")]
    first = sum(o["position_verdict"] == "A" for o in singles)
    nan = float("nan")
    return {"position_bias_rate": same_pos / len(both) if both else nan,
            "agreement_rate": agree / len(both) if both else nan,
            "first_position_rate": first / len(singles) if singles else nan}


def summarise(records: list[dict], n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """Everything about one comparison: headline macro rates with CIs, per eval set, per criterion, per cell."""
    sets, crits, arrays = tables(records)
    point = {k: np.stack([_cell_rates(arrays[s])[k] for s in sets]) if sets else np.zeros((0, 0))
             for k in CODES}  # (sets, criteria)
    boot = bootstrap_cells(arrays, n_boot, seed) if sets else {k: np.zeros((n_boot, 0, 0)) for k in CODES}
    every = slice(None)
    out = _summary(point, boot, every, every, ci)
    prefs = [r["preference"] for r in records if r.get("preference") is not None]
    out.update(position_bias(records))
    out.update({
        "n_instructions": int(sum(len(a) for a in arrays.values())),
        "n_judgements": sum(r.get("verdict") is not None for r in records),
        "n_failed": sum(r.get("verdict") is None for r in records),
        "mean_preference": float(np.mean(prefs)) if prefs else None,
    })
    one = lambda i: slice(i, i + 1)  # noqa: E731  (a slice keeps the axis, so one code path serves all)
    out["by_eval_set"] = {s: {**_summary(point, boot, one(i), every, ci), "n_instructions": len(arrays[s])}
                          for i, s in enumerate(sets)}
    out["by_criterion"] = {c: _summary(point, boot, every, one(j), ci) for j, c in enumerate(crits)}
    out["by_cell"] = {s: {c: _summary(point, boot, one(i), one(j), ci) for j, c in enumerate(crits)}
                      for i, s in enumerate(sets)}
    return out


def summarise_all(by_comparison: dict[str, list[dict]], n_boot: int = 1000, seed: int = 0,
                  ci: float = 0.95) -> dict[str, dict]:
    """`summarise` for every comparison; the same seed for each keeps reruns identical."""
    return {name: summarise(recs, n_boot, seed, ci) for name, recs in by_comparison.items()}


def average_win_rate(summaries: dict[str, dict], comparisons: list[str] | None = None) -> dict:
    """The paper's headline: mean over comparisons of the macro win rate (and of win + tie/2)."""
    names = comparisons or list(summaries)
    wins = [summaries[n]["win_rate"] for n in names if n in summaries]
    scores = [summaries[n]["score"] for n in names if n in summaries]
    nan = float("nan")
    return {"win_rate": float(np.mean(wins)) if wins else nan, "score": float(np.mean(scores)) if scores else nan,
            "n_comparisons": len(wins)}
