"""The report's figures, from the leaderboard rows and the training logs: PNG files through matplotlib's Agg backend.

- `forest`: paired differences from the baseline per model (sorted as the leaderboard) and measure, zero line;
- `rounds`: CITING's rounds on the primary measure (paired difference from the baseline), round 0 being the
  model round 1 continues (SFT);
- `losses`: training losses as small multiples, one panel per loss type (their scales are not comparable).
Each returns whether it drew something; a figure is always written, since dvc.yaml declares each as an output.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from .leaderboard import MEASURES, excludes_zero


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a CI machine or a server
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def forest(rows: list[dict], names, baseline: str, path: str | Path, ci: float) -> bool:
    """One panel per reference measure: each model's paired difference from `baseline` with its interval; a filled
    marker where the interval excludes zero. Rows top to bottom in leaderboard order."""
    shown = [r for r in rows if r["model"] != baseline]
    plt = _plt()
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES) + 1, 0.42 * len(shown) + 1.6),
                             sharey=True, squeeze=False)
    ys = list(range(len(shown)))[::-1]
    for ax, key in zip(axes[0], MEASURES):
        for y, r in zip(ys, shown):
            d = r.get(f"{key}_diff")
            if not d or math.isnan(d["mean"]):
                continue
            sure = excludes_zero(d)
            ax.errorbar([d["mean"]], [y], xerr=[[max(d["mean"] - d["lo"], 0)], [max(d["hi"] - d["mean"], 0)]],
                        fmt="o", color="C0" if sure else "grey", mfc="C0" if sure else "white", capsize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set(title=f"{MEASURES[key][0]}: model - {names(baseline)}", xlabel=f"paired difference ({100 * ci:.0f}% CI)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(ys, [names(r["model"]) for r in shown])
    _save(fig, path)
    return bool(shown)


def rounds(rows: list[dict], names, primary: str, round0: str, baseline: str, path: str | Path, ci: float) -> bool:
    """CITING's round k against k on the primary measure, as the paired difference from `baseline` (its interval
    over items, not two overlapping unpaired intervals); round 0 is `round0`, the model round 1 continues."""
    from .leaderboard import ROUND

    zero = {"mean": 0.0, "lo": 0.0, "hi": 0.0}
    by_model = {r["model"]: r for r in rows}
    points = sorted((int(m.group(1)), r) for r in rows if (m := ROUND.match(r["model"])))
    if round0 in by_model:
        points = [(0, by_model[round0])] + points
    ts = [(k, r[f"{primary}_diff"] or zero) for k, r in points]  # the baseline itself: no difference
    ts = [(k, t) for k, t in ts if not math.isnan(t["mean"])]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs = [k for k, _ in ts]
    ax.errorbar(xs, [t["mean"] for _, t in ts], yerr=[[max(t["mean"] - t["lo"], 0) for _, t in ts],
                                                      [max(t["hi"] - t["mean"], 0) for _, t in ts]],
                marker="o", capsize=4)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(xs, [f"0 ({names(round0)})" if k == 0 else f"r{k}" for k in xs])
    ax.set(xlabel="CITING round", ylabel=f"{MEASURES[primary][0]} - {names(baseline)} ({100 * ci:.0f}% CI)",
           title=f"CITING rounds: {MEASURES[primary][0]}, paired difference from {names(baseline)}")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    return len(ts) > 1


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


def losses(logs: dict[str, str], loss_of: dict[str, str], path: str | Path) -> list[str]:
    """Loss curves, one panel per loss type (`loss_of[log name]`, else the name itself); returns the names whose
    log was missing or empty."""
    curves, missing = {}, []
    for name, log in logs.items():
        steps, values = read_loss_log(log) if Path(log).exists() else ([], [])
        if steps:
            curves.setdefault(loss_of.get(name, name), []).append((name, steps, values))
        else:
            missing.append(name)
    plt = _plt()
    n = max(len(curves), 1)
    cols = min(n, 3)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3.6 * cols, 2.8 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax, (kind, lines) in zip(axes.flat, curves.items()):  # in the logs' order: SFT and CITING first
        for name, steps, values in lines:
            ax.plot(steps, values, label=name, linewidth=1.2, marker="o", markersize=3)  # one-step logs show
        ax.set(title=f"{kind} loss", xlabel="step")
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    if not curves:
        list(axes.flat)[0].text(0.5, 0.5, "no training log found", ha="center", va="center")
    _save(fig, path)
    return missing
