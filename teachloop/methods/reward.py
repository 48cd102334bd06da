"""The reward model of the RLHF row: the base student with a fresh LoRA and a scalar head, trained with the
Bradley-Terry pairwise loss on the teacher's preferences over the student's own candidates.

Unit: {"prompt", "ranked": [distinct non-empty candidates, best..worst by the teacher's ranking, as RRHF/RAFT/DPO
read it]}: every ordered pair of them is a comparison, so N candidates give N(N-1)/2 pairs from N forward
sequences (InstructGPT's batching: all K-choose-2 comparisons of a prompt in one batch element, each completion
scored once). Items are split into train and held-out (seeded), so no instruction is on both sides and the
held-out accuracy measures preferences on instructions the model never saw. The reward of (prompt, response) is
the head applied to the decoder's last hidden state at the sequence's final token (the EOS after the response),
as InstructGPT's reward model reads the final token. Saved as a PEFT adapter dir (no GGUF twin: it never generates)
plus the head's weights.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..student.logprobs import ROW_TOKENS, encode, hidden_states, layout
from ..student.train import TrainConfig
from .common import LossFn, num, ranked_ok, ranked_texts

HEAD = "reward_head.safetensors"  # beside the adapter's own files in the reward model's dir


@dataclass
class Config:
    heldout: float = 0.25  # fraction of ranked items (instructions) held out for the pairwise accuracy
    seed: int = 19  # which items are held out
    train: TrainConfig = field(default_factory=TrainConfig)  # batch_size counts items (all their pairs)

    def validate(self, where: str) -> None:
        if not 0 < self.heldout < 1:
            raise ConfigError(f"{where}.heldout must be in (0, 1), got {self.heldout}: some items must be held out "
                              f"for the accuracy and some trained on")
        if self.train.processes != 1 or self.train.micro_batch_size != 0:
            raise ConfigError(f"{where}.train: the reward model scores a step's pairs in one forward pass in one "
                              f"process; set processes: 1 and micro_batch_size: 0")


class RewardModel(torch.nn.Module):
    """A PEFT causal LM (`lm`, its LM head unused) and a linear head from the last hidden state to a scalar."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.head = torch.nn.Linear(lm.get_base_model().config.hidden_size, 1)

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.lm.gradient_checkpointing_enable(**kwargs)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[M] rewards for a batch from `collate` or `pack`: the head on each sequence's last position."""
        hidden, batch = hidden_states(self.lm, batch)
        seq = batch["seq"]
        # A sequence's positions are contiguous in a row (both layouts): its last one is where the owner changes.
        after = torch.cat([seq[:, 1:], torch.full_like(seq[:, :1], -1)], dim=1)
        ends = ((seq >= 0) & (after != seq)).flatten().nonzero().squeeze(1)
        last = ends[torch.argsort(seq.flatten()[ends], stable=True)]
        states = hidden.flatten(0, 1)[last]
        return self.head(states.to(self.head.weight.dtype)).squeeze(-1)


def rewards(model: RewardModel, tokenizer, pairs: list[tuple[str, str]], max_len: int,
            row_tokens: int = ROW_TOKENS) -> torch.Tensor:
    """[M] rewards of (prompt, response) pairs, one forward pass (the layout does not change them)."""
    encoded = [encode(tokenizer, prompt, response, max_len) for prompt, response in pairs]
    return model(layout(encoded, tokenizer.pad_token_id, row_tokens))


def loss(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """L = mean -log sigmoid(r_chosen - r_rejected)   (Bradley-Terry: P(chosen > rejected) = sigmoid(difference))

    At equal rewards the loss is log 2; accuracy is the share of pairs whose chosen reward is strictly higher.
    """
    diff = chosen - rejected
    return -F.logsigmoid(diff).mean(), {"accuracy": num((diff > 0).float().mean()), "margin": num(diff.mean())}


def distinct_ranked(item: dict) -> list[str]:
    """The item's non-empty candidates best..worst, a text equal (up to white space) to a better one left out.

    >>> distinct_ranked({"candidates": ["b", "a", "", "b "], "ranking": [1, 0, 3, 2]})
    ['a', 'b']
    """
    kept, seen = [], set()
    for text in ranked_texts(item)[0]:
        if text.strip() not in seen:
            seen.add(text.strip())
            kept.append(text)
    return kept


def n_pairs(units: list[dict]) -> int:
    return sum(len(u["ranked"]) * (len(u["ranked"]) - 1) // 2 for u in units)


def pair_index(units: list[dict], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(better, worse) positions in the flat list of the units' ranked texts, for every pair within a unit.

    >>> [t.tolist() for t in pair_index([{"ranked": ["a", "b", "c"]}, {"ranked": ["d", "e"]}])]
    [[0, 0, 1, 3], [1, 2, 2, 4]]
    """
    better, worse, at = [], [], 0
    for u in units:
        n = len(u["ranked"])
        for a in range(n):
            for b in range(a + 1, n):
                better.append(at + a)
                worse.append(at + b)
        at += n
    return (torch.tensor(better, dtype=torch.long, device=device), torch.tensor(worse, dtype=torch.long, device=device))


def score_units(model: RewardModel, tokenizer, units: list[dict], max_len: int, row_tokens: int = ROW_TOKENS):
    """(rewards of the better, rewards of the worse) side of every pair of the units, one forward pass."""
    scored = rewards(model, tokenizer, [(u["prompt"], text) for u in units for text in u["ranked"]], max_len,
                     row_tokens)
    better, worse = pair_index(units, scored.device)
    return scored[better], scored[worse]


def split_items(items: list[dict], heldout: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train items, held-out items): each item goes by a hash of the seed and its id, ranked low to high, the
    lowest `heldout` share (at least one, never all) held out; file order and other items change nothing else."""
    if len(items) < 2:
        raise ConfigError(f"the reward model needs at least 2 ranked items (one to train on, one held out); "
                          f"got {len(items)}: raise candidates.sample_size")
    ranked = sorted(items, key=lambda it: hashlib.sha256(f"{seed}:{it['id']}".encode()).hexdigest())
    n_held = min(len(items) - 1, max(1, round(heldout * len(items))))
    held = {it["id"] for it in ranked[:n_held]}
    return [it for it in items if it["id"] not in held], [it for it in items if it["id"] in held]


def build_units(items: list[dict], cfg: Config) -> tuple[list[dict], list[dict], dict]:
    """(train units, held-out units, counts); failed rankings and items with no distinct pair are counted."""
    ok, failed = ranked_ok(items)
    train_items, held_items = split_items(ok, cfg.heldout, cfg.seed)

    def units(part):
        made = [{"id": it["id"], "prompt": it["prompt"], "ranked": distinct_ranked(it)} for it in part]
        return [u for u in made if len(u["ranked"]) >= 2]

    train, held = units(train_items), units(held_items)
    no_pair = len(ok) - len(train) - len(held)
    if not train or not held:
        raise ConfigError(f"the reward model got {n_pairs(train)} train and {n_pairs(held)} held-out preference "
                          f"pairs from {len(ok)} ranked items ({no_pair} without two distinct candidates); it "
                          f"needs both: raise candidates.sample_size or candidates.n")
    return train, held, {"items": len(ok), "train_items": len(train), "heldout_items": len(held),
                         "train_pairs": n_pairs(train), "heldout_pairs": n_pairs(held), "failed_rankings": failed,
                         "items_without_pair": no_pair}


def make_loss(tokenizer, cfg: Config, max_len: int, row_tokens: int = ROW_TOKENS) -> LossFn:
    """loss_fn(model, units): Bradley-Terry over every pair of the step's items, each text scored once."""

    def loss_fn(model, units):
        return loss(*score_units(model, tokenizer, units, max_len, row_tokens))

    return loss_fn


@torch.no_grad()
def accuracy(model: RewardModel, tokenizer, units: list[dict], max_len: int, batch_size: int = 8,
             row_tokens: int = ROW_TOKENS) -> float:
    """Share of the units' pairs whose better response gets the strictly higher reward (eval mode: no dropout)."""
    was_training = model.training
    model.eval()
    right = 0
    try:
        for i in range(0, len(units), batch_size):
            better, worse = score_units(model, tokenizer, units[i : i + batch_size], max_len, row_tokens)
            right += int((better > worse).sum())
    finally:
        model.train(was_training)
    return right / n_pairs(units)


def new_model(base_dir: str | Path, cfg: TrainConfig) -> RewardModel:
    """The base with a fresh LoRA (cfg.lora) and a head initialised from torch's seeded RNG."""
    from ..student.model import load_student

    torch.manual_seed(cfg.seed)
    return RewardModel(load_student(base_dir, lora=cfg.lora, trainable=True))


def save(model: RewardModel, out_dir: str | Path) -> None:
    from safetensors.torch import save_file

    from ..student.model import save_adapter

    save_adapter(model.lm, out_dir, gguf_name=None)
    save_file({n: p.detach().cpu().contiguous() for n, p in model.head.state_dict().items()},
              str(Path(out_dir) / HEAD))


def load(base_dir: str | Path, reward_dir: str | Path) -> RewardModel:
    """A saved reward model, frozen and in eval mode."""
    from safetensors.torch import load_file

    from ..student.model import load_student

    model = RewardModel(load_student(base_dir, adapter=reward_dir, trainable=False))
    model.head.load_state_dict(load_file(str(Path(reward_dir) / HEAD)))
    model.requires_grad_(False)
    return model.eval()
