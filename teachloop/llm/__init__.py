"""LLM backends behind one interface (llama.cpp in-process, any OpenAI-compatible server, a fake for tests)."""
from .base import BackendError, LLMConfig, Request
from .cache import CallCache
from .client import LLM, ParseError, Result, Stats, make_backend, make_llm

__all__ = ["BackendError", "LLMConfig", "Request", "CallCache", "LLM", "ParseError", "Result", "Stats",
           "make_backend", "make_llm"]
