"""CITING rounds: sample instructions, the student answers, the teacher revises by the rubric, the student learns
to turn (instruction, rubric, own answer) into the revision; at inference it drafts, then revises with a rubric.

Unit: {"prompt": revise prompt (instruction, rubric, own answer), "response": revision}; the loss is SFT's.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .. import prompts
from ..llm import LLM, ParseError, Request
from ..student.prompting import input_block, record_prompt, revise_prompt
from . import sft
from ..student.logprobs import ROW_TOKENS
from .common import LossFn, is_empty


@dataclass
class RoundConfig:
    sample_size: int = 24  # instructions per round (the paper samples 1000)
    resample: bool = False  # False: the same sample every round (the paper); True: a fresh sample per round
    seed: int = 5
    revise_max_tokens: int = 128  # teacher revision budget (tokens)
    attempts: int = 2  # teacher tries per revision before it is recorded as failed
    # The teacher's own stops, never the student's: a revision may use "###" headings; it ends where a teacher
    # that runs on would start the prompt's next section (<= 4 entries: the OpenAI API's limit).
    # A privileged teacher: shown the dataset's reference answer while revising (small teachers need the help).
    reference_hint: bool = False
    revise_stop: list[str] = field(default_factory=lambda: ["\n### Task:", "\n### Rubric:", "\n### Student's reply:"])


def sample_round(records: list[dict], cfg: RoundConfig, round_no: int) -> list[dict]:
    """The round's instructions: one fixed sample, or a per-round one when `resample` is set."""
    seed = cfg.seed + (round_no if cfg.resample else 0)
    ordered = sorted(records, key=lambda r: r["id"])
    return random.Random(seed).sample(ordered, min(cfg.sample_size, len(ordered)))


def parse_revision(text: str) -> str:
    """A usable revision is non-empty text.

    >>> parse_revision("  Better answer.  ")
    'Better answer.'
    >>> parse_revision(" ")
    Traceback (most recent call last):
    ...
    teachloop.llm.client.ParseError: empty revision
    """
    text = text.strip()
    if not text:
        raise ParseError("empty revision")
    return text


def check_not_copied(revision: str, rubric: str) -> str:
    """`revision` unless it merely repeats the rubric or the prompt's worked example (small teachers do both).

    >>> check_not_copied("Paris is the capital.", "1. Correct. 2. Clear.")
    'Paris is the capital.'
    >>> check_not_copied("1. Correct. 2. Clear.", "1. Correct. 2. Clear.")
    Traceback (most recent call last):
    ...
    teachloop.llm.client.ParseError: revision repeats the rubric or the prompt's example
    >>> check_not_copied("2. Is correct. 3. Is clear and brief.", "1. Answers it. 2. Is correct. 3. Is clear and brief.")
    Traceback (most recent call last):
    ...
    teachloop.llm.client.ParseError: revision repeats the rubric or the prompt's example
    """
    example = prompts.load("teacher_revise").split("### Task:\n{instruction}")[0]
    if prompts.repeats(revision, [rubric, example]):
        raise ParseError("revision repeats the rubric or the prompt's example")
    return revision


def teacher_prompt(rec: dict, rubric: str, answer: str, reference_hint: bool = False) -> str:
    """The revision prompt; with `reference_hint` it also shows the record's reference answer (`output`)."""
    hint = f"### Reference answer (for you only, do not mention it):\n{rec['output']}\n\n" if reference_hint else ""
    return prompts.render("teacher_revise", instruction=rec["instruction"], input_block=input_block(rec.get("input", "")),
                          rubric=rubric, reference_block=hint, answer=answer or "(no answer)")


def revise(teacher: LLM, rec: dict, rubric: str, answer: str, cfg: RoundConfig) -> dict:
    req = Request(teacher_prompt(rec, rubric, answer, cfg.reference_hint), max_tokens=cfg.revise_max_tokens, stop=tuple(cfg.revise_stop),
                  repeat_penalty=1.1, seed=cfg.seed)
    res = teacher.generate(req, lambda t: check_not_copied(parse_revision(t), rubric), attempts=cfg.attempts)
    return {"revision": res.parsed if res.ok else "", "ok": res.ok, "attempts": res.attempts, "raw": res.raw,
            "error": res.error, "prompt_version": prompts.version("teacher_revise")}


def training_unit(rec: dict, rubric: str, answer: str, revision: str) -> dict:
    """CITING's example: (instruction, rubric, the student's own answer) -> the teacher's revision."""
    return {"prompt": revise_prompt(rec["instruction"], rec.get("input", ""), rubric, answer), "response": revision}


def build_units(rows: list[dict], categories: list[dict]) -> tuple[list[dict], dict]:
    """The round's training units from its revisions; `categories[row["rubric_id"]]["rubric"]` is the rubric shown.

    A failed revision is recorded with an empty text; it and any other empty revision are skipped and counted, so
    the student is never taught to answer with nothing.
    """
    units = [training_unit(r, categories[r["rubric_id"]]["rubric"], r["answer"], r["revision"])
             for r in rows if r["ok"] and not is_empty(r["revision"])]
    failed = sum(not r["ok"] for r in rows)
    return units, {"units": len(units), "skipped_failed_revisions": failed,
                   "skipped_empty_revisions": len(rows) - len(units) - failed}


def make_loss(tokenizer, cfg=None, max_len: int = 384, row_tokens: int = ROW_TOKENS) -> LossFn:
    """CITING learns its revisions with plain SFT."""
    return sft.make_loss(tokenizer, cfg, max_len, row_tokens)


def answer_with_rubric(student: LLM, rec: dict, rubric: str, decode, revisions: int) -> dict:
    """Draft an answer, then revise it `revisions` times with the retrieved rubric, as the student was taught."""
    draft = student.complete(decode.request(record_prompt(rec))).strip()
    steps = [draft]
    for _ in range(revisions):
        prompt = revise_prompt(rec["instruction"], rec.get("input", ""), rubric, steps[-1])
        steps.append(student.complete(decode.request(prompt)).strip() or steps[-1])
    return {"answer": steps[-1], "drafts": steps[:-1]}
