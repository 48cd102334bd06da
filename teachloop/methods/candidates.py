"""Sample N candidate answers per instruction (from the student through llama.cpp, or from the teacher).

Tuna's diversity rule: while some pair of candidates has ROUGE-L >= threshold and fewer than `max_resamples`
resamples were made for the instruction, redraw the later one of the pair with a fresh seed at a temperature 0.1
higher per retry. Ranking near-identical answers teaches nothing, so the rule buys contrast for a few calls. Every
draw goes through the `LLM` call cache, so a re-run (or a resumed stage) makes no new calls.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Callable

from ..config import ConfigError, one_of
from ..llm import LLM, Request
from ..student.prompting import record_prompt


@dataclass
class CandidatesConfig:
    n: int = 4  # candidates per instruction (Tuna and the RRHF/RAFT baselines here: 4)
    sample_size: int = 100  # instructions drawn from train (0 = all); bounds CPU time of sampling and ranking
    temperature: float = 0.7  # first-draw sampling temperature (RAFT's default; enough spread for 270M)
    top_p: float = 1.0  # nucleus sampling cut-off (1 = off)
    max_tokens: int = 128  # new tokens per candidate
    repeat_penalty: float = 1.1  # small models loop without it
    rouge_threshold: float = 0.8  # a pair at or above this ROUGE-L F counts as a near-duplicate (Tuna: 0.8)
    max_resamples: int = 3  # redraws per instruction before giving up on diversity (Tuna: 3)
    seed: int = 11  # base of every draw's seed; each instruction's seeds derive from it and the record id
    source: str = "student"  # student (SFT adapter on llama.cpp) | teacher (the teacher LLM writes candidates)
    # A small student runs on into new "### Answer:"/"### Task:" sections of its prompt format; cut at the first.
    stop: list[str] = field(default_factory=lambda: ["\n###"])

    def validate(self, where: str) -> None:
        one_of(self.source, ("student", "teacher"), f"{where}.source")
        if self.n < 2:
            raise ConfigError(f"{where}.n must be >= 2: ranking needs at least two candidates")
        if not 0 < self.rouge_threshold <= 1:
            raise ConfigError(f"{where}.rouge_threshold must be in (0, 1], got {self.rouge_threshold}")
        if self.sample_size < 0 or self.max_resamples < 0 or self.max_tokens < 1:
            raise ConfigError(f"{where}: sample_size, max_resamples must be >= 0 and max_tokens >= 1")
        if self.temperature <= 0:
            raise ConfigError(f"{where}.temperature must be > 0: greedy decoding gives N identical candidates")


def tokens(text: str) -> list[str]:
    """Lower-cased whitespace tokens, the unit ROUGE-L counts in."""
    return text.lower().split()


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (one DP row, O(len(a) * len(b)) time).

    >>> lcs_length("a b c d".split(), "a c d e".split())
    3
    """
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0  # row[j-1] of the previous row
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure (beta = 1) of two texts: 2PR / (P + R) with P = LCS/|a|, R = LCS/|b|. Symmetric.

    Two empty texts are identical (1.0); one empty text shares nothing (0.0).

    >>> rouge_l("The cat sat on the mat", "the cat sat on the mat")
    1.0
    >>> round(rouge_l("a b c d", "a c d e"), 4)
    0.75
    >>> rouge_l("", ""), rouge_l("x", "")
    (1.0, 0.0)
    """
    ta, tb = tokens(a), tokens(b)
    if not ta or not tb:
        return float(not ta and not tb)
    lcs = lcs_length(ta, tb)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(ta), lcs / len(tb)
    return 2 * p * r / (p + r)


def most_similar_pair(texts: list[str]) -> tuple[float, tuple[int, int] | None]:
    """(highest pairwise ROUGE-L, the first pair (i < j) reaching it); (0.0, None) for fewer than two texts.

    >>> most_similar_pair(["a b", "c d", "a b e"])
    (0.8, (0, 2))
    """
    best, pair = 0.0, None
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            score = rouge_l(texts[i], texts[j])
            if pair is None or score > best:
                best, pair = score, (i, j)
    return best, pair


def sample_records(records: list[dict], size: int, seed: int) -> list[dict]:
    """`size` records drawn with a seeded RNG from the id-sorted list (independent of file order); 0 = all."""
    ordered = sorted(records, key=lambda r: r["id"])
    if size == 0 or size >= len(ordered):
        return ordered
    return sorted(random.Random(seed).sample(ordered, size), key=lambda r: r["id"])


def item_seed(seed: int, rec_id: str) -> int:
    """A per-instruction base seed in [1, 2**24]: adding or removing other records never changes it."""
    return 1 + int(hashlib.sha256(f"{seed}:{rec_id}".encode()).hexdigest()[:6], 16)


def draw_candidates(llm: LLM, prompt: str, cfg: CandidatesConfig, base_seed: int) -> dict:
    """N candidates for one prompt, with Tuna's near-duplicate resampling; the dict records how it went.

    Draw j uses seed base+j; resample r (1-based) uses seed base+n+r-1 and temperature + 0.1*r, so no two draws
    of an instruction share a seed and each retry samples a little wider.
    """

    def draw(seed: int, temperature: float) -> str:
        req = Request(prompt=prompt, max_tokens=cfg.max_tokens, temperature=temperature, top_p=cfg.top_p,
                      seed=seed, stop=tuple(cfg.stop), repeat_penalty=cfg.repeat_penalty)
        return llm.complete(req).strip()

    seeds = [base_seed + j for j in range(cfg.n)]
    temps = [cfg.temperature] * cfg.n
    texts = [draw(s, cfg.temperature) for s in seeds]
    resamples = 0
    score, pair = most_similar_pair(texts)
    while score >= cfg.rouge_threshold and resamples < cfg.max_resamples:
        resamples += 1
        j = pair[1]  # keep the earlier candidate, redraw the later one
        seeds[j] = base_seed + cfg.n + resamples - 1
        temps[j] = round(cfg.temperature + 0.1 * resamples, 6)
        texts[j] = draw(seeds[j], temps[j])
        score, pair = most_similar_pair(texts)
    return {
        "candidates": texts,
        "seeds": seeds,
        "temperatures": temps,
        "resamples": resamples,
        "duplicates_remain": score >= cfg.rouge_threshold,
        "max_rouge": round(score, 4),
    }


def build_candidates(llm: LLM, records: list[dict], cfg: CandidatesConfig,
                     prompt_fn: Callable[[dict], str] = record_prompt) -> tuple[list[dict], dict]:
    """(items, counts) for the records (sample them first with `sample_records`).

    An item keeps the record's id/instruction/input/output and adds `prompt` (what the student is trained on) and
    the fields of `draw_candidates`. `counts` sums resamples, items with duplicates left and empty candidates.
    """
    def one(rec: dict) -> dict:
        prompt = prompt_fn(rec)
        keep = {k: rec[k] for k in ("id", "instruction", "input", "output") if k in rec}
        return {**keep, "prompt": prompt, "source": cfg.source,
                **draw_candidates(llm, prompt, cfg, item_seed(cfg.seed, rec["id"]))}

    items = llm.map(one, records, desc=f"candidates ({cfg.source})")
    counts = {
        "items": len(items),
        "candidates": sum(len(it["candidates"]) for it in items),
        "resamples": sum(it["resamples"] for it in items),
        "items_resampled": sum(it["resamples"] > 0 for it in items),
        "duplicates_remain": sum(it["duplicates_remain"] for it in items),
        "empty_candidates": sum(not c for it in items for c in it["candidates"]),
    }
    return items, counts
