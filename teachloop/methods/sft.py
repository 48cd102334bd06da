"""Supervised fine-tuning: token-mean NLL of a response given its prompt. Also the objective RAFT (its kept
samples) and CITING (the teacher's revisions) train with.

Unit: {"prompt", "response"}.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..student.prompting import record_prompt
from ..student.train import TrainConfig
from ..student.logprobs import ROW_TOKENS
from .common import LossFn, is_empty, score_pairs, token_nll


@dataclass
class Config:
    max_examples: int = 64  # cap on train+val examples (0 = all); keeps the 2-core default inside its budget
    seed: int = 3  # which examples the cap keeps
    train: TrainConfig = field(default_factory=TrainConfig)


def record_units(records: list[dict]) -> list[dict]:
    """{prompt, response} from dataset records (their reference `output`).

    `prepare` drops records without an output, so an empty one here means the data changed under us: it is
    skipped (the caller counts units against records) rather than trained on as "say nothing".
    """
    return [{"prompt": record_prompt(r), "response": r["output"]} for r in records if not is_empty(r["output"])]


def build_units(records: list[dict], cfg: Config) -> tuple[list[dict], dict]:
    """SFT units from train+val records, capped at `cfg.max_examples` (a seeded sample)."""
    if cfg.max_examples:
        records = random.Random(cfg.seed).sample(records, min(cfg.max_examples, len(records)))
    units = record_units(records)
    return units, {"units": len(units), "skipped_empty": len(records) - len(units)}


def make_loss(tokenizer, cfg=None, max_len: int = 256, row_tokens: int = ROW_TOKENS) -> LossFn:
    """loss_fn(model, units): token-mean NLL over every unit's response tokens (`cfg` unused: SFT has no knob)."""

    def loss_fn(model, units):
        sums, counts = score_pairs(model, tokenizer, [(u["prompt"], u["response"]) for u in units], max_len,
                                   row_tokens)
        return token_nll(sums, counts), {"tokens": int(counts.sum())}

    return loss_fn
