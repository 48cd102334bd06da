"""Helpers every method module shares: scoring (prompt, response) pairs under the student in one forward pass,
laying candidates out as [B, N] grids, the length-normalised score and the token-level NLL, and the ranked-item
filters (failed rankings, empty candidates) that the units builders apply.

Losses work on tensors `teachloop.student.logprobs.response_logprobs` produces: a sum of response-token log-probs
and a token count per sequence. Candidates are left-aligned in a grid and `valid` [B, N] marks the filled slots.
Every tensor a loss makes is made on its scores' device (tests/test_devices.py runs them all on a device that is
not the CPU's).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..student import split
from ..student.logprobs import ROW_TOKENS, encode, layout, response_logprobs

LossFn = Callable[[object, list], tuple[torch.Tensor, dict]]


def num(x: torch.Tensor) -> float:
    """A detached Python float, for logs (never part of the graph)."""
    return x.detach().item()


def valid_mask(scores: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(scores, dtype=torch.bool) if valid is None else valid.bool()


def length_normalised(sums: torch.Tensor, counts: torch.Tensor, length_penalty: float = 1.0) -> torch.Tensor:
    """s = sums / counts ** length_penalty  (1.0: mean token log-prob; 0.0: the raw sequence log-prob).

    Counts are clamped to 1 so an empty slot (padding) gives a finite score that `valid` then ignores.
    """
    return sums / counts.clamp(min=1).to(sums.dtype) ** length_penalty


def token_nll(sums: torch.Tensor, counts: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """NLL = -sum(sums[mask]) / sum(counts[mask]): the token-level mean, as a causal-LM loss averages tokens."""
    mask = valid_mask(sums, mask)
    return -sums[mask].sum() / counts[mask].sum().clamp(min=1).to(sums.dtype)


def best_index(rewards: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[B] index of the highest reward among the valid candidates (first one on ties)."""
    valid = valid_mask(rewards, valid)
    return rewards.masked_fill(~valid, -math.inf).argmax(dim=1)


def score_pairs(model, tokenizer, pairs: list[tuple[str, str]], max_len: int,
                row_tokens: int = ROW_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response log-probs [M], response token counts [M]) for (prompt, response) pairs, one forward.

    The pairs are packed into rows of about `row_tokens` tokens (0: one padded row each); either layout gives the
    same scores, so a loss built on them does not depend on it. Inside a training step split over micro-batches or
    processes, `split.Split.score` scores them piece by piece with the same result and gradient.
    """
    encoded = [encode(tokenizer, prompt, response, max_len) for prompt, response in pairs]
    step_split = split.current()
    if step_split is not None:
        return step_split.score(model, encoded, tokenizer.pad_token_id, row_tokens)
    return response_logprobs(model, layout(encoded, tokenizer.pad_token_id, row_tokens))


def grid(flat: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Lay a flat [sum(sizes)] tensor out as [B, max(sizes)], left-aligned, zeros in empty slots (keeps grads)."""
    width = max(sizes)
    index = torch.tensor([b * width + j for b, n in enumerate(sizes) for j in range(n)], device=flat.device)
    return flat.new_zeros(len(sizes) * width).index_copy(0, index, flat).view(len(sizes), width)


def score_candidates(model, tokenizer, units: list[dict], max_len: int, row_tokens: int = ROW_TOKENS):
    """(sums, counts, valid), each [B, N]: every unit's candidates scored in a single forward pass."""
    sizes = [len(u["candidates"]) for u in units]
    if min(sizes) < 1:
        raise ValueError("a unit has no candidates")
    sums, counts = score_pairs(model, tokenizer, [(u["prompt"], c) for u in units for c in u["candidates"]], max_len,
                                row_tokens)
    valid = grid(torch.ones(len(sums), device=sums.device), sizes).bool()
    return grid(sums, sizes), grid(counts, sizes), valid


def ranked_ok(items: list[dict]) -> tuple[list[dict], int]:
    """(items the teacher ranked, how many it failed to rank): a failed ranking is never trained on."""
    ok = [it for it in items if it.get("ranking") is not None]
    return ok, len(items) - len(ok)


def is_empty(text: str | None) -> bool:
    """An answer with no visible text: never a training target (nothing to learn to say)."""
    return not (text or "").strip()


def ranked_texts(item: dict) -> tuple[list[str], int]:
    """(the item's non-empty candidates best..worst, how many empty ones were left out).

    >>> ranked_texts({"candidates": ["a", " ", "c"], "ranking": [2, 1, 0]})
    (['c', 'a'], 1)
    """
    ordered = [item["candidates"][i] for i in item["ranking"]]
    kept = [t for t in ordered if not is_empty(t)]
    return kept, len(ordered) - len(kept)


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
