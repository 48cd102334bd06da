"""Backend for any OpenAI-compatible server (a hosted API, vLLM, `python -m llama_cpp.server`, a proxy).

What is sent depends on the role's declared `server` flavour, never on a guess (`request_kwargs`):

    server     extras sent (extra_body)                 a JSON schema reaches the server as
    openai     none                                     chat: response_format json_schema; completions: not at all
    vllm       top_k, min_p, repetition_penalty         response_format json_schema (chat and completions)
    llamacpp   top_k, min_p, repeat_penalty, grammar    a GBNF grammar made from the schema (both llama.cpp servers)
    generic    none                                     not at all

top_k and min_p are the in-process llama.cpp sampler's (40, 0.05), so a sampled reply means the same thing on every
backend that takes them; what cannot be sent (the 64-token penalty window) is listed in docs/paper-scale.md.

Where a schema cannot be sent, replies are still validated against it and re-asked (`LLM.generate`); the backend
says so once on stderr when it is built. The API key is read from the env var *named* in params and is never
written to params, logs, DVC files or the cache key.

Transport faults (429 with its Retry-After, 5xx, timeouts, dropped connections, and a 200 whose body is not a
completion) are retried here, not by the SDK, with one bounded exponential backoff, so that each one is counted
(`on_event`, wired by `LLM` to its `Stats`). A call that still fails, or that the server refuses (4xx), is a
`BackendError` naming the URL.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .base import BackendError, LLMConfig, Request
from .llamacpp import MIN_P, TOP_K

BACKOFF_BASE_S = 0.5  # first wait; doubles per retry (with jitter) up to the cap
BACKOFF_CAP_S = 20.0  # no wait is longer, whatever Retry-After asks (a bounded stage beats an idle one)
MAX_STOPS = {"openai": 4}  # OpenAI accepts at most 4 stop sequences
# The in-process llama.cpp sampler's top-k and min-p (llama-cpp-python's completion defaults), sent where the server
# takes them, so a sample means the same thing there (docs/paper-scale.md lists what still differs).
SAMPLER_SENT = {"vllm": {"top_k": TOP_K, "min_p": MIN_P}, "llamacpp": {"top_k": TOP_K, "min_p": MIN_P}}
COMPLETIONS_TOP_LOGPROBS = {"openai": 5}  # OpenAI's completions API caps logprobs at 5; others allow 20
CHAT_TOP_LOGPROBS = 20  # chat top_logprobs: 0..20 on OpenAI


class MalformedReply(ValueError):
    """An HTTP 200 whose body is not a completion (truncated JSON, an HTML page from a proxy, no choices)."""


def schema_grammar(schema: dict) -> dict:
    """The extra_body field that constrains a llama.cpp server to `schema`: a GBNF grammar, which both
    `python -m llama_cpp.server` and the C++ llama-server accept on completions and chat (the C++ server's own
    `json_schema` field is ignored by the Python one). Without llama-cpp-python here, the C++ server's field."""
    try:
        from llama_cpp.llama_grammar import json_schema_to_gbnf
    except ImportError:
        return {"json_schema": schema}
    return {"grammar": json_schema_to_gbnf(json.dumps(schema))}


def served_adapter(cfg: LLMConfig) -> Path | None:
    """The adapter dir `student.llm.served` maps the model name `cfg.model` to, or None (the base, or a role
    that serves no adapter)."""
    dirs = [Path(d) for d, name in cfg.served.items() if name == cfg.model]
    return dirs[0] if dirs else None


def adapter_sha256(adapter_dir: str | Path) -> str:
    """One sha256 over the adapter's own files (adapter_config.json, its weights, its GGUF twin), names included:
    what a server loads for it, whichever form it reads. A missing dir is an error, not an empty hash. Read in
    full each time (once per stage: `LLM` keeps its identity), never keyed by mtime: a file rewritten within the
    file system's timestamp granularity keeps its mtime and size."""
    files = sorted(p for p in Path(adapter_dir).glob("adapter*") if p.is_file())
    if not files:
        raise BackendError(f"served adapter dir {adapter_dir} holds no adapter files (adapter_config.json, "
                           f"adapter_model.safetensors); train it first or fix student.llm.served")
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def response_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}


def request_kwargs(cfg: LLMConfig, req: Request) -> dict:
    """The SDK keyword arguments of a completion request (without `model`), for `cfg.api` and `cfg.server`.

    >>> cfg = LLMConfig(backend="openai", model="m", base_url="u", server="openai", api="completions")
    >>> sorted(request_kwargs(cfg, Request("hi", repeat_penalty=1.1, json_schema={"type": "object"})))
    ['max_tokens', 'prompt', 'seed', 'temperature', 'top_p']
    >>> request_kwargs(cfg.replace(server="llamacpp"), Request("hi", repeat_penalty=1.1))["extra_body"]
    {'top_k': 40, 'min_p': 0.05, 'repeat_penalty': 1.1}
    >>> request_kwargs(cfg.replace(server="vllm"), Request("hi"))["extra_body"]
    {'top_k': 40, 'min_p': 0.05}
    """
    kw: dict[str, Any] = dict(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                              seed=req.seed)
    if req.stop:
        cap = MAX_STOPS.get(cfg.server)
        if cap is not None and len(req.stop) > cap:
            raise BackendError(f"{cfg.base_url}: server {cfg.server!r} accepts at most {cap} stop sequences, "
                               f"got {list(req.stop)}; shorten the stop list in params")
        kw["stop"] = list(req.stop)
    if cfg.api == "chat":
        kw["messages"] = [{"role": "user", "content": req.prompt}]
    else:
        kw["prompt"] = req.prompt
    extra: dict[str, Any] = dict(SAMPLER_SENT.get(cfg.server, {}))
    if cfg.server == "llamacpp":  # always: llama_cpp.server's own default is 1.1, not 1.0
        extra["repeat_penalty"] = req.repeat_penalty
    elif cfg.server == "vllm" and req.repeat_penalty != 1.0:
        extra["repetition_penalty"] = req.repeat_penalty
    if req.json_schema is not None:
        if cfg.server == "llamacpp":
            extra.update(schema_grammar(req.json_schema))
        elif cfg.server == "vllm" or (cfg.server == "openai" and cfg.api == "chat"):
            if cfg.api == "chat":
                kw["response_format"] = response_format(req.json_schema)
            else:  # the SDK's completions signature has no response_format; vLLM's server reads it from the body
                extra["response_format"] = response_format(req.json_schema)
    if extra:
        kw["extra_body"] = extra
    return kw


def startup_notes(cfg: LLMConfig) -> list[str]:
    """What this flavour will not send, said once when the backend is built (never silently)."""
    notes = []
    if cfg.server == "generic" or (cfg.server == "openai" and cfg.api == "completions"):
        notes.append(f"server {cfg.server!r} with api {cfg.api!r}: JSON schemas are not sent to the server; "
                     f"replies are validated against them and re-asked when they fail")
    if cfg.server in ("openai", "generic"):
        notes.append(f"server {cfg.server!r}: repeat_penalty, top_k and min_p are not sent (not part of the OpenAI "
                     f"API): its samples follow the server's own sampler, not llama.cpp's")
    return notes


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
        # The SDK retries nothing: every retry happens in `_call`, where it is counted.
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=key or "none", timeout=cfg.timeout_s,
                                    max_retries=0)
        self.on_event: Callable[..., None] = lambda name, n=1: None  # LLM wires these to its Stats
        self.on_reply: Callable[[str, dict], None] = lambda model, usage: None
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        for note in startup_notes(cfg):
            print(f"note: {cfg.base_url} ({cfg.model}): {note}", file=sys.stderr)

    def identity(self) -> dict:
        ident = {"backend": "openai", "model": self.cfg.model, "base_url": self.cfg.base_url, "api": self.cfg.api,
                 "server": self.cfg.server}
        adapter = served_adapter(self.cfg)
        if adapter is not None:
            # A served adapter's name stays when it is retrained; its bytes do not.
            ident["adapter_sha256"] = adapter_sha256(adapter)
        if self.cfg.server in SAMPLER_SENT:
            ident["sampler"] = SAMPLER_SENT[self.cfg.server]  # replies made before these were sent differ
        return ident

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(BACKOFF_CAP_S, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        with self._rng_lock:
            jitter = self._rng.uniform(0.5, 1.0)  # spread concurrent retries apart
        return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt * jitter)

    def _call(self, fn, **kwargs):
        """`fn(model=..., **kwargs)` with every transport fault counted and retried up to `max_retries` times."""
        o = self._openai
        where = f"{self.cfg.base_url} ({self.cfg.model})"
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = None
            try:
                out = fn(model=self.cfg.model, **kwargs)
                if isinstance(out, str) or not getattr(out, "choices", None):
                    raise MalformedReply(f"the body is not a completion: {str(out)[:120]!r}")
                usage = getattr(out, "usage", None)
                self.on_reply(getattr(out, "model", "") or "", usage.model_dump() if usage is not None else {})
                return out
            except (MalformedReply, json.JSONDecodeError, o.APIResponseValidationError) as e:
                kind = "malformed"
                last = f"HTTP 200 with a malformed body: {e}"
            except o.APITimeoutError as e:
                kind, last = "timeouts", f"no reply within timeout_s={self.cfg.timeout_s}: {e}"
            except o.APIConnectionError as e:
                kind, last = "connection_errors", f"{type(e).__name__}: {e}"
            except o.RateLimitError as e:
                kind, last = "rate_limited", f"HTTP 429: {e}"
                retry_after = e.response.headers.get("retry-after")
            except o.APIStatusError as e:
                if e.status_code < 500 and e.status_code not in (408, 409):
                    self.on_event("transport_failures")
                    raise BackendError(f"{where} refused the request with HTTP {e.status_code}: {e}; "
                                       f"check model, api and server in params") from e
                kind, last = "server_errors", f"HTTP {e.status_code}: {e}"
            self.on_event(kind)
            if attempt == self.cfg.max_retries:
                break
            self.on_event("transport_retries")
            time.sleep(self._wait(attempt, retry_after))
        self.on_event("transport_failures")
        raise BackendError(f"{where} failed after {self.cfg.max_retries} retries: {last}; raise max_retries or "
                           f"timeout_s in params, or check the server")

    def complete(self, req: Request) -> str:
        kw = request_kwargs(self.cfg, req)
        if self.cfg.api == "chat":
            out = self._call(self.client.chat.completions.create, **kw)
            return out.choices[0].message.content or ""
        return self._call(self.client.completions.create, **kw).choices[0].text or ""

    def logprobs(self, prompt: str, continuation: str) -> list[float]:
        # Only the completions API echoes the prompt with its log-probabilities; chat has no such thing.
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

    def _top_next_tokens(self, prompt: str) -> dict[str, float]:
        """token -> logprob of the most likely next tokens: chat top_logprobs or completions logprobs."""
        if self.cfg.api == "chat":
            out = self._call(self.client.chat.completions.create, messages=[{"role": "user", "content": prompt}],
                             max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=CHAT_TOP_LOGPROBS)
            content = out.choices[0].logprobs.content if out.choices[0].logprobs is not None else None
            return {t.token: t.logprob for t in content[0].top_logprobs} if content else {}
        k = COMPLETIONS_TOP_LOGPROBS.get(self.cfg.server, 20)
        out = self._call(self.client.completions.create, prompt=prompt, max_tokens=1, logprobs=k, temperature=0.0)
        lp = out.choices[0].logprobs
        return dict((lp.top_logprobs or [{}])[0]) if lp is not None else {}

    def option_probs(self, prompt: str, options: list[str]) -> dict[str, float]:
        top = self._top_next_tokens(prompt)
        if not top:
            raise BackendError(f"{self.cfg.base_url} returns no top log-probabilities; option probabilities "
                               f"need them (api: chat uses top_logprobs, api: completions uses logprobs)")
        # A chat reply starts without the leading space a completion continues with: compare stripped tokens.
        probs = {o: sum(math.exp(v) for t, v in top.items() if t.strip() == o.strip()) for o in options}
        total = sum(probs.values())
        if total == 0:
            raise BackendError(f"none of {options} is among the server's top {len(top)} next tokens")
        return {o: p / total for o, p in probs.items()}

    # A server keeps its own state between calls, out of our hands; one HTTP call per prompt is the best we can do.
    def logprobs_many(self, prompt: str, continuations: list[str]) -> list[list[float]]:
        return [self.logprobs(prompt, c) if c else [] for c in continuations]

    def option_probs_many(self, prompts: list[str], options: list[str]) -> list[dict[str, float]]:
        return [self.option_probs(p, options) for p in prompts]
