"""Tokenise (prompt, response) pairs with prompt positions masked, and score responses under the student.

Only response positions go through the output layer: with Gemma's 262k-token vocabulary the LM head dominates the
cost per token, and ranking losses and SFT need log-probabilities of response tokens alone.
"""
from __future__ import annotations

import torch

IGNORE = -100


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
    width = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(pairs):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _parts(model):
    """(decoder stack, lm_head, final softcap or None) of a plain or PEFT-wrapped causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    softcap = getattr(base.config, "final_logit_softcapping", None)
    return base.model, base.lm_head, softcap


def response_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs per sequence [B], response token count per sequence [B])."""
    decoder, head, softcap = _parts(model)
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    rows, cols = keep.nonzero(as_tuple=True)
    logits = head(hidden[:, :-1][rows, cols]).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    token_lp = torch.log_softmax(logits, dim=-1).gather(1, targets[rows, cols].unsqueeze(1)).squeeze(1)
    n = len(batch["input_ids"])
    sums = torch.zeros(n, dtype=token_lp.dtype).index_add(0, rows, token_lp)
    counts = keep.sum(dim=1)
    return sums, counts
