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

`complete_samples` draws N samples of one prompt as one request: the prompt is evaluated once as sequence 0 of a
context with room for N sequences, its KV cells are shared with sequences 1..N-1 (`llama_memory_seq_cp`), and the
N streams decode one token each per `llama_decode`, each with its own sampler chain and seed. The streams that
share a batch are fixed by the request, so the set stays a function of the request (issue #12: batching
*unrelated* requests together is what breaks that, and is never done here).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import BackendError, LLMConfig, Request, complete_each, sample_seeds

# The high-level `Llama.create_completion` samples with these defaults; the grouped sampler uses the same chain so
# that a sample means the same thing on both paths (only the numerics of the shared-prompt batch differ).
TOP_K, MIN_P, PENALTY_LAST_N = 40, 0.05, 64


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
        self._groups: dict[int, object] = {}  # n samples -> a context with n sequences (see `_group_context`)

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
            # A GPU's kernels round differently from the CPU's; 0 (CPU) leaves the keys of existing entries as they were.
            **({"n_gpu_layers": self.cfg.n_gpu_layers} if self.cfg.n_gpu_layers else {}),
        }

    def _open(self, logits_all: bool):
        import logging

        from .llamacpp_open import open_llama

        llm = open_llama(
            model_path=self.cfg.gguf,
            lora_path=self.cfg.lora or None,
            n_ctx=self.cfg.n_ctx,
            n_threads=self.cfg.n_threads,
            n_threads_batch=self.cfg.n_threads,
            n_batch=self.cfg.n_batch,
            n_gpu_layers=self.cfg.n_gpu_layers,
            seed=self.cfg.seed,
            logits_all=logits_all,
            verbose=False,
        )
        # The bindings map llama.cpp's log levels one step off, so its warnings (e.g. one line per LoRA tensor)
        # print even with verbose=False; failures still surface as Python exceptions. With GPU layers asked for
        # they stay on: they are how llama.cpp says that layers did not go to the GPU.
        if not self.cfg.n_gpu_layers:
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

    def complete_samples(self, req: Request, n: int) -> list[str]:
        """N samples of `req.prompt`, sample k drawn with seed `req.seed + k`, decoded together over one prompt KV.

        Chat-formatted and schema-constrained requests fall back to N separate completions: candidates use
        neither, and the grouped path would have to reimplement the chat template and the grammar sampler.
        """
        if n < 1:
            raise ValueError(f"complete_samples needs n >= 1, got {n}")
        if req.json_schema is not None or self.uses_chat_template():
            return complete_each(self, req, n)
        llm = self.gen
        prompt = self._tokens(llm, req.prompt, True)
        self._check_fits(len(prompt) + n * req.max_tokens, f"prompt + {n} samples x max_tokens")
        ctx, batch = self._group_context(n)
        ctx.kv_cache_clear()  # a fresh state, as for every other request
        step = self.cfg.n_batch
        for start in range(0, len(prompt), step):  # seq 0; only the last token's logits are kept
            batch.set_batch(prompt[start:start + step], n_past=start, logits_all=False)
            ctx.decode(batch)
        import llama_cpp

        for k in range(1, n):  # share the prompt's KV cells with every other stream (no copy of the data)
            llama_cpp.llama_memory_seq_cp(ctx.memory, 0, k, -1, -1)
        with contextlib.ExitStack() as stack:
            samplers = [stack.enter_context(contextlib.closing(self._sampler(req, s))) for s in sample_seeds(req, n)]
            return self._decode_streams(llm, ctx, batch, samplers, req, len(prompt), batch.n_tokens() - 1)

    def _decode_streams(self, llm, ctx, batch, samplers, req: Request, n_prompt: int, last: int) -> list[str]:
        """Decode every stream one token per step until it stops (end of generation, a stop string, max_tokens)."""
        import llama_cpp

        n = len(samplers)
        generated: list[list[int]] = [[] for _ in range(n)]
        texts = [""] * n
        where = {k: last for k in range(n)}  # stream -> index of its logits in the last decoded batch
        while where:
            active = {}
            for k, idx in where.items():  # in stream order: the same order on every run
                token = samplers[k].sample(ctx, idx)
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                    continue
                generated[k].append(token)
                text = llm.detokenize(generated[k]).decode("utf-8", errors="ignore")
                cut = min((i for i in (text.find(s) for s in req.stop) if i >= 0), default=-1)
                if cut >= 0:
                    texts[k] = text[:cut]
                    continue
                texts[k] = text
                if len(generated[k]) < req.max_tokens:
                    active[k] = token
            if not active:
                break
            batch.reset()
            for i, (k, token) in enumerate(active.items()):
                _put(batch.batch, i, token, n_prompt + len(generated[k]) - 1, k)
            batch.batch.n_tokens = len(active)
            ctx.decode(batch)
            where = {k: i for i, k in enumerate(active)}
        return texts

    def _sampler(self, req: Request, seed: int):
        """One stream's sampler chain, as `create_completion` builds it: penalties, top-k, top-p, min-p, temp, seed."""
        from llama_cpp._internals import LlamaSampler

        sampler = LlamaSampler()
        sampler.add_penalties(n_vocab=self.gen.n_vocab(), penalty_last_n=PENALTY_LAST_N,
                              penalty_repeat=req.repeat_penalty, penalty_freq=0.0, penalty_present=0.0)
        if req.temperature == 0:
            sampler.add_greedy()
            return sampler
        sampler.add_top_k(TOP_K)
        sampler.add_top_p(req.top_p, 1)
        sampler.add_min_p(MIN_P, 1)
        sampler.add_temp(req.temperature)
        sampler.add_dist(seed)
        return sampler

    def _group_context(self, n: int):
        """(context, batch) for requests of `n` samples, opened once per n on the generation model.

        Its settings depend on n only, never on which requests came before, and `kv_unified` lets the N streams
        attend to the one copy of the prompt's KV cells.
        """
        if n not in self._groups:
            import llama_cpp
            from llama_cpp._internals import LlamaBatch, LlamaContext

            if n > llama_cpp.llama_max_parallel_sequences():
                raise BackendError(f"{n} samples in one request exceed llama.cpp's "
                                   f"{llama_cpp.llama_max_parallel_sequences()} sequences; lower candidates.n")
            llm = self.gen
            params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
            params.n_seq_max = n
            params.kv_unified = True
            ctx = LlamaContext(model=llm._model, params=params, verbose=False)
            if llm._lora_adapter is not None:
                adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(llm._lora_adapter)
                if llama_cpp.llama_set_adapters_lora(ctx.ctx, adapters, 1, (ctypes.c_float * 1)(llm.lora_scale)):
                    raise BackendError(f"could not apply LoRA {self.cfg.lora!r} to the grouped-sampling context")
            batch = LlamaBatch(n_tokens=max(self.cfg.n_batch, n), embd=0, n_seq_max=1, verbose=False)
            self._groups[n] = (ctx, batch)
        return self._groups[n]


def _put(batch, i: int, token: int, pos: int, seq: int) -> None:
    """Slot i of a llama_batch: `token` at `pos` of sequence `seq`, its logits wanted."""
    batch.token[i] = token
    batch.pos[i] = pos
    batch.seq_id[i][0] = seq
    batch.n_seq_id[i] = 1
    batch.logits[i] = True
