"""Sample completions from the student in torch (HF `generate`), for training that learns from its own samples.

The answering stages generate through llama.cpp; an online method (RLHF) needs samples of the policy as it is at
that moment, whose LoRA lives in torch, so it samples there. Pure ancestral sampling (temperature only: no top-k,
top-p or repetition penalty, whatever the model's generation_config says), so the samples come from the
distribution whose log-probabilities the loss uses. `generate` has no generator argument: the global torch RNG is
forked, seeded with `seed` and restored, so a prompt's samples are a function of the weights and the seed alone,
and sampling consumes nothing of the caller's random stream.
"""
from __future__ import annotations

import torch


def cut_at_stop(text: str, stop: list[str]) -> str:
    """The text before the first stop string, stripped.

    >>> cut_at_stop("Red.\\n### Instruction:\\nmore", ["\\n###"])
    'Red.'
    """
    for s in stop:
        at = text.find(s)
        if at >= 0:
            text = text[:at]
    return text.strip()


def prompt_ids(tokenizer, prompt: str, max_prompt: int) -> list[int]:
    """BOS + the prompt's tokens, cut from the left to `max_prompt` tokens, as `logprobs.encode` lays a prompt."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return bos + ids[-max(1, max_prompt - len(bos)):]


@torch.no_grad()
def sample(model, tokenizer, prompt: str, n: int, max_new_tokens: int, temperature: float, seed: int,
           stop: list[str] = (), max_prompt: int = 512) -> list[str]:
    """`n` sampled completions of `prompt`, each cut at the first stop string (see the module docstring).

    The model is put in eval mode for sampling (no dropout) and each module returned to its own mode afterwards.
    """
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids(tokenizer, prompt, max_prompt)], dtype=torch.long, device=device)
    config = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, repetition_penalty=1.0,
                              max_new_tokens=max_new_tokens, num_return_sequences=n,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    finally:
        for module, mode in modes:
            module.training = mode
    texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return [cut_at_stop(t, list(stop)) for t in texts]
