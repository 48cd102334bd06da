"""How the student sees a task: the Alpaca-style prompt, and CITING's (instruction, rubric, draft) revise prompt."""
from __future__ import annotations

from .. import prompts


def input_block(input_: str) -> str:
    return f"\n### Input:\n{input_}\n" if input_ else ""


def answer_prompt(instruction: str, input_: str = "") -> str:
    return prompts.render("student", instruction=instruction, input_block=input_block(input_))


def revise_prompt(instruction: str, input_: str, rubric: str, draft: str) -> str:
    return prompts.render(
        "student_revise", instruction=instruction, input_block=input_block(input_), rubric=rubric, draft=draft
    )


def record_prompt(rec: dict) -> str:
    return answer_prompt(rec["instruction"], rec.get("input", ""))
