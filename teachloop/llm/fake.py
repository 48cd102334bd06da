"""A deterministic stand-in backend for unit tests only: canned replies, counted calls, no model."""
from __future__ import annotations

import hashlib
import threading
from typing import Callable

from .base import Request


class FakeBackend:
    """Replies with `responder(prompt)` (default: an echo of the prompt's last line); counts every call.

    The grouped operations answer item by item through the single ones, so `calls` counts prompts (and
    continuations), and a subclass that scripts `logprobs` or `option_probs` scripts the grouped forms too.
    """

    def __init__(self, responder: Callable[[str], str] | None = None, name: str = "fake"):
        self.responder = responder or (lambda prompt: "echo: " + prompt.strip().splitlines()[-1][:80])
        self.name = name
        self.calls = 0
        self._lock = threading.Lock()  # LLM.map may call from several threads

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def identity(self) -> dict:
        return {"backend": "fake", "name": self.name}

    def complete(self, req: Request) -> str:
        self._count()
        return self.responder(req.prompt)

    def logprobs(self, prompt: str, continuation: str) -> list[float]:
        # Deterministic pseudo-scores: longer, prompt-overlapping continuations score higher.
        self._count()
        words = continuation.split() or [""]
        overlap = sum(w in prompt for w in words) / len(words)
        jitter = int(hashlib.sha256(continuation.encode()).hexdigest()[:4], 16) / 65535 / 10
        return [-2.0 + overlap + jitter] * len(words)

    def option_probs(self, prompt: str, options: list[str]) -> dict[str, float]:
        self._count()
        text = self.responder(prompt)
        hits = {o: float(o in text) + 1e-3 for o in options}
        total = sum(hits.values())
        return {o: p / total for o, p in hits.items()}

    def logprobs_many(self, prompt: str, continuations: list[str]) -> list[list[float]]:
        return [self.logprobs(prompt, c) if c else [] for c in continuations]

    def option_probs_many(self, prompts: list[str], options: list[str]) -> list[dict[str, float]]:
        return [self.option_probs(p, options) for p in prompts]
