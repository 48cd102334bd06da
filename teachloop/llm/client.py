"""`LLM`: a backend behind the call cache, with bounded re-asks for replies that fail validation.

A reply to a request that carries a JSON schema is validated against that schema (`jsonschema`) before the
caller's parser sees it, so parsers check only what a schema cannot say.

Every stage creates one `LLM` per role (teacher, judge, student), runs its calls through `LLM.map` (up to the
role's `max_concurrency` in flight, results in input order), writes its counts file with `counts_file` (requests,
re-asks, failures, and transport faults accumulated across resumed invocations) for the report, and `llm.stats`
(which also says how many requests the cache answered, and the token usage) to the run log.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import jsonschema

from .base import Backend, LLMConfig, Request, complete_each
from .cache import CallCache, request_key

T = TypeVar("T")
R = TypeVar("R")


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


# Counts that depend on the run (a timeout here, a 429 there), not on the inputs: a resumed stage adds its own to
# those already in the counts file, so the file holds every fault of every invocation that made the outputs.
ACCUMULATED = ("transport_retries", "timeouts", "rate_limited", "server_errors", "malformed", "connection_errors",
               "transport_failures")


@dataclass
class Stats:
    """What one role's calls cost and met. Thread-safe: `LLM.map` updates it from several threads (`add`)."""

    calls: int = 0  # requests answered by the backend
    hits: int = 0  # requests answered by the cache
    retried: int = 0  # results that needed more than one attempt to validate
    failed: int = 0  # results that never validated (recorded with raw text, never dropped)
    reasks: int = 0  # validation re-asks (attempts after the first), whether they validated or not
    transport_retries: int = 0  # requests sent again after one of the transport faults below
    timeouts: int = 0  # no reply within timeout_s
    rate_limited: int = 0  # HTTP 429
    server_errors: int = 0  # HTTP 5xx (and 408/409)
    malformed: int = 0  # HTTP 200 whose body is not a completion (truncated, an HTML page)
    connection_errors: int = 0  # refused or dropped connections
    transport_failures: int = 0  # calls that failed for good (after every retry, or refused with a 4xx)
    prompt_tokens: int = 0  # as the server reported them (run log only)
    completion_tokens: int = 0
    models: list[str] = field(default_factory=list)  # the server's resolved model names (a snapshot behind an alias)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def reply(self, model: str, usage: dict) -> None:
        """One server reply: its resolved model name and token usage."""
        with self._lock:
            if model and model not in self.models:
                self.models.append(model)
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)

    def as_dict(self) -> dict:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")} \
                | {"models": sorted(self.models)}

    def counts(self, prior: dict | None = None) -> dict:
        """The counts for the stage's DVC-tracked counts file; `prior` is that file as the stage found it.

        Requests, re-asks and failures are functions of the inputs (a re-run replays re-asks from the cache), so
        they are this run's. Transport faults depend on the run, so they are added to `prior`'s: with no call made,
        the file comes out unchanged. How many requests the cache answered (`hits`) depends on what ran before, so
        it goes to the run log (`teachloop.runlog`), never into a DVC out.
        """
        prior = prior or {}
        d = self.as_dict()
        out = {"requests": d["calls"] + d["hits"], "retried": d["retried"], "failed": d["failed"],
               "reasks": d["reasks"]}
        out.update({k: int(prior.get(k, 0)) + d[k] for k in ACCUMULATED})
        models = sorted(set(prior.get("models", [])) | set(d["models"]))
        if models:
            out["models"] = models
        return out


@contextmanager
def counts_file(path: str | Path, llm: "LLM") -> Iterator[dict]:
    """Write the stage's counts file when the block ends, and also when it fails (a fault that stopped the stage
    is counted); the stage puts its own counts in the yielded dict. The file found at the start is the prior
    whose transport faults this run adds to (`Stats.counts`)."""
    path = Path(path)
    try:
        prior = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except json.JSONDecodeError:
        prior = {}  # a torn file from a kill mid-write: start over rather than stop the stage
    extra: dict = {}
    try:
        yield extra
    finally:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**llm.stats.counts(prior), **extra}, ensure_ascii=False, indent=2, sort_keys=True) + "\n",
                        encoding="utf-8")


class LLM:
    def __init__(self, backend: Backend, cache: CallCache | None = None, name: str = "llm", max_concurrency: int = 1):
        self.backend = backend
        self.cache = cache or CallCache()
        self.name = name
        self.stats = Stats()
        self.max_concurrency = max_concurrency
        self._identity: dict | None = None
        # A backend that meets transport faults or learns the served model reports them into our Stats.
        if hasattr(backend, "on_event"):
            backend.on_event = self.stats.add
        if hasattr(backend, "on_reply"):
            backend.on_reply = self.stats.reply

    def map(self, fn: Callable[[T], R], items: list[T], desc: str | None = None) -> list[R]:
        """`[fn(item) for item in items]` with up to `max_concurrency` calls in flight; results in input order.

        Each call is cached the moment it completes, so a kill loses only the calls in flight. The first failure
        cancels what has not started and is raised once the calls in flight have ended. `desc` shows a progress bar.
        """
        from tqdm import tqdm

        items = list(items)
        with tqdm(total=len(items), desc=desc, disable=desc is None) as bar:
            if self.max_concurrency <= 1 or len(items) <= 1:
                out = []
                for item in items:
                    out.append(fn(item))
                    bar.update()
                return out
            failed = []
            with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix=self.name) as pool:
                futures = [pool.submit(fn, item) for item in items]
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    bar.update(len(done))
                    failed = [f for f in done if f.exception() is not None]
                    if failed:
                        for f in pending:
                            f.cancel()
                        break
            if failed:  # the pool has let the calls in flight end; a cancelled call is not the failure to report
                raise min(failed, key=futures.index).exception()
            return [f.result() for f in futures]

    def identity(self) -> dict:
        if self._identity is None:
            self._identity = self.backend.identity()
        return self._identity

    def _cached(self, op: str, request: dict, compute: Callable[[], Any]) -> Any:
        payload = {"op": op, "model": self.identity(), "request": request}
        key = request_key(payload)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.add("hits")
            return hit
        response = compute()
        self.stats.add("calls")
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
                self.stats.add("reasks")
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
                self.stats.add("retried")
            return Result(text=text, parsed=parsed, attempts=attempt + 1, raw=raw)
        self.stats.add("failed")
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
    """The role's LLM; in-process llama.cpp runs one call at a time whatever max_concurrency says."""
    concurrency = cfg.max_concurrency
    if cfg.backend == "llamacpp" and concurrency > 1:
        print(f"note: {name}: in-process llama.cpp runs one call at a time; max_concurrency "
              f"{concurrency} is used as 1", file=sys.stderr)
        concurrency = 1
    return LLM(make_backend(cfg), cache=cache, name=name, max_concurrency=concurrency)
