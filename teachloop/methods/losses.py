"""The methods' objectives as pure torch functions over per-sequence log-probability sums (no model inside).

Every function takes tensors that `teachloop.student.logprobs.response_logprobs` produces (a sum of response-token
log-probs and a token count per sequence), shaped [B, N] for B instructions x N candidates, so each loss can be
checked on hand-made tensors. Candidates are ordered left-aligned; `valid` [B, N] marks which slots hold one (an
instruction may have fewer candidates than the widest in the batch, e.g. a plain SFT example mixed into Tuna).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _num(x: torch.Tensor) -> float:
    """A detached Python float, for logs (never part of the graph)."""
    return x.detach().item()


def _valid(scores: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(scores, dtype=torch.bool) if valid is None else valid.bool()


def length_normalised(sums: torch.Tensor, counts: torch.Tensor, length_penalty: float = 1.0) -> torch.Tensor:
    """s = sums / counts ** length_penalty  (1.0: mean token log-prob; 0.0: the raw sequence log-prob).

    Counts are clamped to 1 so an empty slot (padding) gives a finite score that `valid` then ignores.
    """
    return sums / counts.clamp(min=1).to(sums.dtype) ** length_penalty


def token_nll(sums: torch.Tensor, counts: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """NLL = -sum(sums[mask]) / sum(counts[mask]): the token-level mean, as a causal-LM loss averages tokens."""
    mask = _valid(sums, mask)
    return -sums[mask].sum() / counts[mask].sum().clamp(min=1).to(sums.dtype)


def tuna_ranking_loss(scores: torch.Tensor, margin: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """L_rank = sum_{i=1}^{N-1} mean_{j, both valid} max(0, margin*i - (s_j - s_{j+i}))

    `scores` [B, N] are ordered best..worst. Gap i compares each candidate with the one i places below it and asks
    for a margin that grows with the gap (Tuna's MarginRankingLoss(margin*i) with target +1); the mean for a gap
    runs over the pairs that exist, and a gap with no pair adds 0.
    """
    valid = _valid(scores, valid)
    loss = scores.new_zeros(())
    for gap in range(1, scores.shape[1]):
        better, worse = scores[:, :-gap], scores[:, gap:]
        pair = valid[:, :-gap] & valid[:, gap:]
        if pair.any():
            loss = loss + F.relu(margin * gap - (better - worse))[pair].mean()
    return loss


def tuna_loss(sums: torch.Tensor, counts: torch.Tensor, margin: float = 0.1, mle_weight: float = 1.0,
              mle_on: str = "all", length_penalty: float = 1.0,
              valid: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """L = mle_weight * NLL + L_rank, with s = length_normalised(sums, counts) ranked best..worst along dim 1.

    mle_on="all": NLL over the tokens of every candidate (what Tuna's code does, flattening the candidates);
    mle_on="best": NLL over the best candidate only (column 0), which does not pull up the worst answers.
    """
    if mle_on not in ("all", "best"):
        raise ValueError(f"mle_on must be 'all' or 'best', got {mle_on!r}")
    valid = _valid(sums, valid)
    scores = length_normalised(sums, counts, length_penalty)
    rank = tuna_ranking_loss(scores, margin, valid)
    mask = valid if mle_on == "all" else valid & (torch.arange(sums.shape[1]) == 0)
    mle = token_nll(sums, counts, mask)
    loss = mle_weight * mle + rank
    return loss, {"mle": _num(mle), "rank": _num(rank), "ordered": ordered_fraction(scores, valid)}


def ordered_fraction(scores: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Share of valid (better, worse) pairs, by position, that the model already scores in the right order."""
    valid = _valid(scores, valid)
    right = total = 0
    for gap in range(1, scores.shape[1]):
        pair = valid[:, :-gap] & valid[:, gap:]
        right += int(((scores[:, :-gap] > scores[:, gap:]) & pair).sum())
        total += int(pair.sum())
    return right / total if total else math.nan


def best_index(rewards: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[B] index of the highest reward among the valid candidates (first one on ties)."""
    valid = _valid(rewards, valid)
    return rewards.masked_fill(~valid, -math.inf).argmax(dim=1)


def rrhf_loss(scores: torch.Tensor, rewards: torch.Tensor, sft_nll: torch.Tensor, rrhf_weight: float = 1.0,
              valid: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """L = rrhf_weight * mean_B sum_{a,b: r_b > r_a} max(0, p_a - p_b) + L_sft

    `scores` p [B, N] are length-normalised log-probs (sum / |y| ** length_penalty), `rewards` r [B, N] any
    reward where higher is better (equal rewards make no pair), `sft_nll` the NLL of the best candidate (a
    scalar, or [B] that is averaged). A pair only costs when the policy prefers the worse answer, as in RRHF.
    """
    valid = _valid(scores, valid)
    better_b = rewards.unsqueeze(1) > rewards.unsqueeze(2)  # [B, a, b]: r_b > r_a
    pairs = better_b & valid.unsqueeze(1) & valid.unsqueeze(2)
    gaps = scores.unsqueeze(2) - scores.unsqueeze(1)  # [B, a, b]: p_a - p_b
    rank = (F.relu(gaps) * pairs).sum(dim=(1, 2)).mean()
    sft = sft_nll.mean()
    loss = rrhf_weight * rank + sft
    wrong = int(((gaps > 0) & pairs).sum())
    return loss, {"rank": _num(rank), "sft": _num(sft), "misordered": wrong / max(1, int(pairs.sum()))}


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, dict]:
    """L = mean -log sigmoid(beta * ((pc - rc) - (pr - rr)))   (all four: summed response log-probs, [B])

    Implicit rewards are beta*(pc - rc) and beta*(pr - rr); reward accuracy is the share of pairs where the chosen
    reward is higher, and the margin their mean difference. At pc=rc, pr=rr the loss is log 2.
    """
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen - rejected).mean()
    return loss, {
        "reward_acc": _num((chosen > rejected).float().mean()),
        "reward_margin": _num((chosen - rejected).mean()),
        "reward_chosen": _num(chosen.mean()),
        "reward_rejected": _num(rejected.mean()),
    }


def raft_select(records: list[dict], scores: list[float], mode: str = "local", alpha: float = 0.2,
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
