"""Sample N candidate answers per instruction (from the student through llama.cpp, or from the teacher).

Tuna's diversity rule: while some pair of candidates has ROUGE-L >= threshold and fewer than `max_resamples`
resamples were made for the instruction, redraw the later one of the pair with a fresh seed at a temperature 0.1
higher per retry. ROUGE-L is rouge-score's F-measure with stemming (`teachloop.reference.rouge_l`), so 0.8 means
what it means in Tuna. Ranking near-identical answers teaches nothing, so the rule buys contrast for a few calls.
An instruction's first N draws are one request (one cache entry) and each redraw another; every request goes
through the `LLM` call cache, so a re-run (or a resumed stage) makes no new calls.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Callable

from ..config import ConfigError, one_of
from ..llm import LLM, Request
from ..reference import rouge_l
from ..student.prompting import record_prompt

# rouge-score's tokenizer keeps lower-cased ASCII letters and digits only; a text without one has no words.
_WORD = re.compile(r"[A-Za-z0-9]")


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


def similarity(a: str, b: str) -> float:
    """ROUGE-L F of two candidates with stemming (`rouge-score`, as Tuna measures near-duplicates); symmetric.

    rouge-score gives 0.0 when either text has no word, so two empty (or all-punctuation) candidates would pass
    as distinct; they are the same non-answer, so they count as identical.

    >>> similarity("The cats sat on the mat.", "the cat sat on the mat")
    1.0
    >>> round(similarity("a b c d", "a c d e"), 4)
    0.75
    >>> similarity("", " "), similarity("...", ""), similarity("x", "")
    (1.0, 1.0, 0.0)
    """
    if not _WORD.search(a) and not _WORD.search(b):
        return 1.0
    return rouge_l(a, b)


def most_similar_pair(texts: list[str]) -> tuple[float, tuple[int, int] | None]:
    """(highest pairwise `similarity`, the first pair (i < j) reaching it); (0.0, None) for fewer than two texts.

    >>> most_similar_pair(["a b", "c d", "a b e"])
    (0.8, (0, 2))
    """
    best, pair = 0.0, None
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            score = similarity(texts[i], texts[j])
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

    The first N draws are one request (`LLM.complete_samples`: seeds base..base+N-1, decoded together over one
    evaluation of the prompt). Resample r (1-based) is a one-sample request with seed base+n+r-1 at temperature
    + 0.1*r, so no two draws of an instruction share a seed and each retry samples a little wider.
    """
    req = Request(prompt=prompt, max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                  seed=base_seed, stop=tuple(cfg.stop), repeat_penalty=cfg.repeat_penalty)
    seeds = [base_seed + j for j in range(cfg.n)]
    temps = [cfg.temperature] * cfg.n
    texts = [t.strip() for t in llm.complete_samples(req, cfg.n)]
    resamples = 0
    score, pair = most_similar_pair(texts)
    while score >= cfg.rouge_threshold and resamples < cfg.max_resamples:
        resamples += 1
        j = pair[1]  # keep the earlier candidate, redraw the later one
        seeds[j] = base_seed + cfg.n + resamples - 1
        temps[j] = round(cfg.temperature + 0.1 * resamples, 6)
        redraw = dataclasses.replace(req, seed=seeds[j], temperature=temps[j])
        texts[j] = llm.complete_samples(redraw, 1)[0].strip()
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
