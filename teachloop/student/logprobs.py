"""Tokenise (prompt, response) pairs with prompt positions masked, and score responses under the student.

Only response positions go through the output layer: with Gemma's 262k-token vocabulary the LM head dominates the
cost per token, and ranking losses and SFT need log-probabilities of response tokens alone.

Two layouts of a batch give the same per-sequence scores: `collate` pads every sequence to the longest (one row
each), `pack` lays sequences end to end in rows with positions restarting at 0 for each, so transformers builds a
block-diagonal causal mask and no sequence sees another. Packing spends far fewer tokens on padding.
"""
from __future__ import annotations

import torch

IGNORE = -100
# Packed row width, in tokens. Attention inside a packed row costs row_tokens**2 however the block-diagonal mask
# splits it, so rows stay a few sequences wide; 512 is also Gemma 3's sliding window, so a sequence never exceeds it.
ROW_TOKENS = 512
# Positions computed per real token that a packed step may reach before its rows are made fewer and wider.
MAX_PADDING = 1.1


def encode(tokenizer, prompt: str, response: str, max_len: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels): BOS + prompt + response + EOS, labels = -100 on the prompt, cut to `max_len`.

    The prompt is cut from the left when too long, so the response (what is learned or scored) survives.
    """
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    r = r[: max_len - len(bos) - 1]
    room = max_len - len(bos) - len(r)
    p = p[-room:] if room > 0 else []
    ids = bos + p + r
    labels = [IGNORE] * (len(bos) + len(p)) + r
    return ids, labels


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """One right-padded row per sequence; `seq` says which sequence owns each position (-1: padding)."""
    width = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    seq = torch.full((len(pairs), width), -1, dtype=torch.long)
    for i, (ids, lab) in enumerate(pairs):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
        seq[i, : len(ids)] = i
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "seq": seq}


def _balanced(lengths: list[int], n_rows: int) -> list[list[int]]:
    """Longest sequence first into the emptiest row; ties go to the lower index, so the result is a pure function
    of the lengths."""
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    load = [0] * n_rows
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min(range(n_rows), key=lambda r: (load[r], r))
        rows[r].append(i)
        load[r] += lengths[i]
    return rows


def pack_rows(lengths: list[int], row_tokens: int, max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Sequence indices per row: ceil(total / row_tokens) balanced rows, fewer (wider) ones while the step would
    compute more than `max_padding` positions per real token.

    Balancing a fixed number of rows (rather than filling rows up to a width) keeps the last row from being mostly
    padding; one row has none at all, so the padding bound always holds.

    >>> pack_rows([5, 3, 4, 2], 7)
    [[0, 3], [2, 1]]
    >>> pack_rows([9, 1], 100)
    [[0, 1]]
    >>> pack_rows([9, 2], 5)  # two rows would be 18 positions for 11 tokens
    [[0, 1]]
    """
    total = sum(lengths)
    n_rows = min(len(lengths), max(1, -(-total // row_tokens)))
    while True:
        rows = _balanced(lengths, n_rows)
        width = max(sum(lengths[i] for i in row) for row in rows)
        if n_rows == 1 or n_rows * width <= max_padding * total:
            return rows
        n_rows -= 1


def pack(pairs: list[tuple[list[int], list[int]]], pad_id: int, row_tokens: int) -> dict[str, torch.Tensor]:
    """Sequences end to end in rows of about `row_tokens` (`pack_rows`), positions restarting at 0 per sequence,
    and no attention mask.

    transformers reads a packed batch from `position_ids` when no attention mask is given: a position that does
    not follow its neighbour starts a new block of the causal mask. The padding at a row's end counts up from 0
    as a block of its own, so it is never attended to. A sequence's first label is always IGNORE (BOS or prompt),
    so no token is scored as predicting the next sequence's start.
    """
    rows = pack_rows([len(ids) for ids, _ in pairs], row_tokens)
    width = max(sum(len(pairs[i][0]) for i in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    seq = torch.full(shape, -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            ids, lab = pairs[i]
            if lab and lab[0] != IGNORE:
                raise ValueError("pack: a sequence must start with an unscored token (BOS or prompt)")
            n = len(ids)
            input_ids[r, at : at + n] = torch.tensor(ids)
            labels[r, at : at + n] = torch.tensor(lab)
            positions[r, at : at + n] = torch.arange(n)
            seq[r, at : at + n] = i
            at += n
        positions[r, at:] = torch.arange(width - at)
    return {"input_ids": input_ids, "position_ids": positions, "labels": labels, "seq": seq}


def layout(pairs: list[tuple[list[int], list[int]]], pad_id: int, row_tokens: int) -> dict[str, torch.Tensor]:
    """`pack` into rows of about `row_tokens` tokens, or `collate` (one row per sequence) when row_tokens is 0."""
    return pack(pairs, pad_id, row_tokens) if row_tokens else collate(pairs, pad_id)


def padding_ratio(batch: dict[str, torch.Tensor]) -> float:
    """Positions the forward pass computes per real token (1.0 = no padding)."""
    return batch["seq"].numel() / max(1, int((batch["seq"] >= 0).sum()))


def _parts(model):
    """(decoder stack, lm_head, final softcap or None) of a plain or PEFT-wrapped causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    softcap = getattr(base.config, "final_logit_softcapping", None)
    return base.model, base.lm_head, softcap


def hidden_states(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(the decoder's last hidden states [rows, width, hidden], the batch on the model's device) for a batch from
    `collate` or `pack`; the LM head is not applied (a reward head reads these states too)."""
    decoder, head, _ = _parts(model)
    batch = {name: t.to(head.weight.device) for name, t in batch.items()}
    if "position_ids" in batch:  # packed: the mask comes from the positions (see `pack`)
        out = decoder(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    else:
        out = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return out.last_hidden_state, batch


def response_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs per sequence [M], response token count per sequence [M]), for a batch from
    `collate` or `pack` (sequences in the order they were given)."""
    _, head, softcap = _parts(model)
    hidden, batch = hidden_states(model, batch)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    rows, cols = keep.nonzero(as_tuple=True)
    logits = head(hidden[:, :-1][rows, cols]).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    token_lp = torch.log_softmax(logits, dim=-1).gather(1, targets[rows, cols].unsqueeze(1)).squeeze(1)
    owner = batch["seq"][:, 1:][rows, cols]
    n = int(batch["seq"].max()) + 1
    sums = torch.zeros(n, dtype=token_lp.dtype, device=token_lp.device).index_add(0, owner, token_lp)
    counts = torch.bincount(owner, minlength=n)
    return sums, counts
