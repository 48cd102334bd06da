"""`python -m teachloop.llm.serve ARGS`: llama-cpp-python's OpenAI-compatible server (the same ARGS as `python -m
llama_cpp.server`), with its models opened under the project's extra-buffer rule (`llamacpp_open`), so a served
model cannot crash on an AMX CPU and answers exactly as the same model does in-process."""
from __future__ import annotations

from .llamacpp_open import extra_buffer_rule


def main() -> None:
    from llama_cpp.server.__main__ import main as serve

    with extra_buffer_rule():
        serve()


if __name__ == "__main__":
    main()
