"""Turn ranked candidate items into each method's training units (plain dicts, JSONL-ready).

Ranked items come from `ranking.rank_probabilistic` / `ranking.rank_contextual`: each has `prompt`, `candidates`,
`ranking` (candidate indices best..worst, None when the teacher's ranking failed) and, when probabilistic,
`scores`. Every builder returns (units, counts) and counts what it left out and why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import ConfigError, one_of
from ..student.prompting import record_prompt
from .losses import raft_select


@dataclass
class RaftConfig:
    mode: str = "local"  # local: best of each prompt's K samples | global: top alpha of all samples (LMFlow "top")
    alpha: float = 0.2  # fraction kept (local: max(1, round(alpha*K)) per prompt; with K=4 that is best-of-4)
    reward: str = "scores"  # scores (teacher's mean token log-prob) | rank (teacher's contextual rank; local only)

    def validate(self, where: str) -> None:
        one_of(self.mode, ("local", "global"), f"{where}.mode")
        one_of(self.reward, ("scores", "rank"), f"{where}.reward")
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"{where}.alpha must be in (0, 1], got {self.alpha}")
        if self.mode == "global" and self.reward != "scores":
            raise ConfigError(f"{where}: global selection compares rewards across prompts; use reward: scores")


def _usable(items: list[dict]) -> tuple[list[dict], int]:
    ok = [it for it in items if it.get("ranking") is not None]
    return ok, len(items) - len(ok)


def sft_units(records: list[dict]) -> list[dict]:
    """{prompt, response} from dataset records (their reference `output`)."""
    return [{"prompt": record_prompt(r), "response": r["output"]} for r in records]


def tuna_units(items: list[dict], extra_records: list[dict] = ()) -> tuple[list[dict], dict]:
    """{prompt, candidates best..worst}; `extra_records` (dataset rows) join as one-candidate units.

    Tuna mixes original instruction data into its ranking data as a regulariser; a one-candidate unit has no
    pair, so it adds MLE only.
    """
    ok, failed = _usable(items)
    units = [{"prompt": it["prompt"], "candidates": [it["candidates"][i] for i in it["ranking"]]} for it in ok]
    units += [{"prompt": u["prompt"], "candidates": [u["response"]]} for u in sft_units(list(extra_records))]
    return units, {"units": len(units), "ranked": len(ok), "failed_rankings": failed,
                   "extra_records": len(extra_records)}


def rewards_from(item: dict, reward: str) -> list[float | None]:
    """Per-candidate reward: the teacher's `scores`, or from the ranking (best of N gets N-1, worst gets 0).

    >>> rewards_from({"ranking": [2, 0, 1]}, "rank")
    [1.0, 0.0, 2.0]
    """
    if reward == "scores":
        return list(item["scores"])
    if reward == "rank":
        n = len(item["ranking"])
        out = [0.0] * n
        for pos, idx in enumerate(item["ranking"]):
            out[idx] = float(n - 1 - pos)
        return out
    raise ValueError(f"reward must be 'scores' or 'rank', got {reward!r}")


def rrhf_units(items: list[dict], reward: str = "rank") -> tuple[list[dict], dict]:
    """{prompt, candidates, rewards}; a candidate without a reward (empty text) gets the lowest one (-inf -> min-1)."""
    ok, failed = _usable(items)
    units = []
    for it in ok:
        r = rewards_from(it, reward)
        known = [x for x in r if x is not None]
        floor = min(known) - 1.0 if known else 0.0
        units.append({"prompt": it["prompt"], "candidates": list(it["candidates"]),
                      "rewards": [floor if x is None else x for x in r]})
    return units, {"units": len(units), "failed_rankings": failed}


def dpo_units(items: list[dict]) -> tuple[list[dict], dict]:
    """{prompt, chosen: best candidate, rejected: worst}; items whose best and worst texts are equal are skipped."""
    ok, failed = _usable(items)
    units, same = [], 0
    for it in ok:
        chosen, rejected = it["candidates"][it["ranking"][0]], it["candidates"][it["ranking"][-1]]
        if chosen.strip() == rejected.strip():
            same += 1
            continue
        units.append({"prompt": it["prompt"], "chosen": chosen, "rejected": rejected})
    return units, {"units": len(units), "failed_rankings": failed, "identical_pairs": same}


def raft_units(items: list[dict], cfg: RaftConfig) -> tuple[list[dict], dict]:
    """{prompt, response}: the samples RAFT keeps (see `losses.raft_select`) out of every (item, candidate).

    Empty candidates are never kept. Global selection compares rewards across prompts, so it needs teacher
    scores; per-prompt ranks are only comparable within a prompt.
    """
    cfg.validate("raft")
    ok, failed = _usable(items)
    samples, scores = [], []
    for it in ok:
        for idx, r in enumerate(rewards_from(it, cfg.reward)):
            if it["candidates"][idx].strip():
                samples.append({"id": it["id"], "prompt": it["prompt"], "response": it["candidates"][idx]})
                scores.append(math.nan if r is None else r)
    kept = raft_select(samples, scores, mode=cfg.mode, alpha=cfg.alpha)
    units = [{"prompt": samples[i]["prompt"], "response": samples[i]["response"]} for i in kept]
    known = [s for s in scores if not math.isnan(s)]
    return units, {"units": len(units), "samples": len(samples), "failed_rankings": failed,
                   "mean_reward_kept": sum(scores[i] for i in kept) / max(1, len(kept)),
                   "mean_reward_all": sum(known) / max(1, len(known))}


def dpo_units_from_revisions(rows: list[dict]) -> tuple[list[dict], dict]:
    """CITING's free preference pairs: {prompt, chosen: teacher revision, rejected: the student's own answer}."""
    units = [{"prompt": record_prompt(r), "chosen": r["revision"], "rejected": r["answer"]}
             for r in rows if r.get("ok") and r["revision"].strip() != r["answer"].strip()]
    return units, {"units": len(units), "skipped": len(rows) - len(units)}
