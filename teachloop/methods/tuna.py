"""Tuna (Li et al. 2023): MLE on teacher-ranked candidates plus a margin ranking loss over every rank gap.

Unit: {"prompt", "candidates": [best, ..., worst]} (1..N candidates; one candidate = MLE only, which is how the
original instruction data Tuna mixes in as a regulariser enters). Scores s = sum log-prob / |y| ** length_penalty.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import ConfigError, one_of
from .common import (LossFn, length_normalised, num, ranked_ok, ranked_texts, score_candidates, token_nll,
                     valid_mask)
from ..student.logprobs import ROW_TOKENS
from .sft import record_units


@dataclass
class LossConfig:
    margin: float = 0.1  # ranking margin per rank gap, in mean-token-log-prob units (Tuna: 0.1)
    mle_weight: float = 1.0  # weight of the MLE term against the ranking term (Tuna: 1)
    mle_on: str = "all"  # all: NLL on every candidate (Tuna's code) | best: NLL on the top-ranked one only
    length_penalty: float = 1.0  # score = sum log-prob / n_tokens ** length_penalty (1 = mean, as Tuna)

    def validate(self, where: str) -> None:
        one_of(self.mle_on, ("all", "best"), f"{where}.mle_on")
        if self.margin < 0 or self.mle_weight < 0:
            raise ConfigError(f"{where}: margin and mle_weight must be >= 0")


@dataclass
class Config:
    mix_reference: int = 8  # training records added as MLE-only units (Tuna mixes in original data to regularise)
    seed: int = 9  # which training records are mixed in
    loss: LossConfig = field(default_factory=LossConfig)


def ranking_loss(scores: torch.Tensor, margin: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """L_rank = sum_{i=1}^{N-1} mean_{j, both valid} max(0, margin*i - (s_j - s_{j+i}))

    `scores` [B, N] are ordered best..worst. Gap i compares each candidate with the one i places below it and asks
    for a margin that grows with the gap (Tuna's MarginRankingLoss(margin*i) with target +1); the mean for a gap
    runs over the pairs that exist, and a gap with no pair adds 0.
    """
    valid = valid_mask(scores, valid)
    loss = scores.new_zeros(())
    for gap in range(1, scores.shape[1]):
        better, worse = scores[:, :-gap], scores[:, gap:]
        pair = valid[:, :-gap] & valid[:, gap:]
        if pair.any():
            loss = loss + F.relu(margin * gap - (better - worse))[pair].mean()
    return loss


def ordered_fraction(scores: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Share of valid (better, worse) pairs, by position, that the model already scores in the right order."""
    valid = valid_mask(scores, valid)
    right = total = 0
    for gap in range(1, scores.shape[1]):
        pair = valid[:, :-gap] & valid[:, gap:]
        right += int(((scores[:, :-gap] > scores[:, gap:]) & pair).sum())
        total += int(pair.sum())
    return right / total if total else math.nan


def loss(sums: torch.Tensor, counts: torch.Tensor, margin: float = 0.1, mle_weight: float = 1.0,
         mle_on: str = "all", length_penalty: float = 1.0,
         valid: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """L = mle_weight * NLL + L_rank, with s = length_normalised(sums, counts) ranked best..worst along dim 1.

    mle_on="all": NLL over the tokens of every candidate (what Tuna's code does, flattening the candidates);
    mle_on="best": NLL over the best candidate only (column 0), which does not pull up the worst answers.
    """
    if mle_on not in ("all", "best"):
        raise ValueError(f"mle_on must be 'all' or 'best', got {mle_on!r}")
    valid = valid_mask(sums, valid)
    scores = length_normalised(sums, counts, length_penalty)
    rank = ranking_loss(scores, margin, valid)
    mask = valid if mle_on == "all" else valid & (torch.arange(sums.shape[1], device=sums.device) == 0)
    mle = token_nll(sums, counts, mask)
    total = mle_weight * mle + rank
    return total, {"mle": num(mle), "rank": num(rank), "ordered": ordered_fraction(scores, valid)}


def build_units(items: list[dict], cfg: Config, train_records: list[dict] = ()) -> tuple[list[dict], dict]:
    """{prompt, candidates best..worst} from ranked items, plus `cfg.mix_reference` of `train_records` (seeded) as
    one-candidate units.

    Empty candidates are dropped (their text would be an MLE target); a unit left with one candidate keeps its
    MLE term only, one left with none is skipped. All three are counted.
    """
    ok, failed = ranked_ok(items)
    units, dropped, mle_only, skipped = [], 0, 0, 0
    for it in ok:
        kept, n_empty = ranked_texts(it)
        dropped += n_empty
        if not kept:
            skipped += 1
            continue
        mle_only += len(kept) == 1
        units.append({"prompt": it["prompt"], "candidates": kept})
    extra = random.Random(cfg.seed).sample(list(train_records), min(cfg.mix_reference, len(train_records)))
    reference = record_units(extra)
    units += [{"prompt": u["prompt"], "candidates": [u["response"]]} for u in reference]
    return units, {"units": len(units), "ranked": len(ok), "failed_rankings": failed,
                   "extra_records": len(reference), "empty_candidates_dropped": dropped,
                   "units_mle_only": mle_only, "units_skipped_empty": skipped}


def make_loss(tokenizer, cfg: Config, max_len: int, row_tokens: int = ROW_TOKENS) -> LossFn:
    """loss_fn(model, units): mle_weight * NLL + the gap-margin ranking loss over candidates ordered best..worst."""
    lc = cfg.loss

    def loss_fn(model, units):
        sums, counts, valid = score_candidates(model, tokenizer, units, max_len, row_tokens)
        total, logs = loss(sums, counts, margin=lc.margin, mle_weight=lc.mle_weight, mle_on=lc.mle_on,
                           length_penalty=lc.length_penalty, valid=valid)
        return total, {"tokens": int(counts[valid].sum()), **logs}

    return loss_fn
