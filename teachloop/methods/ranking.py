"""Rank each instruction's candidates with the teacher, Tuna's two ways.

Probabilistic (Tuna_p): the teacher's length-normalised log-probability of each candidate given the task; needs a
backend that returns continuation log-probs (llama.cpp does; many servers do not). Contextual (Tuna_c): one prompt
shows all N candidates and the teacher answers a JSON ranking, constrained by a JSON schema where the backend can
and always validated against that schema and as a permutation; a reply that never validates is kept (raw text included) as a failure and
left out of training, never dropped silently. Candidates are shown in a seeded shuffled order against position bias.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from .. import prompts
from ..config import ConfigError
from ..llm import LLM, BackendError, LLMConfig, ParseError, Request
from ..llm.client import validate_json
from ..student.prompting import input_block

CONTEXTUAL_PROMPT = "rank_contextual"
SCORE_PROMPT = "score_teacher"


@dataclass
class ContextualConfig:
    max_tokens: int = 64  # the JSON ranking of 4 numbers is ~15 tokens; room for a little whitespace
    temperature: float = 0.0  # greedy first attempt; LLM.generate re-asks at >= 0.7 with new seeds
    attempts: int = 3  # tries per item before it is recorded as failed
    constrained: bool = True  # send a JSON schema (grammar-constrained decoding on llama.cpp / servers)
    shuffle: bool = True  # show candidates in a per-item seeded random order, mapped back afterwards
    seed: int = 5  # seed of the display order and of the first attempt
    max_chars: int = 1500  # each candidate cut to this many characters in the prompt (context budget)

    def validate(self, where: str) -> None:
        if self.attempts < 1 or self.max_tokens < 8 or self.max_chars < 1:
            raise ConfigError(f"{where}: attempts >= 1, max_tokens >= 8 and max_chars >= 1 are required")


# --- probabilistic ranking -------------------------------------------------------------------------------------


def check_can_score(teacher: LLMConfig, where: str = "teacher") -> None:
    """Refuse, before any call, a teacher that cannot return log-probabilities of a given text (see
    `LLMConfig.can_score_text`): every probabilistic request would fail at run time."""
    if not teacher.can_score_text():
        raise ConfigError(
            f"{where}: probabilistic ranking (Tuna_p, probabilistic_sets) scores candidates by the teacher's "
            f"log-probabilities of given text (completions with echo + logprobs), which server "
            f"{teacher.server!r} does not return. Serve the teacher with vLLM or a llama.cpp server (server: vllm "
            f"or llamacpp), use backend: llamacpp, or set probabilistic_sets: [] and let every method read "
            f"contextual rankings (each methods.<name>.data: its candidate set's contextual file)")


def score_prompt(item: dict) -> str:
    return prompts.render(SCORE_PROMPT, instruction=item["instruction"], input_block=input_block(item.get("input", "")))


def order_by_score(scores: list[float | None]) -> list[int]:
    """Candidate indices best..worst; a missing score (empty candidate) ranks last, ties keep the earlier first.

    >>> order_by_score([-1.5, None, -0.5, -1.5])
    [2, 0, 3, 1]
    """
    return sorted(range(len(scores)), key=lambda i: (scores[i] is None, -(scores[i] or 0.0), i))


def teacher_scores(llm: LLM, item: dict, length_penalty: float = 1.0) -> list[float | None]:
    """Per candidate: sum of the teacher's token log-probs / n_tokens ** length_penalty (None for an empty one).

    All non-empty candidates of the item are one request: the backend evaluates the shared prompt once, and the
    scores depend on nothing scored before (see `teachloop.llm.llamacpp`).
    """
    scored = [k for k, cand in enumerate(item["candidates"]) if cand]
    try:
        lps = llm.logprobs_many(score_prompt(item), [item["candidates"][k] for k in scored]) if scored else []
    except BackendError as e:
        raise BackendError(
            f"probabilistic ranking needs the teacher's log-probabilities of a given text (prompt echo with "
            f"logprobs); the {llm.identity().get('backend')!r} teacher failed on item {item.get('id')}: {e}. "
            f"If the backend lacks them, use a llamacpp teacher or a server that returns prompt logprobs, or use "
            f"contextual ranking."
        ) from e
    out: list[float | None] = [None] * len(item["candidates"])
    for k, lp in zip(scored, lps):
        out[k] = sum(lp) / len(lp) ** length_penalty if lp else None
    return out


def rank_probabilistic(llm: LLM, items: list[dict], length_penalty: float = 1.0) -> tuple[list[dict], dict]:
    """(items + `scores`, `ranking` best..worst as candidate indices, `ranker`, `prompt_version`; counts)."""
    def one(item: dict) -> dict:
        scores = teacher_scores(llm, item, length_penalty)
        return {**item, "ranker": "probabilistic", "prompt_version": prompts.version(SCORE_PROMPT), "ok": True,
                "scores": scores, "ranking": order_by_score(scores)}

    out = llm.map(one, items, desc="rank probabilistic")
    unscored = sum(s is None for it in out for s in it["scores"])
    return out, {"items": len(out), "ok": len(out), "failed": 0, "unscored_candidates": unscored}


# --- contextual ranking ----------------------------------------------------------------------------------------


def ranking_schema(n: int) -> dict:
    """JSON schema of the reply: {"ranking": [n numbers from 1..n]} (uniqueness is checked by the parser).

    Repeats are left to `parse_ranking` rather than `uniqueItems`, which llama.cpp's schema-to-grammar conversion
    cannot enforce and whose message would not say which numbers are missing.
    """
    item = {"type": "integer", "enum": list(range(1, n + 1))}
    ranking = {"type": "array", "items": item, "minItems": n, "maxItems": n}
    return {"type": "object", "properties": {"ranking": ranking}, "required": ["ranking"]}


def parse_ranking(text: str, n: int) -> list[int]:
    """The ranking in a reply as response numbers best..worst: the reply's JSON meets `ranking_schema(n)` and
    is a permutation of 1..n. Usable on raw text (unconstrained replies, `reparse_contextual`).

    >>> parse_ranking('Here you go: ```json\\n{"ranking": [3, 1, 2]}\\n```', 3)
    [3, 1, 2]
    >>> parse_ranking('{"ranking": [1, 1, 2]}', 3)
    Traceback (most recent call last):
    ...
    teachloop.llm.client.ParseError: ranking [1, 1, 2] is not a permutation of 1..3 (repeated: [1]; missing: [3])
    >>> parse_ranking('{"order": [1, 2]}', 2)
    Traceback (most recent call last):
    ...
    teachloop.llm.client.ParseError: reply does not match the schema at $: 'ranking' is a required property
    """
    numbers = validate_json(text, ranking_schema(n))["ranking"]
    if len(set(numbers)) != n:
        repeated = sorted({x for x in numbers if numbers.count(x) > 1})
        missing = sorted(set(range(1, n + 1)) - set(numbers))
        raise ParseError(f"ranking {numbers} is not a permutation of 1..{n} (repeated: {repeated}; missing: {missing})")
    return numbers


def display_order(item: dict, cfg: ContextualConfig) -> list[int]:
    """Which candidate index is shown as Response 1, 2, ...: a shuffle seeded by the config seed and item id."""
    order = list(range(len(item["candidates"])))
    if cfg.shuffle:
        seed = int(hashlib.sha256(f"{cfg.seed}:{item['id']}".encode()).hexdigest()[:8], 16)
        random.Random(seed).shuffle(order)
    return order


def contextual_prompt(item: dict, order: list[int], cfg: ContextualConfig) -> str:
    blocks = []
    for shown, idx in enumerate(order, 1):
        text = item["candidates"][idx][: cfg.max_chars].strip() or "(empty response)"
        blocks.append(f"### Response {shown}:\n{text}\n")
    return prompts.render(CONTEXTUAL_PROMPT, n=str(len(order)), instruction=item["instruction"],
                          input_block=input_block(item.get("input", "")), responses="\n".join(blocks))


def rank_one_contextual(llm: LLM, item: dict, cfg: ContextualConfig) -> dict:
    """The item + `ranking` (candidate indices best..worst, None on failure), `ok`, `raw`, `attempts`, `error`."""
    order = display_order(item, cfg)
    n = len(order)
    req = Request(prompt=contextual_prompt(item, order, cfg), max_tokens=cfg.max_tokens,
                  temperature=cfg.temperature, seed=cfg.seed,
                  json_schema=ranking_schema(n) if cfg.constrained else None)
    res = llm.generate(req, parse=lambda text: parse_ranking(text, n), attempts=cfg.attempts)
    ranking = [order[shown - 1] for shown in res.parsed] if res.ok else None
    return {**item, "ranker": "contextual", "prompt_version": prompts.version(CONTEXTUAL_PROMPT),
            "shown_order": order, "ranking": ranking, "ok": res.ok, "attempts": res.attempts,
            "error": res.error, "raw": res.raw}


def rank_contextual(llm: LLM, items: list[dict], cfg: ContextualConfig) -> tuple[list[dict], dict]:
    """(ranked items, counts {items, ok, retried, failed}); failed items stay in the list with ranking None."""
    out = llm.map(lambda item: rank_one_contextual(llm, item, cfg), items, desc="rank contextual")
    return out, {
        "items": len(out),
        "ok": sum(it["ok"] for it in out),
        "retried": sum(it["ok"] and it["attempts"] > 1 for it in out),
        "failed": sum(not it["ok"] for it in out),
    }


def reparse_contextual(items: list[dict]) -> list[dict]:
    """Re-read stored raw replies with the current parser (no LLM call): the last raw reply that validates wins."""
    out = []
    for it in items:
        ranking, error = None, it.get("error", "")
        for text in reversed(it["raw"]):
            try:
                ranking = [it["shown_order"][k - 1] for k in parse_ranking(text, len(it["shown_order"]))]
                break
            except ParseError as e:
                error = str(e)
        out.append({**it, "ranking": ranking, "ok": ranking is not None, "error": "" if ranking else error})
    return out
