"""In-process llama.cpp backend (llama-cpp-python): a GGUF model, optionally with a GGUF LoRA adapter.

Two contexts are opened lazily: one for generation and next-token option probabilities (logits of the last token
only), one with `logits_all` for continuation log-probabilities (Tuna's probabilistic ranking).

Every request starts from a fresh context state, so a reply is a function of its request (the cache key) alone:
llama-cpp-python otherwise keeps the KV cache of the previous prompt's shared prefix, and logits computed over a
reused prefix differ slightly from a full evaluation, enough to flip greedy tokens (10 of 40 eval answers changed
with the state of the previous prompt kept). A resumed stage, which runs its requests after a different history,
would then not reproduce an uninterrupted run. Prefix reuse stays only inside one grouped request
(`option_probs_many`, `logprobs_many`), where the history is part of the request: the judge's three criteria of one
order share everything but the question, Tuna's candidates of one item share the whole prompt.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import BackendError, LLMConfig, Request


@lru_cache(maxsize=32)
def _sha256(path: str, mtime: float, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    st = os.stat(path)
    return _sha256(str(path), st.st_mtime, st.st_size)


class LlamaCppBackend:
    def __init__(self, cfg: LLMConfig):
        self.cfg = cfg
        for what, path in (("gguf", cfg.gguf), ("lora", cfg.lora)):
            if path and not Path(path).exists():
                raise BackendError(
                    f"llamacpp {what} file {path!r} not found; build it first (e.g. `dvc repro base`) "
                    f"or point params at an existing file"
                )
        self._gen = None
        self._scorer = None

    def identity(self) -> dict:
        return {
            "backend": "llamacpp",
            "gguf_sha256": file_sha256(self.cfg.gguf),
            "lora_sha256": file_sha256(self.cfg.lora) if self.cfg.lora else "",
            "prompt_format": self.cfg.prompt_format,
            "n_ctx": self.cfg.n_ctx,
            # Entries made before each request got a fresh state depend on what ran before them; this marker
            # keeps them from being served as if they were answers to their request alone.
            "state": "fresh-per-request",
        }

    def _open(self, logits_all: bool):
        import logging

        from llama_cpp import Llama

        llm = Llama(
            model_path=self.cfg.gguf,
            lora_path=self.cfg.lora or None,
            n_ctx=self.cfg.n_ctx,
            n_threads=self.cfg.n_threads,
            n_threads_batch=self.cfg.n_threads,
            n_batch=self.cfg.n_batch,
            seed=self.cfg.seed,
            logits_all=logits_all,
            verbose=False,
        )
        # The bindings map llama.cpp's log levels one step off, so its warnings (e.g. one line per LoRA tensor)
        # print even with verbose=False; failures still surface as Python exceptions.
        logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL)
        return llm

    @property
    def gen(self):
        if self._gen is None:
            self._gen = self._open(logits_all=False)
        return self._gen

    @property
    def scorer(self):
        if self._scorer is None:
            self._scorer = self._open(logits_all=True)
        return self._scorer

    def _tokens(self, llm, text: str, bos: bool) -> list[int]:
        return llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False)

    def _check_fits(self, n: int, what: str) -> None:
        if n > self.cfg.n_ctx:
            raise BackendError(f"{what} needs {n} tokens but n_ctx is {self.cfg.n_ctx}; raise n_ctx in params")

    def complete(self, req: Request) -> str:
        grammar = None
        if req.json_schema is not None:
            from llama_cpp import LlamaGrammar

            grammar = LlamaGrammar.from_json_schema(json.dumps(req.json_schema), verbose=False)
        kwargs = dict(
            max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
            stop=list(req.stop) or None, grammar=grammar, repeat_penalty=req.repeat_penalty,
        )
        self._check_fits(len(self._tokens(self.gen, req.prompt, True)) + req.max_tokens, "prompt + max_tokens")
        self._fresh(self.gen)
        if self.uses_chat_template():
            out = self.gen.create_chat_completion(messages=[{"role": "user", "content": req.prompt}], **kwargs)
            return out["choices"][0]["message"]["content"] or ""
        out = self.gen.create_completion(req.prompt, **kwargs)
        return out["choices"][0]["text"]

    def uses_chat_template(self) -> bool:
        if self.cfg.prompt_format == "auto":
            return bool(self.gen.metadata.get("tokenizer.chat_template"))
        return self.cfg.prompt_format == "chat"

    @staticmethod
    def _fresh(llm) -> None:
        """Forget everything the context evaluated before: KV cache emptied, no prefix left to match.

        `reset()` alone sets n_tokens to 0 (so `generate` finds no prefix to reuse); clearing the memory as well
        puts new tokens in the same KV cells as in a new process, so even the cell layout is the same.
        """
        llm.reset()
        llm._ctx.kv_cache_clear()

    @staticmethod
    def _eval_reusing_prefix(llm, tokens: list[int]) -> None:
        """Evaluate `tokens`, keeping the KV cache of the prefix they share with what was evaluated last.

        Only for the prompts of one grouped request, after `_fresh`: the reused history is then part of the request.

        At least one token is always re-evaluated so the last position's logits are fresh.
        """
        keep = 0
        for a, b in zip(llm.input_ids[: llm.n_tokens], tokens):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(tokens) - 1)
        llm.n_tokens = keep  # eval() drops KV entries from n_tokens on
        llm.eval(tokens[keep:])

    def logprobs(self, prompt: str, continuation: str) -> list[float]:
        return self.logprobs_many(prompt, [continuation])[0]

    def logprobs_many(self, prompt: str, continuations: list[str]) -> list[list[float]]:
        """`logprobs` of each continuation after the same prompt, in one fresh state; the prompt is evaluated once."""
        llm = self.scorer
        p = self._tokens(llm, prompt, True)
        self._fresh(llm)
        out = []
        for continuation in continuations:
            c = self._tokens(llm, continuation, False)
            if not c:
                out.append([])
                continue
            self._check_fits(len(p) + len(c), "prompt + continuation")
            self._eval_reusing_prefix(llm, p + c)
            logits = np.asarray(llm.scores[len(p) - 1 : len(p) + len(c) - 1], dtype=np.float64)
            top = logits.max(axis=1, keepdims=True)
            lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
            out.append([float(logits[i, t] - lse[i]) for i, t in enumerate(c)])
        return out

    def option_probs(self, prompt: str, options: list[str]) -> dict[str, float]:
        return self.option_probs_many([prompt], options)[0]

    def option_probs_many(self, prompts: list[str], options: list[str]) -> list[dict[str, float]]:
        """`option_probs` of each prompt in turn, in one fresh state, each reusing the prefix it shares with the last."""
        llm = self.gen
        ids = [self._tokens(llm, o, False)[0] for o in options]
        if len(set(ids)) != len(ids):
            raise BackendError(f"options {options} share a first token; make their first tokens distinct")
        self._fresh(llm)
        out = []
        for prompt in prompts:
            tokens = self._tokens(llm, prompt, True)
            self._check_fits(len(tokens), "prompt")
            self._eval_reusing_prefix(llm, tokens)
            # Only the last position's logits exist without logits_all; read them straight from the context.
            last = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)
            chosen = last[ids]
            p = np.exp(chosen - chosen.max())
            p /= p.sum()
            out.append({o: float(v) for o, v in zip(options, p)})
        return out
