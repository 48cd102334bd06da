"""RRHF (Yuan et al. 2023): rank responses by reward, hinge on every pair the policy orders wrongly, plus SFT on
the best response.

Unit: {"prompt", "candidates": [...], "rewards": [...]} (higher reward = better; any order).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ConfigError, one_of
from .common import (LossFn, best_index, is_empty, length_normalised, num, ranked_ok, rewards_from,
                     score_candidates, valid_mask)
from ..student.logprobs import ROW_TOKENS


@dataclass
class Config:
    rrhf_weight: float = 1.0  # weight of the ranking term against SFT on the best candidate (RRHF train.sh: 1)
    length_penalty: float = 1.0  # p = sum log-prob / n_tokens ** length_penalty (RRHF default 1)
    reward: str = "rank"  # rank (teacher's ranking: best of N = N-1) | scores (teacher's mean log-probs)

    def validate(self, where: str) -> None:
        one_of(self.reward, ("rank", "scores"), f"{where}.reward")
        if self.rrhf_weight < 0:
            raise ConfigError(f"{where}.rrhf_weight must be >= 0")


def loss(scores: torch.Tensor, rewards: torch.Tensor, sft_nll: torch.Tensor, rrhf_weight: float = 1.0,
         valid: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """L = rrhf_weight * mean_B sum_{a,b: r_b > r_a} max(0, p_a - p_b) + L_sft

    `scores` p [B, N] are length-normalised log-probs (sum / |y| ** length_penalty), `rewards` r [B, N] any
    reward where higher is better (equal rewards make no pair), `sft_nll` the NLL of the best candidate (a
    scalar, or [B] that is averaged). A pair only costs when the policy prefers the worse answer, as in RRHF.
    """
    valid = valid_mask(scores, valid)
    better_b = rewards.unsqueeze(1) > rewards.unsqueeze(2)  # [B, a, b]: r_b > r_a
    pairs = better_b & valid.unsqueeze(1) & valid.unsqueeze(2)
    gaps = scores.unsqueeze(2) - scores.unsqueeze(1)  # [B, a, b]: p_a - p_b
    rank = (F.relu(gaps) * pairs).sum(dim=(1, 2)).mean()
    sft = sft_nll.mean()
    total = rrhf_weight * rank + sft
    wrong = int(((gaps > 0) & pairs).sum())
    return total, {"rank": num(rank), "sft": num(sft), "misordered": wrong / max(1, int(pairs.sum()))}


def build_units(items: list[dict], cfg: Config, train_records: list[dict] = ()) -> tuple[list[dict], dict]:
    """{prompt, candidates, rewards} from ranked items; `train_records` unused (RRHF mixes in no reference data).

    Empty candidates are dropped (the best one would be the SFT target, and ranking text that is not there teaches
    nothing); an item with no candidate left is skipped. A non-empty candidate without a reward (the teacher could
    not score it) ranks below every scored one.
    """
    ok, failed = ranked_ok(items)
    units, dropped, skipped = [], 0, 0
    for it in ok:
        pairs = [(c, r) for c, r in zip(it["candidates"], rewards_from(it, cfg.reward)) if not is_empty(c)]
        dropped += len(it["candidates"]) - len(pairs)
        if not pairs:
            skipped += 1
            continue
        known = [r for _, r in pairs if r is not None]
        floor = min(known) - 1.0 if known else 0.0
        units.append({"prompt": it["prompt"], "candidates": [c for c, _ in pairs],
                      "rewards": [floor if r is None else r for _, r in pairs]})
    return units, {"units": len(units), "failed_rankings": failed, "empty_candidates_dropped": dropped,
                   "units_skipped_empty": skipped}


def make_loss(tokenizer, cfg: Config, max_len: int, row_tokens: int = ROW_TOKENS) -> LossFn:
    """loss_fn(model, units): rrhf_weight * pairwise hinge + token-mean NLL of each unit's best answer."""

    def loss_fn(model, units):
        sums, counts, valid = score_candidates(model, tokenizer, units, max_len, row_tokens)
        width = sums.shape[1]
        rewards = torch.tensor([u["rewards"] + [0.0] * (width - len(u["rewards"])) for u in units],
                               dtype=sums.dtype, device=sums.device)
        best = best_index(rewards, valid)
        rows = torch.arange(len(units), device=sums.device)
        # Token-mean NLL of each unit's best answer, as RRHF's sft_loss averages the best sequence's tokens.
        sft_nll = -sums[rows, best] / counts[rows, best].clamp(min=1).to(sums.dtype)
        scores = length_normalised(sums, counts, cfg.length_penalty)
        total, logs = loss(scores, rewards, sft_nll, rrhf_weight=cfg.rrhf_weight, valid=valid)
        return total, {"tokens": int(counts[valid].sum()), **logs}

    return loss_fn
