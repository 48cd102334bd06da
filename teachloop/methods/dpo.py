"""DPO (Rafailov et al. 2023) on teacher preferences, with the starting (SFT) adapter as the reference policy.

Unit: {"prompt", "chosen", "rejected", "ref_chosen", "ref_rejected"}; the reference log-probs are filled in by
`before` (= `add_reference_logprobs`) with the starting weights, so no second model is held in memory. Pairs come
from ranked candidates (best vs worst) or from CITING revisions (teacher revision vs the student's own answer).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..student.logprobs import ROW_TOKENS
from ..student.split import Split
from ..student.prompting import record_prompt
from .common import LossFn, is_empty, num, ranked_ok, ranked_texts, score_pairs


@dataclass
class Config:
    beta: float = 0.1  # strength of the implicit KL leash to the reference (SFT) policy; DPO/TRL default 0.1

    def validate(self, where: str) -> None:
        if self.beta <= 0:
            raise ConfigError(f"{where}.beta must be > 0")


def loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
         ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, dict]:
    """L = mean -log sigmoid(beta * ((pc - rc) - (pr - rr)))   (all four: summed response log-probs, [B])

    Implicit rewards are beta*(pc - rc) and beta*(pr - rr); reward accuracy is the share of pairs where the chosen
    reward is higher, and the margin their mean difference. At pc=rc, pr=rr the loss is log 2.
    """
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    total = -F.logsigmoid(chosen - rejected).mean()
    return total, {
        "reward_acc": num((chosen > rejected).float().mean()),
        "reward_margin": num((chosen - rejected).mean()),
        "reward_chosen": num(chosen.mean()),
        "reward_rejected": num(rejected.mean()),
    }


def units_from_ranked(items: list[dict]) -> tuple[list[dict], dict]:
    """{prompt, chosen: best non-empty candidate, rejected: worst non-empty one}.

    An empty candidate is never a target, not even a rejected one; rankings put empty candidates last, so the
    pair is taken among the non-empty ones (counted as `empty_candidates`). Items with fewer than two non-empty
    candidates, or whose best and worst texts are equal, are skipped and counted.
    """
    ok, failed = ranked_ok(items)
    units, same, too_few, empties = [], 0, 0, 0
    for it in ok:
        kept, n_empty = ranked_texts(it)
        empties += n_empty
        if len(kept) < 2:
            too_few += 1
        elif kept[0].strip() == kept[-1].strip():
            same += 1
        else:
            units.append({"prompt": it["prompt"], "chosen": kept[0], "rejected": kept[-1]})
    return units, {"units": len(units), "failed_rankings": failed, "identical_pairs": same,
                   "too_few_nonempty": too_few, "empty_candidates": empties}


def units_from_revisions(rows: list[dict]) -> tuple[list[dict], dict]:
    """CITING's free preference pairs: {prompt, chosen: teacher revision, rejected: the student's own answer}.

    Failed revisions, pairs with an empty side and revisions equal to the answer are skipped and counted.
    """
    units, failed, empty, same = [], 0, 0, 0
    for r in rows:
        if not r.get("ok"):
            failed += 1
        elif is_empty(r["revision"]) or is_empty(r["answer"]):
            empty += 1
        elif r["revision"].strip() == r["answer"].strip():
            same += 1
        else:
            units.append({"prompt": record_prompt(r), "chosen": r["revision"], "rejected": r["answer"]})
    return units, {"units": len(units), "failed_revisions": failed, "empty_pairs": empty, "identical_pairs": same}


def build_units(rows: list[dict], cfg: Config, train_records: list[dict] = ()) -> tuple[list[dict], dict]:
    """Pairs from CITING revisions when the rows carry a `revision`, else from ranked candidates."""
    if rows and "revision" in rows[0]:
        return units_from_revisions(rows)
    return units_from_ranked(rows)


def make_loss(tokenizer, cfg: Config, max_len: int, row_tokens: int = ROW_TOKENS) -> LossFn:
    """loss_fn(model, units): DPO on summed response log-probs; the reference's come precomputed in each unit."""

    def loss_fn(model, units):
        pairs = [(u["prompt"], u["chosen"]) for u in units] + [(u["prompt"], u["rejected"]) for u in units]
        sums, counts = score_pairs(model, tokenizer, pairs, max_len, row_tokens)
        chosen, rejected = sums[: len(units)], sums[len(units):]
        ref_chosen = torch.tensor([u["ref_chosen"] for u in units], dtype=sums.dtype, device=sums.device)
        ref_rejected = torch.tensor([u["ref_rejected"] for u in units], dtype=sums.dtype, device=sums.device)
        total, logs = loss(chosen, rejected, ref_chosen, ref_rejected, beta=cfg.beta)
        return total, {"tokens": int(counts.sum()), **logs}

    return loss_fn


@torch.no_grad()
def add_reference_logprobs(model, tokenizer, units: list[dict], max_len: int, batch_size: int = 8,
                           row_tokens: int = ROW_TOKENS, scope: Split | None = None) -> list[dict]:
    """Set `ref_chosen`/`ref_rejected` on each unit, in place (and return the list): summed log-probs under `model`
    as it is now, so call it before training.

    The policy starts from the SFT adapter, so scoring with the freshly loaded model *is* the SFT reference, and
    no second model is held in memory. Dropout is off while scoring (eval mode) and the mode is restored; the
    same `max_len` as training keeps reference and policy scores over identical token spans. `scope` (the
    training run's): each process scores its share of the units under the training precision, and the scores
    are summed over processes (each unit's slot is filled by one process, zeros elsewhere), so every process
    ends with all of them.
    """
    scope = scope or Split(share=1.0)
    device = next(p for p in model.parameters()).device
    n = len(units)
    lo, hi = scope.share_of(n)
    ref = torch.zeros(2 * n, dtype=torch.float32, device=device)  # [chosen of every unit, rejected of every unit]
    was_training = model.training
    model.eval()
    try:
        for i in range(lo, hi, batch_size):
            chunk = units[i : min(i + batch_size, hi)]
            pairs = [(u["prompt"], u["chosen"]) for u in chunk] + [(u["prompt"], u["rejected"]) for u in chunk]
            with scope.autocast():
                sums, _ = score_pairs(model, tokenizer, pairs, max_len, row_tokens)
            ref[i : i + len(chunk)] = sums[: len(chunk)].float()
            ref[n + i : n + i + len(chunk)] = sums[len(chunk):].float()
    finally:
        model.train(was_training)
    ref = scope.add_up(ref).tolist()
    for j, u in enumerate(units):
        u["ref_chosen"], u["ref_rejected"] = ref[j], ref[n + j]
    return units


def before(model, tokenizer, units: list[dict], max_len: int, row_tokens: int = ROW_TOKENS,
           scope: Split | None = None) -> None:
    """Runs once before training: the reference log-probs under the starting weights (see `train_adapter`)."""
    add_reference_logprobs(model, tokenizer, units, max_len, row_tokens=row_tokens, scope=scope)
