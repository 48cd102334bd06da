"""Reference-grounded evaluation: every eval item has a reference answer, so measure answers against it.

Two kinds of measure, each with a bootstrap CI over items:
- per model: ROUGE-L F of its answers to the reference (`rouge_l`, as Tuna scores Super-NaturalInstructions) and
  the student's mean token log-likelihood of the reference (`reference_loglik`, teacher-forced, training prompt);
- per comparison: a reference judge (`reference_judge`) whose verdict is "the answer closer to the reference wins",
  by ROUGE-L and, separately, by embedding cosine; it writes records in `teachloop.judge`'s layout, so
  `summarise_reference` gives the same win/tie/loss tables as the LLM judge. Being a function of
  (score_a - score_b) only, it cannot prefer a position: swapping the answers flips the verdict exactly.
Pure library code; stages pass paths and models in.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from . import metrics
from .embeddings import embed
from .judge import pair_rows
from .student.logprobs import collate, encode, response_logprobs
from .student.prompting import record_prompt

MEASURES = ("rouge_l", "cosine")
# Un-swapping a positional verdict to A's point of view, as the LLM judge does (A = first shown, C = tie).
_OUTCOME = {"ab": {"A": "win", "B": "loss", "C": "tie"}, "ba": {"A": "loss", "B": "win", "C": "tie"}}

Key = tuple[str, str]  # (eval_set, id): one eval item


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure with Porter stemming (rouge-score's tokenizer: lower case, ASCII letters and digits).

    >>> rouge_l("The cats sat.", "the cat sat")
    1.0
    >>> rouge_l("", "anything")
    0.0
    """
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


@torch.no_grad()
def reference_loglik(model, tokenizer, records: list[dict], max_len: int, batch_size: int = 8) -> list[float]:
    """Mean token log-prob of each record's `output` (its tokens and the closing EOS) given `record_prompt(rec)`.

    Teacher-forced with the training encoding (`logprobs.encode`: BOS + prompt + response + EOS, the prompt cut
    from the left past `max_len`), so the number is comparable with the loss the student was trained on. A mean
    per token, not a sum, so long and short references weigh alike.
    """
    if max_len < 3:
        raise ValueError(f"max_len={max_len} leaves no room for a response token: use the training max_len")
    was_training = model.training
    model.eval()  # dropout off: the score is a property of the weights, not of a random mask
    out: list[float] = []
    try:
        for i in range(0, len(records), batch_size):
            chunk = records[i : i + batch_size]
            pairs = [encode(tokenizer, record_prompt(r), r["output"], max_len) for r in chunk]
            sums, counts = response_logprobs(model, collate(pairs, tokenizer.pad_token_id))
            out.extend((sums / counts).tolist())
    finally:
        model.train(was_training)
    return out


def _percentiles(values: np.ndarray, ci: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])
    return float(lo), float(hi)


def _boot_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `n_boot` resamples (with replacement) of `values`; NaN when there is nothing to resample."""
    if not len(values):
        return np.full(n_boot, np.nan)
    return values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)


def mean_ci(values, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """{mean, ci_low, ci_high, n}: the mean of `values` and its percentile bootstrap interval over items.

    >>> mean_ci([0.5, 0.5, 0.5], n_boot=50)
    {'mean': 0.5, 'ci_low': 0.5, 'ci_high': 0.5, 'n': 3}
    """
    v = np.asarray(values, dtype=float)
    lo, hi = _percentiles(_boot_means(v, n_boot, np.random.default_rng(seed)), ci)
    return {"mean": float(v.mean()) if len(v) else float("nan"), "ci_low": lo, "ci_high": hi, "n": len(v)}


def paired_diff_ci(a, b, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """{mean, ci_low, ci_high, n} of the per-item difference a - b (items aligned), resampling items.

    Pairing keeps each item's difficulty on both sides, so the interval is far narrower than comparing two
    independent CIs: an interval excluding 0 says A beats B on this measure beyond item sampling noise.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need one value per item on both sides, got {len(a)} and {len(b)}")
    return mean_ci(a - b, n_boot, seed, ci)


def summarise_values(by_set: dict[str, list[float]], n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """Macro mean over eval sets (as `metrics.summarise` averages) with a CI, plus `by_eval_set` entries.

    Items are resampled within each eval set, so every set is in every resample and the macro mean stays defined.
    For paired differences pass per-item differences (a - b) here.
    """
    rng = np.random.default_rng(seed)
    sets = metrics.ordered(by_set)
    arrays = {s: np.asarray(by_set[s], dtype=float) for s in sets}
    boots = {s: _boot_means(arrays[s], n_boot, rng) for s in sets}
    by_eval_set = {}
    for s in sets:
        lo, hi = _percentiles(boots[s], ci)
        v = arrays[s]
        by_eval_set[s] = {"mean": float(v.mean()) if len(v) else float("nan"), "ci_low": lo, "ci_high": hi,
                          "n": len(v)}
    means = [by_eval_set[s]["mean"] for s in sets if len(arrays[s])]
    macro = np.nanmean(np.stack([boots[s] for s in sets if len(arrays[s])]), axis=0) if means else np.array([])
    lo, hi = _percentiles(macro, ci)
    return {"mean": float(np.mean(means)) if means else float("nan"), "ci_low": lo, "ci_high": hi,
            "n": int(sum(len(v) for v in arrays.values())), "by_eval_set": by_eval_set}


def reference_index(sets: dict[str, list[dict]]) -> dict[Key, str]:
    """{(eval_set, id): reference answer} from eval records grouped by set (as `stages/answer.eval_sets` gives)."""
    return {(name, r["id"]): r["output"] for name, rows in sets.items() for r in rows}


def _lookup(references: dict[Key, str], row: dict) -> str:
    key = (row["eval_set"], row["id"])
    if key not in references:
        raise KeyError(f"no reference answer for eval item {key}: pass the eval sets the answers were made from")
    return references[key]


def item_rouge(rows: list[dict], references: dict[Key, str]) -> dict[Key, float]:
    """{(eval_set, id): ROUGE-L F of the row's `answer` to the reference} for answer rows (`stages/answer.py`)."""
    return {(r["eval_set"], r["id"]): rouge_l(r["answer"], _lookup(references, r)) for r in rows}


def by_set(items: dict[Key, float]) -> dict[str, list[float]]:
    """Per-item values grouped by eval set, in item order (for `summarise_values`)."""
    out: dict[str, list[float]] = {}
    for (s, _), v in items.items():
        out.setdefault(s, []).append(v)
    return out


def paired_by_set(a: dict[Key, float], b: dict[Key, float]) -> dict[str, list[float]]:
    """Per-item differences a - b on the items both have, grouped by eval set (for `summarise_values`)."""
    return by_set({k: a[k] - b[k] for k in a if k in b})


def verdict(score_a: float, score_b: float, margin: float) -> str:
    """A's verdict when the higher score wins and a difference within `margin` is a tie.

    Antisymmetric by construction (x - y == -(y - x) exactly in floating point), so swapping flips it exactly.

    >>> verdict(0.6, 0.3, 0.05), verdict(0.3, 0.6, 0.05), verdict(0.5, 0.52, 0.05)
    ('win', 'loss', 'tie')
    """
    d = score_a - score_b
    return "win" if d > margin else "loss" if -d > margin else "tie"


def _position(first: float, second: float, margin: float) -> str:
    return {"win": "A", "loss": "B", "tie": "C"}[verdict(first, second, margin)]


def _record(base: dict, measure: str, sa: float, sb: float, margin: float) -> dict:
    """One reference-judge record in the LLM judge's layout: both orders scored, un-swapped, then combined."""
    orders = []
    for order, (first, second) in (("ab", (sa, sb)), ("ba", (sb, sa))):
        pos = _position(first, second, margin)
        orders.append({"order": order, "raw": {"first": first, "second": second}, "position_verdict": pos,
                       "verdict": _OUTCOME[order][pos], "first_chosen": pos == "A", "ok": True, "error": ""})
    verdicts = {o["verdict"] for o in orders}
    return {**base, "criterion": measure, "mode": "reference", "tie_margin": margin, "score_a": sa, "score_b": sb,
            "orders": orders, "verdict": verdicts.pop() if len(verdicts) == 1 else "tie",
            "preference": sa - sb, "failed": False}


def reference_judge(a_rows: list[dict], b_rows: list[dict], references: dict[Key, str], a_name: str,
                    b_name: str, encoder=None, rouge_margin: float = 0.02, cosine_margin: float = 0.02,
                    max_per_set: int = 0) -> list[dict]:
    """Records for `{a_name}_vs_{b_name}`, one per (item, measure): `criterion` is "rouge_l" or "cosine".

    Cosine needs `encoder` (`embeddings.load_encoder()`); without it only ROUGE-L is judged. Items are paired as
    the LLM judge pairs them (`judge.pair_rows`), so both judges see the same items.
    """
    pairs = pair_rows(a_rows, b_rows, max_per_set)
    refs = [_lookup(references, a) for a, _ in pairs]
    cos = None
    if encoder is not None and pairs:
        n = len(pairs)
        vecs = embed(encoder, [a["answer"] for a, _ in pairs] + [b["answer"] for _, b in pairs] + refs)
        va, vb, vr = vecs[:n], vecs[n : 2 * n], vecs[2 * n :]
        cos = ((va * vr).sum(axis=1).astype(float), (vb * vr).sum(axis=1).astype(float))  # unit vectors
    records = []
    for i, ((a, b), ref) in enumerate(zip(pairs, refs)):
        base = {"comparison": f"{a_name}_vs_{b_name}", "a_model": a_name, "b_model": b_name, "id": a["id"],
                "eval_set": a["eval_set"], "instruction": a["instruction"], "input": a.get("input", ""),
                "answer_a": a["answer"], "answer_b": b["answer"], "reference": ref}
        records.append(_record(base, "rouge_l", rouge_l(a["answer"], ref), rouge_l(b["answer"], ref), rouge_margin))
        if cos is not None:
            records.append(_record(base, "cosine", float(cos[0][i]), float(cos[1][i]), cosine_margin))
    return records


def summarise_reference(records: list[dict], n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """{measure: `metrics.summarise` of that measure's records}: the LLM judge's table layout, one per measure.

    Measures are kept apart (not macro-averaged like criteria) because ROUGE-L and cosine are different rulers.
    """
    measures = metrics.ordered({r["criterion"] for r in records}, MEASURES)
    return {m: metrics.summarise([r for r in records if r["criterion"] == m], n_boot, seed, ci) for m in measures}
