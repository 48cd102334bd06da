"""The one contract every backend meets (teacher, judge and student generation all use it).

A backend turns a `Request` into text, and, where the model exposes them, gives token log-probabilities of a
continuation (`logprobs`) and a next-token distribution over a few option strings (`option_probs`). The `_many`
forms answer several of those as one request (one cache entry), which lets a backend reuse the shared prompt
prefix inside the request; each request must depend on nothing the backend ran before it.

`complete_samples` (N samples of one prompt as one request) is optional: `LLM` falls back to `complete_each`, N
separate completions, for a backend without it (the OpenAI-compatible and fake ones).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

from ..config import ConfigError, one_of


SERVERS = ("openai", "vllm", "llamacpp", "generic")


@dataclass
class Price:
    """What a hosted model charges, for `teachloop plan`'s cost column (never sent anywhere)."""

    input: float = 0.0  # $ per million prompt tokens
    output: float = 0.0  # $ per million completion tokens


@dataclass
class LLMConfig:
    """Where an LLM lives and how it is run. Secrets never live here: only the *name* of the env var."""

    backend: str = "llamacpp"  # llamacpp (in-process GGUF) | openai (any OpenAI-compatible server) | fake (tests)
    gguf: str = ""  # llamacpp: model file (params name it; the default pipeline uses the base stage's GGUF)
    lora: str = ""  # llamacpp: optional LoRA adapter in GGUF form (a trained student)
    # llamacpp: plain completion | chat (the GGUF's own chat template) | auto (chat when the GGUF carries a
    # template). A base model may carry one without being chat-tuned, which is why the default is plain.
    prompt_format: str = "plain"
    model: str = ""  # openai: model name on the server
    base_url: str = ""  # openai: e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # openai: env var holding the key (the key is never stored)
    api: str = "completions"  # openai: completions | chat
    # openai: what the server is, declared, never guessed. It decides which non-standard fields may be sent
    # (repeat_penalty, grammar: vllm and llamacpp only) and how a JSON schema reaches the server (openai/vllm:
    # response_format; llamacpp: a grammar; generic: not at all, replies are validated and re-asked).
    server: str = "openai"
    n_ctx: int = 2048  # context window in tokens
    n_threads: int = 2  # CPU threads for llama.cpp
    n_batch: int = 512  # prompt-processing batch in tokens
    # llamacpp: layers offloaded to a GPU (-1 = all; 0 = CPU only); != 0 needs a GPU build of llama-cpp-python
    n_gpu_layers: int = 0
    seed: int = 1  # >= 1: llama-cpp-python treats 0 as "random"
    timeout_s: float = 120.0  # openai: per-request timeout
    max_retries: int = 3  # openai: transport retries (429/5xx/timeouts/malformed 200s) with bounded backoff
    # Requests in flight at once (runtime, like n_threads): an API serves many; in-process llama.cpp is forced to 1.
    max_concurrency: int = 1
    # openai student only: adapter dir -> the name the server serves that adapter under (vLLM --lora-modules
    # NAME=DIR, llama.cpp server: a config-file model with lora_path); no adapter = `model`, the base.
    served: dict[str, str] = field(default_factory=dict)
    # Planning only (runtime, like n_threads): `teachloop plan` prices this role's tokens; null = no cost shown.
    price_per_mtok: Price | None = None

    def validate(self, where: str) -> None:
        one_of(self.backend, ("llamacpp", "openai", "fake"), f"{where}.backend")
        one_of(self.prompt_format, ("plain", "chat", "auto"), f"{where}.prompt_format")
        one_of(self.api, ("completions", "chat"), f"{where}.api")
        one_of(self.server, SERVERS, f"{where}.server")
        if self.max_concurrency < 1 or self.max_retries < 0:
            raise ConfigError(f"{where}: max_concurrency must be >= 1 and max_retries >= 0")
        if self.seed < 1:
            raise ConfigError(f"{where}.seed must be >= 1 (llama-cpp-python reads 0 as a random seed)")
        if self.backend == "llamacpp" and not self.gguf:
            raise ConfigError(f"{where}: backend llamacpp needs 'gguf' (a .gguf model file)")
        if self.backend == "openai" and not (self.model and self.base_url):
            raise ConfigError(f"{where}: backend openai needs 'model' and 'base_url'")
        names = list(self.served.values())
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}.served: two adapters share a served name ({sorted(names)}); each adapter "
                              f"needs its own name on the server")
        if self.backend == "llamacpp" and self.n_gpu_layers != 0:
            check_gpu_offload(f"{where}.n_gpu_layers")

    def can_score_text(self) -> bool:
        """Whether the backend returns log-probabilities of a given text (prompt echo with logprobs), which
        Tuna_p's probabilistic ranking needs: llama.cpp in process, vLLM and llama.cpp servers do; the OpenAI API
        does not (its completions have no echo with logprobs, chat none at all). A generic server is tried, and a
        reply without them is an error naming the fix."""
        return not (self.backend == "openai" and self.server == "openai")

    def replace(self, **changes) -> "LLMConfig":
        return dataclasses.replace(self, **changes)


def check_gpu_offload(where: str) -> None:
    """Refuse GPU layers on a llama.cpp built without GPU offload: it would run every layer on the CPU, with at
    most a line on stderr to say so."""
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        raise ConfigError(f"{where} asks for GPU offload, but the installed llama-cpp-python was built without it "
                          f"(llama_supports_gpu_offload() is false), so every layer would run on the CPU. Rebuild it "
                          f"with CUDA (needs the CUDA toolkit; the wheel is kept per flag set): export "
                          f"LLAMA_CMAKE_ARGS=\"-DGGML_CUDA=on\" && make setup; or set {where}: 0")


@dataclass(frozen=True)
class Request:
    """Everything that changes a completion; all of it goes into the cache key."""

    prompt: str
    max_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 1
    stop: tuple[str, ...] = ()
    repeat_penalty: float = 1.0  # >1 discourages loops, which small greedy models fall into
    json_schema: dict | None = field(default=None, hash=False)  # constrain the reply to this JSON schema


class BackendError(RuntimeError):
    """A backend could not serve a call (transport failure, missing capability); the message says what to do."""


class Backend(Protocol):
    def identity(self) -> dict:
        """Everything about the model that changes answers: backend, model hash or name, adapter, context."""

    def complete(self, req: Request) -> str: ...

    def logprobs(self, prompt: str, continuation: str) -> list[float]:
        """Log-probability of each token of `continuation` given `prompt`."""

    def option_probs(self, prompt: str, options: list[str]) -> dict[str, float]:
        """Next-token probability of each option's first token after `prompt`, renormalised over the options."""

    def logprobs_many(self, prompt: str, continuations: list[str]) -> list[list[float]]:
        """`logprobs` of each continuation after the same prompt, as one request (an empty continuation gives [])."""

    def option_probs_many(self, prompts: list[str], options: list[str]) -> list[dict[str, float]]:
        """`option_probs` of each prompt, as one request."""

    # Optional (see `complete_each`):
    # def complete_samples(self, req: Request, n: int) -> list[str]:
    #     """n samples of `req`, sample k with seed `req.seed + k`, as one request."""


def sample_seeds(req: Request, n: int) -> list[int]:
    """The seed of each of the n samples of a `complete_samples` request: consecutive from `req.seed`."""
    return [req.seed + k for k in range(n)]


def complete_each(backend, req: Request, n: int) -> list[str]:
    """`complete_samples` as n separate completions, for backends that cannot decode the samples together."""
    return [backend.complete(dataclasses.replace(req, seed=s)) for s in sample_seeds(req, n)]
