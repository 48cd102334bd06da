"""Leaderboards across runs: the workspace, the commit it started from, and every `dvc exp` experiment.

`runs(doc)` turns `dvc exp show --json` into {run: (params, {model: headline numbers})};
`text(runs)` prints one leaderboard per run, sorted by that run's primary measure, then the params that differ
between the runs. `teachloop compare` (and `make compare`) print it. The numbers are the headline metrics (the
report stage's DVC metric), so nothing is recomputed here.
"""
from __future__ import annotations

import math

from .config import flatten

NAN = float("nan")


def _run(entry: dict) -> tuple[dict, dict]:
    """(flat params, {model: {metric: value}}) of one `dvc exp show --json` revision."""
    data = entry.get("data") or {}
    params = {k: v for f in (data.get("params") or {}).values() for k, v in flatten(f.get("data") or {}).items()}
    board: dict[str, dict] = {}
    for f in (data.get("metrics") or {}).values():
        for model, values in (f.get("data") or {}).items():
            if isinstance(values, dict):
                board.setdefault(model, {}).update(values)
    order = list(dict.fromkeys(k.split(".")[2] for k in params if k.startswith("evaluate.models.")))
    return params, {m: board[m] for m in order + sorted(set(board) - set(order)) if m in board}


def runs(doc: list[dict]) -> dict[str, tuple[dict, dict]]:
    """{run label: (flat params, {model: headline numbers})} from `dvc exp show --json`: the workspace, each
    baseline commit, and each experiment under it."""
    out = {}
    for entry in doc:
        label = "workspace" if entry.get("rev") == "workspace" else f"{entry.get('name') or entry['rev'][:7]}"
        out[label] = _run(entry)
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                out[f"{rev.get('name') or exp.get('name')} ({rev['rev'][:7]})"] = _run(rev)
    return out


def _num(v) -> float:
    try:
        return NAN if v is None else float(v)
    except (TypeError, ValueError):
        return NAN


def board_lines(params: dict, board: dict[str, dict]) -> list[str]:
    """One run's leaderboard: rank, model, primary measure, its difference from the baseline, the win rate."""
    primary = params.get("report.primary", "ref_loglik")
    base = params.get("report.headline_opponent", "sft")
    cols = [primary, f"{primary}_vs_{base}", f"win_vs_{base}"]
    rows = sorted(board.items(), key=lambda kv: (math.isnan(_num(kv[1].get(primary))), -_num(kv[1].get(primary))))
    width = max([len(m) for m in board] + [5])
    lines = [f"  {'#':>2}  {'model':<{width}}" + "".join(f"  {c:>{max(len(c), 8)}}" for c in cols)]
    for i, (m, vals) in enumerate(rows, 1):
        cells = "".join(f"  {_fmt(vals.get(c)):>{max(len(c), 8)}}" for c in cols)
        lines.append(f"  {i:>2}  {m:<{width}}{cells}")
    return lines


def _fmt(v) -> str:
    x = _num(v)
    return "-" if math.isnan(x) else f"{x:.4f}"


def differing(all_runs: dict[str, tuple[dict, dict]]) -> list[tuple[str, list]]:
    """(param, its value per run) for every param whose value is not the same in every run."""
    keys = list(dict.fromkeys(k for params, _ in all_runs.values() for k in params))
    out = []
    for k in keys:
        values = [params.get(k) for params, _ in all_runs.values()]
        if any(v != values[0] for v in values[1:]):
            out.append((k, values))
    return out


def text(all_runs: dict[str, tuple[dict, dict]]) -> str:
    if not all_runs:
        return "no runs found: run `dvc repro` (or `dvc exp run`) first\n"
    out = []
    for label, (params, board) in all_runs.items():
        out += [f"{label}:"] + (board_lines(params, board) if board else ["  (no headline metrics yet)"]) + [""]
    diff = differing(all_runs)
    if diff:
        labels = list(all_runs)
        width = max(len(k) for k, _ in diff)
        out += ["params that differ:", f"  {'':<{width}}" + "".join(f"  {lab}" for lab in labels)]
        out += [f"  {k:<{width}}" + "".join(f"  {str(v):<{len(lab)}}" for v, lab in zip(values, labels))
                for k, values in diff]
    else:
        out.append("no params differ between these runs")
    return "\n".join(out) + "\n"
