"""Score one training step's sequences in pieces (micro-batches, and shares for data-parallel processes) and still
get the gradient of the loss over the whole step, exactly.

The methods' losses are not sums over units: SFT averages over every token of the step, Tuna and RRHF compare the
candidates of an instruction, DPO averages over pairs. Gradient accumulation (a loss per micro-batch, gradients
added) would change them: the mean of micro-batch token means is not the step's token mean. Every loss here is a
function of per-sequence response log-prob sums, though, so the step is split the way gradient caching does it
(Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"):

1. each process scores its share of the sequences, micro-batch by micro-batch, without a graph;
2. the sums are added up across processes, and the loss is computed on all of them, the same on every process;
3. backward hands each sequence its d loss / d sum, and each process replays its micro-batches with a graph,
   one at a time, so memory holds one micro-batch's activations; the training loop then adds the processes'
   parameter gradients.

The price is a second forward pass per micro-batch. Dropout masks replay exactly (the RNG state is restored per
micro-batch), but a different split draws different masks, so split and unsplit runs agree exactly only with LoRA
dropout 0. With no split (one process, one micro-batch per step) `active()` is never entered and the methods score
their step in one forward pass, as before.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .checkpoint import rng_state, set_rng_state
from .logprobs import IGNORE, layout, response_logprobs

_ACTIVE: ContextVar["Split | None"] = ContextVar("split", default=None)


@dataclass
class Split:
    """How the current step's sequences are scored: process `rank` of `world` takes its contiguous share of them,
    `share` of the step's sequences per forward pass."""
    share: float  # fraction of the step's sequences in one forward pass (micro_batch_size / the step's units)
    rank: int = 0
    world: int = 1
    add_up: Callable[[torch.Tensor], torch.Tensor] = lambda t: t  # sum of a tensor over processes
    autocast: Callable = nullcontext  # the precision context, re-entered when backward replays a micro-batch

    def share_of(self, n: int) -> tuple[int, int]:
        """[lo, hi): this process's contiguous share of n items."""
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    def chunks(self, n: int) -> list[tuple[int, int]]:
        """[lo, hi) sequence ranges this process scores, in order: its contiguous share, cut into micro-batches."""
        lo, hi = self.share_of(n)
        size = max(1, math.ceil(n * self.share))
        return [(a, min(a + size, hi)) for a in range(lo, hi, size)]

    def score(self, model, encoded: list, pad_id: int, row_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sums [M], counts [M]) for all M sequences of the step, as `response_logprobs` gives them, with a
        backward that replays this process's micro-batches (see the module docstring)."""
        device = next(p for p in model.parameters()).device
        chunks, states = self.chunks(len(encoded)), []
        local = torch.zeros(len(encoded), dtype=torch.float32, device=device)
        with torch.no_grad():
            for lo, hi in chunks:
                states.append(rng_state(device))
                with self.autocast():
                    sums, _ = response_logprobs(model, layout(encoded[lo:hi], pad_id, row_tokens))
                local[lo:hi] = sums.float()
        after = rng_state(device)
        counts = torch.tensor([sum(1 for t in labels[1:] if t != IGNORE) for _, labels in encoded], device=device)

        def replay(grad: torch.Tensor) -> None:
            for (lo, hi), state in zip(chunks, states):
                set_rng_state(state, device)
                with torch.enable_grad(), self.autocast():
                    sums, _ = response_logprobs(model, layout(encoded[lo:hi], pad_id, row_tokens))
                torch.autograd.backward(sums.float(), grad[lo:hi])
            set_rng_state(after, device)

        anchor = torch.zeros((), device=device, requires_grad=True)  # gives the output a grad_fn
        return _Replay.apply(anchor, self.add_up(local), replay), counts


class _Replay(torch.autograd.Function):
    """Identity on precomputed sums whose backward runs `replay(grad)`: the parameter gradients are accumulated
    there, by a backward of its own per micro-batch, as reentrant activation checkpointing does."""

    @staticmethod
    def forward(ctx, anchor, sums, replay):
        ctx.replay = replay
        return sums.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.replay(grad.contiguous())
        return None, None, None


def current() -> Split | None:
    """The split of the step being scored, or None: score the step in one forward pass."""
    return _ACTIVE.get()


@contextmanager
def active(split: Split | None) -> Iterator[None]:
    token = _ACTIVE.set(split)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
