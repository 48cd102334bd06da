"""Backend for any OpenAI-compatible server (a hosted API, vLLM, `python -m llama_cpp.server`).

The API key is read from the env var *named* in params and is never written to params, logs, DVC files or the
cache key. Transport failures (429, 5xx, timeouts) are retried by the SDK with exponential backoff, bounded by
`max_retries`; what still fails surfaces as a BackendError saying what happened.
"""
from __future__ import annotations

import math
import os

from .base import BackendError, LLMConfig, Request


class OpenAIBackend:
    def __init__(self, cfg: LLMConfig):
        import openai

        key = os.environ.get(cfg.api_key_env)
        if key is None:
            raise BackendError(
                f"env var {cfg.api_key_env} is not set; export it with your API key "
                f"(any non-empty value for a local server), or change api_key_env in params"
            )
        self.cfg = cfg
        self._openai = openai
        self.client = openai.OpenAI(
            base_url=cfg.base_url, api_key=key or "none", timeout=cfg.timeout_s, max_retries=cfg.max_retries
        )

    def identity(self) -> dict:
        return {"backend": "openai", "model": self.cfg.model, "base_url": self.cfg.base_url, "api": self.cfg.api}

    def _call(self, fn, **kwargs):
        try:
            return fn(model=self.cfg.model, **kwargs)
        except (self._openai.APIConnectionError, self._openai.APITimeoutError, self._openai.APIStatusError) as e:
            raise BackendError(
                f"{self.cfg.base_url} ({self.cfg.model}) failed after {self.cfg.max_retries} retries: "
                f"{type(e).__name__}: {e}"
            ) from e

    def complete(self, req: Request) -> str:
        common = dict(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                      stop=list(req.stop) or None)
        extra = {"repeat_penalty": req.repeat_penalty} if req.repeat_penalty != 1.0 else None
        if self.cfg.api == "chat":
            fmt = None
            if req.json_schema is not None:
                fmt = {"type": "json_schema", "json_schema": {"name": "reply", "schema": req.json_schema}}
            out = self._call(self.client.chat.completions.create, messages=[{"role": "user", "content": req.prompt}],
                             response_format=fmt or self._openai.omit, extra_body=extra, **common)
            return out.choices[0].message.content or ""
        out = self._call(self.client.completions.create, prompt=req.prompt, extra_body=extra, **common)
        return out.choices[0].text

    def logprobs(self, prompt: str, continuation: str) -> list[float]:
        out = self._call(self.client.completions.create, prompt=prompt + continuation, max_tokens=1, echo=True,
                         logprobs=1, temperature=0.0)
        lp = out.choices[0].logprobs
        if lp is None or not lp.token_logprobs or lp.text_offset is None:
            raise BackendError(
                f"{self.cfg.base_url} does not return prompt log-probabilities (echo=True, logprobs); "
                f"use a llamacpp teacher or a server that supports them for probabilistic ranking"
            )
        n = len(prompt) + len(continuation)
        return [float(v) for off, v in zip(lp.text_offset, lp.token_logprobs)
                if len(prompt) <= off < n and v is not None]

    def option_probs(self, prompt: str, options: list[str]) -> dict[str, float]:
        out = self._call(self.client.completions.create, prompt=prompt, max_tokens=1, logprobs=20, temperature=0.0)
        lp = out.choices[0].logprobs
        top = (lp.top_logprobs or [{}])[0] if lp is not None else {}
        if not top:
            raise BackendError(f"{self.cfg.base_url} returns no top_logprobs; option probabilities need them")
        probs = {o: sum(math.exp(v) for t, v in top.items() if t.strip() == o.strip()) for o in options}
        total = sum(probs.values())
        if total == 0:
            raise BackendError(f"none of {options} is among the server's top-20 next tokens")
        return {o: p / total for o, p in probs.items()}

    # A server keeps its own state between calls, out of our hands; one HTTP call per prompt is the best we can do.
    def logprobs_many(self, prompt: str, continuations: list[str]) -> list[list[float]]:
        return [self.logprobs(prompt, c) if c else [] for c in continuations]

    def option_probs_many(self, prompts: list[str], options: list[str]) -> list[dict[str, float]]:
        return [self.option_probs(p, options) for p in prompts]
