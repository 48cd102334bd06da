"""Pairwise LLM judging of two answer sets: both orders, explicit ties, verdicts un-swapped before counting.

`judge_answers(llm, cfg, a_rows, b_rows, a_name, b_name)` returns one record per (instruction, criterion) holding
the raw judge output of both orders beside the parsed verdicts, so `reparse(records, cfg)` can redo every verdict
without a call. Run it through `python stages/judge.py` (see that script for the CLI).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import prompts
from .config import ConfigError, one_of
from .llm import LLM, LLMConfig, ParseError, Request

PROMPT = "judge_pairwise"
OPTIONS = {"A": " A", "B": " B", "C": " C"}  # next-token options; C means a tie
# Editing a description changes the judge prompt: bump the version line of judge_pairwise.txt with it.
CRITERIA = {
    "articulate": "An articulate response is clear, well organised and fluent, and says what it means without "
                  "padding or confusion.",
    "in_depth": "An in-depth response goes beyond the surface: it explains why and how, and gives reasoning, "
                "detail or examples where they help.",
    "comprehensive": "A comprehensive response covers every part of the task and the points a reader would "
                     "expect, without leaving out anything important.",
}
# Un-swapping: a positional verdict ("A" = first shown) read from the method of interest's side.
_OUTCOME = {"ab": {"A": "win", "B": "loss", "C": "tie"}, "ba": {"A": "loss", "B": "win", "C": "tie"}}


@dataclass
class JudgeConfig:
    """params.yaml `judge`: how to compare two answer sets; `llm` says which model judges."""

    criteria: list[str] = field(default_factory=lambda: list(CRITERIA))  # each a key of judge.CRITERIA
    mode: str = "probs"  # probs: next-token P(" A"/" B"/" C") (llama.cpp) | generate: parse [[A]]/[[B]]/[[C]]
    tie_margin: float = 0.05  # probs: |pA - pB| below this is a tie (a coin-flip preference is no preference)
    max_answer_chars: int = 1200  # longer answers are clipped so both fit the judge's context
    max_tokens: int = 256  # generate: reply budget (room for a short reason before the verdict)
    temperature: float = 0.0  # generate: 0 = greedy; re-asks after a malformed reply sample at >= 0.7
    attempts: int = 3  # generate: asks per judgement before it is recorded as failed
    seed: int = 1  # generate: request seed (part of the cache key)
    max_per_set: int = 0  # judge at most this many instructions per eval set (0 = all; >0 for smoke runs)
    llm: LLMConfig = field(default_factory=LLMConfig)

    def validate(self, where: str) -> None:
        one_of(self.mode, ("probs", "generate"), f"{where}.mode")
        if not self.criteria:
            raise ConfigError(f"{where}.criteria is empty: name at least one of {list(CRITERIA)}")
        for c in self.criteria:
            one_of(c, tuple(CRITERIA), f"{where}.criteria")
        if not 0.0 <= self.tie_margin < 1.0:
            raise ConfigError(f"{where}.tie_margin must be in [0, 1), got {self.tie_margin}")
        if self.max_answer_chars < 1 or self.attempts < 1 or self.max_tokens < 1 or self.max_per_set < 0:
            raise ConfigError(f"{where}: max_answer_chars, attempts and max_tokens must be >= 1, max_per_set >= 0")


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n].rstrip() + " [...]"


def _fill(template: str, fields: dict[str, str]) -> str:
    # One pass over the template: an answer that happens to contain "{criterion}" is left as written, whereas
    # replacing field after field would substitute inside text already filled in.
    return re.sub(r"\{(\w+)\}", lambda m: fields.get(m.group(1), m.group(0)), template)


def build_prompt(instruction: str, input_: str, first: str, second: str, criterion: str, max_chars: int) -> str:
    """The judge prompt for one order and one criterion.

    The criterion question comes last, so the three criteria of one order share every token before it and
    llama.cpp, which gets them as one request, re-evaluates only the question. Trailing whitespace is cut because the options carry their own space.
    """
    fields = {
        "instruction": instruction.strip(),
        "input_block": f"\n### Input:\n{input_.strip()}\n" if input_.strip() else "",
        "answer_a": _clip(first.strip(), max_chars),
        "answer_b": _clip(second.strip(), max_chars),
        "criterion": criterion.replace("_", "-"),
        "criterion_description": CRITERIA[criterion],
    }
    return _fill(prompts.load(PROMPT), fields).rstrip()


def parse_verdict(text: str) -> str:
    """The positional verdict ("A", "B" or "C") in a generate-mode reply.

    >>> parse_verdict("B is clearer. [[B]]")
    'B'
    >>> parse_verdict(" C")
    'C'
    >>> parse_verdict("[[A]] ... on reflection [[B]]")
    Traceback (most recent call last):
    ...
    teachloop.llm.client.ParseError: conflicting verdicts ['A', 'B'] in reply
    >>> parse_verdict("Both are fine.")
    Traceback (most recent call last):
    ...
    teachloop.llm.client.ParseError: no [[A]], [[B]] or [[C]] in reply: 'Both are fine.'
    """
    marks = sorted(set(re.findall(r"\[\[\s*([ABC])\s*\]\]", text)))
    if len(marks) == 1:
        return marks[0]
    if marks:
        raise ParseError(f"conflicting verdicts {marks} in reply")
    # A bare letter right after "Verdict:" is what the prompt's last line invites; accept it too.
    bare = re.match(r"\s*\(?([ABC])\)?(?![A-Za-z])", text)
    if bare:
        return bare.group(1)
    raise ParseError(f"no [[A]], [[B]] or [[C]] in reply: {text[:80]!r}")


def probs_verdict(probs: dict[str, float], tie_margin: float) -> str:
    """Positional verdict from next-token probabilities: a tie when C leads or A and B are within the margin.

    >>> probs_verdict({" A": 0.6, " B": 0.3, " C": 0.1}, 0.05)
    'A'
    >>> probs_verdict({" A": 0.44, " B": 0.42, " C": 0.14}, 0.05)
    'C'
    """
    pa, pb, pc = (probs.get(OPTIONS[k], 0.0) for k in "ABC")
    if pc >= max(pa, pb) or abs(pa - pb) < tie_margin:
        return "C"
    return "A" if pa > pb else "B"


def _order_result(order: str, position: str | None, raw, attempts: list[str] | None, error: str = "") -> dict:
    """One order's judgement, stored raw and un-swapped to the method of interest's point of view."""
    out = {
        "order": order,  # ab: A's answer shown first; ba: B's answer shown first
        "raw": raw,  # probs: {" A": p, " B": p, " C": p}; generate: the reply that was parsed (or the last one)
        "position_verdict": position,  # as the judge saw it: A = first shown, B = second, C = tie
        "verdict": _OUTCOME[order][position] if position else None,
        "first_chosen": position == "A" if position else None,  # did the judge pick whatever came first?
        "ok": position is not None,
        "error": error,
    }
    if attempts is not None:
        out["attempts"] = attempts  # every generate-mode reply, so a re-parse can look at all of them
    if isinstance(raw, dict):
        pa, pb = raw.get(OPTIONS["A"], 0.0), raw.get(OPTIONS["B"], 0.0)
        out["preference"] = pa - pb if order == "ab" else pb - pa  # un-swapped pA - pB: > 0 favours A
    return out


def combine(orders: list[dict]) -> dict:
    """The (id, criterion) verdict from both orders: agreement keeps the verdict, disagreement is a tie.

    A failed order leaves the verdict None with `failed` True: the record stays, the rates leave it out.
    """
    verdicts = [o["verdict"] for o in orders]
    failed = any(v is None for v in verdicts)
    verdict = None if failed else (verdicts[0] if len(set(verdicts)) == 1 else "tie")
    prefs = [o["preference"] for o in orders if "preference" in o]
    preference = sum(prefs) / len(prefs) if prefs and not failed else None
    return {"verdict": verdict, "preference": preference, "failed": failed}


def _judge_order(llm: LLM, cfg: JudgeConfig, prompts_by_criterion: dict[str, str], order: str) -> dict[str, dict]:
    """criterion -> this order's judgement. In probs mode all criteria are one request: the backend evaluates
    the shared prompt once, and the verdicts depend on nothing judged before (see `teachloop.llm.llamacpp`)."""
    if cfg.mode == "probs":
        criteria = list(prompts_by_criterion)
        many = llm.option_probs_many([prompts_by_criterion[c] for c in criteria], list(OPTIONS.values()))
        return {c: _order_result(order, probs_verdict(probs, cfg.tie_margin), probs, None)
                for c, probs in zip(criteria, many)}
    out = {}
    for criterion, prompt in prompts_by_criterion.items():
        req = Request(prompt=prompt, max_tokens=cfg.max_tokens, temperature=cfg.temperature, seed=cfg.seed)
        res = llm.generate(req, parse=parse_verdict, attempts=cfg.attempts)
        out[criterion] = _order_result(order, res.parsed if res.ok else None, res.text, res.raw, res.error)
    return out


def pair_rows(a_rows: list[dict], b_rows: list[dict], max_per_set: int = 0) -> list[tuple[dict, dict]]:
    """(A row, B row) for every (eval_set, id) answered by both, in A's order; at most `max_per_set` per set."""
    b_index = {(r["eval_set"], r["id"]): r for r in b_rows}
    pairs, per_set = [], {}
    for a in a_rows:
        b = b_index.get((a["eval_set"], a["id"]))
        if b is None or (max_per_set and per_set.get(a["eval_set"], 0) >= max_per_set):
            continue
        per_set[a["eval_set"]] = per_set.get(a["eval_set"], 0) + 1
        pairs.append((a, b))
    return pairs


def judge_answers(llm: LLM, cfg: JudgeConfig, a_rows: list[dict], b_rows: list[dict], a_name: str, b_name: str,
                  progress: bool = True) -> list[dict]:
    """One record per (instruction, criterion) for comparison `{a_name}_vs_{b_name}`, from A's point of view."""
    records = []
    pairs = pair_rows(a_rows, b_rows, cfg.max_per_set)

    def both_orders(pair: tuple[dict, dict]) -> dict[str, dict]:
        a, b = pair
        shown = {"ab": (a["answer"], b["answer"]), "ba": (b["answer"], a["answer"])}
        return {order: _judge_order(llm, cfg, {
            c: build_prompt(a["instruction"], a.get("input", ""), first, second, c, cfg.max_answer_chars)
            for c in cfg.criteria}, order) for order, (first, second) in shown.items()}

    judged = llm.map(both_orders, pairs, desc=f"judge {a_name} vs {b_name}" if progress else None)
    for (a, b), by_order in zip(pairs, judged):
        instruction, input_ = a["instruction"], a.get("input", "")
        for criterion in cfg.criteria:
            orders = [by_order["ab"][criterion], by_order["ba"][criterion]]
            records.append({
                "comparison": f"{a_name}_vs_{b_name}", "a_model": a_name, "b_model": b_name,
                "id": a["id"], "eval_set": a["eval_set"], "criterion": criterion,
                "instruction": instruction, "input": input_, "answer_a": a["answer"], "answer_b": b["answer"],
                "mode": cfg.mode, "prompt_version": prompts.version(PROMPT),
                "tie_margin": cfg.tie_margin if cfg.mode == "probs" else None,
                "orders": orders, **combine(orders),
            })
    return records


def reparse(records: list[dict], cfg: JudgeConfig) -> list[dict]:
    """Records with every verdict recomputed from the stored raw output under `cfg` (tie_margin, parser); no calls.

    Generate mode takes the first stored attempt that parses, as the judge run itself would have.
    """
    out = []
    for rec in records:
        orders = []
        for o in rec["orders"]:
            if rec["mode"] == "probs":
                orders.append(_order_result(o["order"], probs_verdict(o["raw"], cfg.tie_margin), o["raw"], None))
                continue
            attempts = o.get("attempts") or [o["raw"]]
            position, text, error = None, attempts[-1], ""
            for t in attempts:
                try:
                    position, text = parse_verdict(t), t
                    break
                except ParseError as e:
                    error = str(e)
            orders.append(_order_result(o["order"], position, text, attempts, "" if position else error))
        tie_margin = cfg.tie_margin if rec["mode"] == "probs" else None
        out.append({**rec, "orders": orders, "tie_margin": tie_margin, **combine(orders)})
    return out
