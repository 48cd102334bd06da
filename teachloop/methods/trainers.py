"""Loss functions for `teachloop.student.train.train`, one builder per method (Tuna, RRHF, DPO, SFT/RAFT).

Each builder returns `loss_fn(model, units) -> (loss, logs)`: it tokenises the batch's (prompt, response) pairs
with `encode`/`collate` (cut to `max_len`, the TrainConfig's), scores them in one forward pass with
`response_logprobs`, and hands the sums to the pure losses in `losses.py`. Unit formats:

    sft / raft  {"prompt", "response"}
    tuna        {"prompt", "candidates": [best, ..., worst]}          (1..N candidates; one = MLE only)
    rrhf        {"prompt", "candidates": [...], "rewards": [...]}     (higher reward = better)
    dpo         {"prompt", "chosen", "rejected", "ref_chosen", "ref_rejected"}   (see add_reference_logprobs)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..config import ConfigError, one_of
from ..student.logprobs import collate, encode, response_logprobs
from . import losses

LossFn = Callable[[object, list], tuple[torch.Tensor, dict]]


@dataclass
class TunaConfig:
    margin: float = 0.1  # ranking margin per rank gap, in mean-token-log-prob units (Tuna: 0.1)
    mle_weight: float = 1.0  # weight of the MLE term against the ranking term (Tuna: 1)
    mle_on: str = "all"  # all: NLL on every candidate (Tuna's code) | best: NLL on the top-ranked one only
    length_penalty: float = 1.0  # score = sum log-prob / n_tokens ** length_penalty (1 = mean, as Tuna)

    def validate(self, where: str) -> None:
        one_of(self.mle_on, ("all", "best"), f"{where}.mle_on")
        if self.margin < 0 or self.mle_weight < 0:
            raise ConfigError(f"{where}: margin and mle_weight must be >= 0")


@dataclass
class RRHFConfig:
    rrhf_weight: float = 1.0  # weight of the ranking term against SFT on the best candidate (RRHF train.sh: 1)
    length_penalty: float = 1.0  # p = sum log-prob / n_tokens ** length_penalty (RRHF default 1)
    reward: str = "rank"  # rank (teacher's ranking: best of N = N-1) | scores (teacher's mean log-probs)

    def validate(self, where: str) -> None:
        one_of(self.reward, ("rank", "scores"), f"{where}.reward")
        if self.rrhf_weight < 0:
            raise ConfigError(f"{where}.rrhf_weight must be >= 0")


@dataclass
class DPOConfig:
    beta: float = 0.1  # strength of the implicit KL leash to the reference (SFT) policy; DPO/TRL default 0.1

    def validate(self, where: str) -> None:
        if self.beta <= 0:
            raise ConfigError(f"{where}.beta must be > 0")


def score_pairs(model, tokenizer, pairs: list[tuple[str, str]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response log-probs [M], response token counts [M]) for (prompt, response) pairs, one forward."""
    encoded = [encode(tokenizer, prompt, response, max_len) for prompt, response in pairs]
    return response_logprobs(model, collate(encoded, tokenizer.pad_token_id))


def _grid(flat: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Lay a flat [sum(sizes)] tensor out as [B, max(sizes)], left-aligned, zeros in empty slots (keeps grads)."""
    width = max(sizes)
    index = torch.tensor([b * width + j for b, n in enumerate(sizes) for j in range(n)])
    return flat.new_zeros(len(sizes) * width).index_copy(0, index, flat).view(len(sizes), width)


def score_candidates(model, tokenizer, units: list[dict], max_len: int):
    """(sums, counts, valid), each [B, N]: every unit's candidates scored in a single forward pass."""
    sizes = [len(u["candidates"]) for u in units]
    if min(sizes) < 1:
        raise ValueError("a unit has no candidates")
    sums, counts = score_pairs(model, tokenizer, [(u["prompt"], c) for u in units for c in u["candidates"]], max_len)
    valid = _grid(torch.ones(len(sums)), sizes).bool()
    return _grid(sums, sizes), _grid(counts, sizes), valid


def sft_loss_fn(tokenizer, max_len: int) -> LossFn:
    """Token-mean NLL of each unit's `response` (SFT, RAFT's kept samples, CITING revisions)."""

    def loss_fn(model, units):
        sums, counts = score_pairs(model, tokenizer, [(u["prompt"], u["response"]) for u in units], max_len)
        loss = losses.token_nll(sums, counts)
        return loss, {"tokens": int(counts.sum())}

    return loss_fn


def tuna_loss_fn(tokenizer, cfg: TunaConfig, max_len: int) -> LossFn:
    """mle_weight * NLL + Tuna's gap-margin ranking loss over candidates ordered best..worst."""

    def loss_fn(model, units):
        sums, counts, valid = score_candidates(model, tokenizer, units, max_len)
        return losses.tuna_loss(sums, counts, margin=cfg.margin, mle_weight=cfg.mle_weight, mle_on=cfg.mle_on,
                                length_penalty=cfg.length_penalty, valid=valid)

    return loss_fn


def rrhf_loss_fn(tokenizer, cfg: RRHFConfig, max_len: int) -> LossFn:
    """rrhf_weight * (pairwise hinge where the policy prefers the lower-reward answer) + NLL of the best answer."""

    def loss_fn(model, units):
        sums, counts, valid = score_candidates(model, tokenizer, units, max_len)
        width = sums.shape[1]
        rewards = torch.tensor([u["rewards"] + [0.0] * (width - len(u["rewards"])) for u in units],
                               dtype=sums.dtype)
        best = losses.best_index(rewards, valid)
        rows = torch.arange(len(units))
        # Token-mean NLL of each unit's best answer, as RRHF's sft_loss averages the best sequence's tokens.
        sft_nll = -sums[rows, best] / counts[rows, best].clamp(min=1).to(sums.dtype)
        scores = losses.length_normalised(sums, counts, cfg.length_penalty)
        return losses.rrhf_loss(scores, rewards, sft_nll, rrhf_weight=cfg.rrhf_weight, valid=valid)

    return loss_fn


def dpo_loss_fn(tokenizer, cfg: DPOConfig, max_len: int) -> LossFn:
    """DPO on summed response log-probs; the reference's come precomputed in each unit."""

    def loss_fn(model, units):
        pairs = [(u["prompt"], u["chosen"]) for u in units] + [(u["prompt"], u["rejected"]) for u in units]
        sums, _ = score_pairs(model, tokenizer, pairs, max_len)
        chosen, rejected = sums[: len(units)], sums[len(units):]
        ref_chosen = torch.tensor([u["ref_chosen"] for u in units], dtype=sums.dtype)
        ref_rejected = torch.tensor([u["ref_rejected"] for u in units], dtype=sums.dtype)
        return losses.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=cfg.beta)

    return loss_fn


@torch.no_grad()
def add_reference_logprobs(model, tokenizer, units: list[dict], max_len: int, batch_size: int = 8) -> list[dict]:
    """Set `ref_chosen`/`ref_rejected` on each unit, in place (and return the list): summed log-probs under `model`
    as it is now, so call it before training (it fits `train_adapter(..., before=...)`).

    The policy starts from the SFT adapter, so scoring with the freshly loaded model *is* the SFT reference, and
    no second model is held in memory. Dropout is off while scoring (eval mode) and the mode is restored; the
    same `max_len` as training keeps reference and policy scores over identical token spans.
    """
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(units), batch_size):
            chunk = units[i : i + batch_size]
            pairs = [(u["prompt"], u["chosen"]) for u in chunk] + [(u["prompt"], u["rejected"]) for u in chunk]
            sums, _ = score_pairs(model, tokenizer, pairs, max_len)
            for j, u in enumerate(chunk):
                u["ref_chosen"], u["ref_rejected"] = float(sums[j]), float(sums[len(chunk) + j])
    finally:
        model.train(was_training)
    return units
