"""RAFT (Dong et al. 2023): reward-ranked fine-tuning -- keep the best samples by reward, then plain SFT on them.

Unit: {"prompt", "response"} (the kept samples); the loss is `sft.make_loss`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import ConfigError, one_of
from . import sft
from ..student.logprobs import ROW_TOKENS
from .common import LossFn, is_empty, ranked_ok, rewards_from


@dataclass
class Config:
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


def select(records: list[dict], scores: list[float], mode: str = "local", alpha: float = 0.2,
           key: str = "id") -> list[int]:
    """Indices (ascending) of the samples RAFT keeps for its SFT step; `records[i]` has reward `scores[i]`.

    global: the top ceil(alpha * n) samples by reward over the whole batch (LMFlow's "top" mode);
    local: per prompt (grouped by `record[key]`), the top max(1, round(alpha * K)) of its K samples, which with
    alpha <= 1.5/K is LMFlow's best-of-K. Samples whose reward is None or NaN are never kept. Ties go to the
    earlier sample, so the selection is deterministic.
    """
    if mode not in ("global", "local"):
        raise ValueError(f"raft mode must be 'global' or 'local', got {mode!r}")
    if not 0 < alpha <= 1:
        raise ValueError(f"raft alpha must be in (0, 1], got {alpha}")
    if len(records) != len(scores):
        raise ValueError(f"{len(records)} records but {len(scores)} scores")
    usable = [i for i, s in enumerate(scores) if s is not None and not math.isnan(s)]
    by_score = lambda i: (-scores[i], i)  # noqa: E731 -- best first, earlier first on ties
    if mode == "global":
        n_keep = math.ceil(alpha * len(usable)) if usable else 0
        return sorted(sorted(usable, key=by_score)[:n_keep])
    groups: dict[str, list[int]] = {}
    for i in usable:
        groups.setdefault(records[i][key], []).append(i)
    kept: list[int] = []
    for members in groups.values():
        k = max(1, round(alpha * len(members)))
        kept += sorted(members, key=by_score)[:k]
    return sorted(kept)


def build_units(items: list[dict], cfg: Config, train_records: list[dict] = ()) -> tuple[list[dict], dict]:
    """{prompt, response}: the samples `select` keeps out of every (item, non-empty candidate).

    Empty candidates never enter the pool (counted). Global selection compares rewards across prompts, so it
    needs teacher scores; per-prompt ranks are only comparable within a prompt.
    """
    cfg.validate("raft")
    ok, failed = ranked_ok(items)
    samples, scores, empty = [], [], 0
    for it in ok:
        for idx, r in enumerate(rewards_from(it, cfg.reward)):
            if is_empty(it["candidates"][idx]):
                empty += 1
                continue
            samples.append({"id": it["id"], "prompt": it["prompt"], "response": it["candidates"][idx]})
            scores.append(math.nan if r is None else r)
    kept = select(samples, scores, mode=cfg.mode, alpha=cfg.alpha)
    units = [{"prompt": samples[i]["prompt"], "response": samples[i]["response"]} for i in kept]
    known = [s for s in scores if not math.isnan(s)]
    return units, {"units": len(units), "samples": len(samples), "failed_rankings": failed,
                   "empty_candidates_dropped": empty,
                   "mean_reward_kept": sum(scores[i] for i in kept) / max(1, len(kept)),
                   "mean_reward_all": sum(known) / max(1, len(known))}


def make_loss(tokenizer, cfg: Config, max_len: int, row_tokens: int = ROW_TOKENS) -> LossFn:
    """RAFT's update is plain SFT on the kept samples."""
    return sft.make_loss(tokenizer, None, max_len, row_tokens)
