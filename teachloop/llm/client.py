"""`LLM`: a backend behind the call cache, with bounded re-asks for replies that fail validation.

A reply to a request that carries a JSON schema is validated against that schema (`jsonschema`) before the
caller's parser sees it, so parsers check only what a schema cannot say.

Every stage creates one `LLM` per role (teacher, judge, student), writes `llm.stats.counts()` (requests, re-asks,
failures: functions of the inputs) to its counts file for the report, and `llm.stats` (which also says how many
requests the cache answered) to the run log.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import jsonschema

from .base import Backend, LLMConfig, Request, complete_each
from .cache import CallCache, request_key


class ParseError(ValueError):
    """A reply that does not have the required structure; the message says what is wrong with it."""


def extract_json(text: str) -> Any:
    """The first JSON object or array in `text` (models wrap it in prose or code fences).

    >>> extract_json('Sure: ```json\\n{"a": [1, 2]}\\n``` done')
    {'a': [1, 2]}
    >>> extract_json("no json here")
    Traceback (most recent call last):
    ...
    teachloop.llm.client.ParseError: no JSON object or list in reply 'no json here'
    """
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", text):
        try:
            return decoder.raw_decode(text[m.start():])[0]
        except json.JSONDecodeError:
            continue
    raise ParseError(f"no JSON object or list in reply {text[:80]!r}")


def validate_json(text: str, schema: dict) -> Any:
    """The JSON in `text` if it meets `schema`, else a ParseError with jsonschema's message (where and what).

    >>> validate_json('{"n": 3}', {"type": "object", "properties": {"n": {"type": "integer"}}})
    {'n': 3}
    >>> validate_json('{"n": "3"}', {"type": "object", "properties": {"n": {"type": "integer"}}})
    Traceback (most recent call last):
    ...
    teachloop.llm.client.ParseError: reply does not match the schema at $.n: '3' is not of type 'integer'
    """
    data = extract_json(text)
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as e:
        raise ParseError(f"reply does not match the schema at {e.json_path}: {e.message}"[:300]) from None
    return data


@dataclass
class Result:
    """A reply and its parse. `ok` is False when every attempt failed validation; `raw` keeps each attempt's text."""

    text: str
    parsed: Any = None
    ok: bool = True
    attempts: int = 1
    error: str = ""
    raw: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Stats:
    calls: int = 0  # requests answered by the backend
    hits: int = 0  # requests answered by the cache
    retried: int = 0  # results that needed more than one attempt to validate
    failed: int = 0  # results that never validated (recorded with raw text, never dropped)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def counts(self) -> dict:
        """The counts that depend only on the stage's inputs, for DVC-tracked outputs.

        How many requests the cache answered (`hits`) depends on what ran before, so it goes to the run log
        (`teachloop.runlog`), never into a DVC out whose hash must not change when a stage re-runs from cache.
        """
        return {"requests": self.calls + self.hits, "retried": self.retried, "failed": self.failed}


class LLM:
    def __init__(self, backend: Backend, cache: CallCache | None = None, name: str = "llm"):
        self.backend = backend
        self.cache = cache or CallCache()
        self.name = name
        self.stats = Stats()
        self._identity: dict | None = None

    def identity(self) -> dict:
        if self._identity is None:
            self._identity = self.backend.identity()
        return self._identity

    def _cached(self, op: str, request: dict, compute: Callable[[], Any]) -> Any:
        payload = {"op": op, "model": self.identity(), "request": request}
        key = request_key(payload)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.hits += 1
            return hit
        response = compute()
        self.stats.calls += 1
        self.cache.put(key, payload, response)
        return response

    def complete(self, req: Request) -> str:
        return self._cached("complete", dataclasses.asdict(req), lambda: self.backend.complete(req))

    def complete_samples(self, req: Request, n: int) -> list[str]:
        """n samples of `req` (sample k with seed `req.seed + k`) as one request and one cache entry.

        A backend that can decode them together over one evaluation of the prompt does (llama.cpp); others
        answer with n separate completions. Either way the set depends on the request alone.
        """
        native = getattr(self.backend, "complete_samples", None)
        compute = (lambda: native(req, n)) if native is not None else (lambda: complete_each(self.backend, req, n))
        return self._cached("complete_samples", {**dataclasses.asdict(req), "n": n}, compute)

    def generate(self, req: Request, parse: Callable[[str], Any] | None = None, attempts: int = 3) -> Result:
        """Complete `req`; if the reply fails validation, re-ask (new seed, some temperature) up to `attempts` times.

        Validation: the reply's JSON against `req.json_schema` when there is one (a grammar constrains decoding
        only on some backends, and a reply cut off by max_tokens is not valid JSON), then `parse`. Without either,
        the first reply is the result. Greedy decoding would repeat the same bad reply, so each re-ask changes the
        seed and samples at >= 0.7.
        """
        schema = req.json_schema

        def check(text: str) -> Any:
            data = validate_json(text, schema) if schema is not None else None
            return parse(text) if parse is not None else data

        raw: list[str] = []
        error = ""
        for attempt in range(attempts):
            if attempt:
                req = dataclasses.replace(req, seed=req.seed + attempt, temperature=max(req.temperature, 0.7))
            text = self.complete(req)
            raw.append(text)
            if parse is None and schema is None:
                return Result(text=text, raw=raw)
            try:
                parsed = check(text)
            except ParseError as e:
                error = str(e)
                continue
            if attempt:
                self.stats.retried += 1
            return Result(text=text, parsed=parsed, attempts=attempt + 1, raw=raw)
        self.stats.failed += 1
        return Result(text=raw[-1], ok=False, attempts=attempts, error=error, raw=raw)

    def logprobs(self, prompt: str, continuation: str) -> list[float]:
        request = {"prompt": prompt, "continuation": continuation}
        return self._cached("logprobs", request, lambda: self.backend.logprobs(prompt, continuation))

    def option_probs(self, prompt: str, options: list[str]) -> dict[str, float]:
        request = {"prompt": prompt, "options": list(options)}
        return self._cached("option_probs", request, lambda: self.backend.option_probs(prompt, options))

    def logprobs_many(self, prompt: str, continuations: list[str]) -> list[list[float]]:
        """`logprobs` of several continuations of one prompt as one request and one cache entry."""
        request = {"prompt": prompt, "continuations": list(continuations)}
        return self._cached("logprobs_many", request, lambda: self.backend.logprobs_many(prompt, list(continuations)))

    def option_probs_many(self, prompts: list[str], options: list[str]) -> list[dict[str, float]]:
        """`option_probs` of several prompts as one request and one cache entry (e.g. a judge's criteria)."""
        request = {"prompts": list(prompts), "options": list(options)}
        return self._cached("option_probs_many", request,
                            lambda: self.backend.option_probs_many(list(prompts), list(options)))


def make_backend(cfg: LLMConfig) -> Backend:
    """The backend named by `cfg.backend`; optional SDKs are imported only when chosen."""
    if cfg.backend == "llamacpp":
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(cfg)
    if cfg.backend == "openai":
        from .openai_backend import OpenAIBackend

        return OpenAIBackend(cfg)
    if cfg.backend == "fake":
        from .fake import FakeBackend

        return FakeBackend()
    raise ValueError(f"unknown backend {cfg.backend!r}")


def make_llm(cfg: LLMConfig, name: str, cache: CallCache | None = None) -> LLM:
    return LLM(make_backend(cfg), cache=cache, name=name)
