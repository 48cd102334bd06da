"""The LLM roles of a run (teacher, judge, student) built from their params sections.

The student generates through llama.cpp with its LoRA adapter in GGUF form, or through an OpenAI-compatible server
that serves each adapter under a name (`student.llm.served`); its decoding settings live in `student.decode` so
every method's answers are produced the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, build, load_section
from .llm import LLM, LLMConfig, Request, make_llm


@dataclass
class DecodeConfig:
    max_tokens: int = 96  # answer length budget in tokens
    temperature: float = 0.0  # greedy: answers are reproducible and comparable across methods
    repeat_penalty: float = 1.1  # a 270M model loops without it
    stop: list[str] = field(default_factory=lambda: ["###", "\n\n\n"])  # the next prompt header ends an answer
    seed: int = 1

    def request(self, prompt: str, **changes) -> Request:
        fields = dict(max_tokens=self.max_tokens, temperature=self.temperature, repeat_penalty=self.repeat_penalty,
                      stop=tuple(self.stop), seed=self.seed)
        fields.update(changes)
        return Request(prompt, **fields)


def teacher(params: dict) -> LLM:
    return make_llm(load_section(params, "teacher", LLMConfig), "teacher")


def is_adapter_dir(path: str | Path) -> bool:
    """A PEFT adapter dir, as opposed to a plain HF model dir (the base stage's twin = the untuned student)."""
    return (Path(path) / "adapter_config.json").exists()


def served_name(cfg: LLMConfig, adapter_dir: str | Path | None) -> str:
    """The model name a server serves `adapter_dir` under (`student.llm.served`); no adapter = the base, `model`."""
    if not adapter_dir:
        return cfg.model
    want = Path(adapter_dir).resolve()
    for directory, name in cfg.served.items():
        if Path(directory).resolve() == want:
            return name
    raise ConfigError(f"student.llm.served names no served model for adapter {adapter_dir}: the openai student "
                      f"generates through a server that serves each adapter by name; add `{adapter_dir}: NAME` "
                      f"under student.llm.served (known: {sorted(cfg.served) or 'none'})")


def student_llm(params: dict, adapter_dir: str | Path | None) -> LLM:
    """The student as an LLM: base GGUF + the adapter's GGUF twin (no adapter = the base model), or, with
    backend openai, the server's model named for the adapter in `student.llm.served`."""
    cfg = build(LLMConfig, params["student"]["llm"], "student.llm")
    if cfg.backend == "openai":
        return make_llm(cfg.replace(model=served_name(cfg, adapter_dir)), "student")
    if cfg.lora:
        # Each stage names the adapter it generates with; a params value would be silently replaced.
        raise ConfigError("student.llm.lora is set by each stage from its adapter dir (dvc.yaml); "
                          "remove it from params.yaml")
    if adapter_dir:
        cfg = cfg.replace(lora=str(Path(adapter_dir) / "adapter.gguf"))
    return make_llm(cfg, "student")


def decode(params: dict) -> DecodeConfig:
    return load_section(params, "student.decode", DecodeConfig)
