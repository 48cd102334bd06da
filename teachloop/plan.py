"""What a run of the current params will ask of each LLM, before it runs: `teachloop plan` prints it as a table.

Per LLM-calling stage of dvc.yaml (rubrics, citing_answer@R, citing_revise@R, candidates@S, score_probabilistic@S,
rank_contextual@S, answer@M, judge@C): the requests the stage makes on first attempts (exactly what its counts
file will hold as `requests - reasks - resamples`), the most it can make with every re-ask and resample the params
allow, the calls an OpenAI-compatible server would receive (one grouped request of the in-process backend is
several HTTP calls there), prompt and completion tokens, and a cost where the role's `price_per_mtok` is set.

Sizes come from the data itself: the prepare stage's loading, de-duplication and split run in memory on the
current params (or an existing prepared dir is read). Prompts are rendered from the prompt files wherever the
input is known before the run (the student's prompts, the teacher's rubric batches); text that only a run can
produce (a draft, a candidate, a rubric) is counted at its full token budget, so prompt tokens of those stages
and every completion count are upper bounds.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import prompts
from .config import build, load_section
from .data import PrepareConfig, cap_per_set, eval_records, load_records, read_jsonl, split_path, split_records
from .judge import JudgeConfig, build_prompt
from .llm import LLMConfig
from .methods.candidates import CandidatesConfig, sample_records
from .methods.citing import RoundConfig, sample_round, teacher_prompt
from .methods.ranking import ContextualConfig, check_can_score, contextual_prompt, score_prompt
from .roles import DecodeConfig
from .rubrics import RubricsConfig, _examples
from .student.prompting import record_prompt, revise_prompt


@dataclass
class StagePlan:
    stage: str  # dvc.yaml's unrolled stage name, e.g. citing_answer@1
    role: str  # teacher | student | judge
    backend: str  # the role's backend
    requests: int  # first attempts: the counts file's requests - reasks - resamples
    max_requests: int  # with every re-ask and resample the params allow
    server_calls: int  # HTTP calls an OpenAI-compatible server would receive (grouped requests split up)
    prompt_tokens: int  # summed over server calls, as an API bills them
    completion_tokens: int  # upper bound: every reply at its max_tokens budget
    cost: float | None = None  # prompt and completion tokens at the role's price_per_mtok; None without a price
    counts: str = ""  # the stage's counts file, from dvc.yaml


@dataclass
class Tokens:
    """Token counter: a tokenizer.json when there is one at hand, else the usual ~4 characters per token."""

    tokenizer: object = None
    how: str = "chars/4 (no tokenizer at hand)"
    _memo: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | Path | None) -> "Tokens":
        if path and Path(path).exists():
            from tokenizers import Tokenizer

            return cls(Tokenizer.from_file(str(path)), f"tokenizer {path}")
        return cls()

    def __call__(self, text: str) -> int:
        if self.tokenizer is None:
            return math.ceil(len(text) / 4)
        if text not in self._memo:
            self._memo[text] = len(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return self._memo[text]


# --- sizes --------------------------------------------------------------------------------------------------


def prepared_sets(params: dict, prepared: str | Path | None = None) -> tuple[list[dict], dict[str, list[dict]]]:
    """(train records, {eval set: records}) as the prepare stage makes them: read from `prepared` when given,
    else computed in memory from prepare.sources and the params (the same library calls, no file written)."""
    if prepared:
        return read_jsonl(split_path(prepared, "train")), eval_records(prepared)
    cfg = load_section(params, "prepare", PrepareConfig)
    index: dict[str, str] = {}
    records, _ = load_records(cfg.sources, "skip", cfg.max_chars, index=index)
    splits = split_records(records, cfg.split, cfg.seed)
    evals = {"test": splits["test"]}
    for name in sorted(cfg.eval_sets):  # eval_records reads the prepared eval dir sorted by name
        rows, _ = load_records([cfg.eval_sets[name]], "skip", cfg.max_chars, overlap=index)
        evals[name] = rows
    return splits["train"], evals


# --- dvc.yaml -----------------------------------------------------------------------------------------------


def _lookup(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        node = node[part]
    return node


def unrolled_counts(params: dict, dvc_yaml: str | Path) -> dict[str, str]:
    """{unrolled stage name: its --counts path} for every dvc.yaml stage that writes a counts file.

    dvc.yaml's `foreach: ${a.b}` over a params mapping (key = its keys) or list (key = item) is resolved here as
    DVC does, for the `${key}` / `${item}` / `${item.x}` forms dvc.yaml uses, so the paths stay written only there.
    """
    import yaml

    stages = yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8"))["stages"]
    out = {}
    for name, spec in stages.items():
        if "foreach" not in spec:
            m = re.search(r"--counts\s+(\S+)", str(spec.get("cmd", "")))
            if m:
                out[name] = m.group(1)
            continue
        m = re.search(r"--counts\s+(\S+)", str(spec["do"].get("cmd", "")))
        if not m:
            continue
        over = _lookup(params, spec["foreach"].strip()[2:-1])
        pairs = over.items() if isinstance(over, dict) else ((item, item) for item in over)
        for key, item in pairs:
            def sub(t: re.Match, key=str(key), item=item) -> str:
                ref = t.group(1)
                if ref == "key":
                    return key
                if ref == "item":
                    return str(item)
                return str(_lookup(item, ref[len("item."):]))

            out[f"{name}@{key}"] = re.sub(r"\$\{([\w.]+)\}", sub, m.group(1))
    return out


# --- per stage ----------------------------------------------------------------------------------------------


@dataclass
class Role:
    cfg: LLMConfig
    name: str

    def server_calls(self, requests: int, grouped: int) -> int:
        """A grouped request (N samples, N scored continuations, criteria) is N HTTP calls on a server."""
        return requests * grouped if self.cfg.backend == "openai" else requests


def roles_of(params: dict) -> dict[str, Role]:
    return {"teacher": Role(load_section(params, "teacher", LLMConfig), "teacher"),
            "student": Role(build(LLMConfig, params["student"]["llm"], "student.llm"), "student"),
            "judge": Role(load_section(params, "judge", JudgeConfig).llm, "judge")}


def _row(stage: str, role: Role, requests: int, max_requests: int, server_calls: int, prompt_tokens: int,
         completion_tokens: int) -> StagePlan:
    price = role.cfg.price_per_mtok
    cost = None if price is None else (prompt_tokens * price.input + completion_tokens * price.output) / 1e6
    return StagePlan(stage, role.name, role.cfg.backend, requests, max_requests, server_calls, prompt_tokens,
                     completion_tokens, cost)


def plan(params: dict, dvc_yaml: str | Path = "dvc.yaml", prepared: str | Path | None = None,
         tokens: Tokens | None = None) -> list[StagePlan]:
    """One `StagePlan` per LLM-calling stage of dvc.yaml under `params`, in dvc.yaml's order."""
    tok = tokens or Tokens()
    roles = roles_of(params)
    teacher, student, judge_role = roles["teacher"], roles["student"], roles["judge"]
    if params.get("probabilistic_sets"):
        check_can_score(teacher.cfg)
    train, evals = prepared_sets(params, prepared)
    decode = load_section(params, "student.decode", DecodeConfig)
    counts = unrolled_counts(params, dvc_yaml)
    rows: list[StagePlan] = []

    def add(row: StagePlan) -> None:
        base = row.stage.split("@")[0]
        if row.stage in counts or base in counts:
            row.counts = counts.get(row.stage, counts.get(base, ""))
        rows.append(row)

    # rubrics: one teacher prompt per category (cluster) or per batch of instructions (llm)
    rc = load_section(params, "rubrics", RubricsConfig)
    if rc.mode == "cluster":
        k = min(rc.k, len(train))
        shown = min(rc.examples_per_category, max(1, len(train) // max(k, 1)))
        prompts_ = [prompts.render("rubric_cluster", examples=_examples(train[j * shown:(j + 1) * shown], False))
                    for j in range(k)]  # stand-in members: k-means picks which, their lengths are alike
    else:
        prompts_ = [prompts.render("rubric_llm", examples=_examples(train[s:s + rc.batch_size], True))
                    for s in range(0, len(train), rc.batch_size)]
    n = len(prompts_)
    add(_row("rubrics", teacher, n, n * rc.attempts, teacher.server_calls(n, 1), sum(map(tok, prompts_)),
             n * rc.max_tokens))

    # CITING rounds: the student answers the round's sample, the teacher revises each answer
    round_cfg = load_section(params, "citing.round", RoundConfig)
    rounds = sorted(params["citing"]["rounds"], key=int)
    sample = {r: sample_round(train, round_cfg, int(r)) for r in rounds}
    for r in rounds:
        p_tok = sum(tok(record_prompt(rec)) for rec in sample[r])
        n = len(sample[r])
        add(_row(f"citing_answer@{r}", student, n, n, student.server_calls(n, 1), p_tok, n * decode.max_tokens))
    for r in rounds:
        # the rubric and the draft exist only after a run: the fallback rubric and a full-budget draft stand in
        p_tok = sum(tok(teacher_prompt(rec, rc.fallback_rubric, "", round_cfg.reference_hint)) + decode.max_tokens
                    for rec in sample[r])
        n = len(sample[r])
        add(_row(f"citing_revise@{r}", teacher, n, n * round_cfg.attempts, teacher.server_calls(n, 1), p_tok,
                 n * round_cfg.revise_max_tokens))

    # candidates: N samples of each sampled instruction are one request (N calls on a server), plus resamples
    cc = load_section(params, "candidates", CandidatesConfig)
    sampler = student if cc.source == "student" else teacher
    cand_recs = sample_records(train, cc.sample_size, cc.seed)
    n = len(cand_recs)
    for s in params.get("candidate_sets", {}):
        p_tok = sum(tok(record_prompt(rec)) for rec in cand_recs) * cc.n
        add(_row(f"candidates@{s}", sampler, n, n * (1 + cc.max_resamples), sampler.server_calls(n, cc.n), p_tok,
                 n * cc.n * cc.max_tokens))
    items = [{**rec, "candidates": [""] * cc.n} for rec in cand_recs]
    for s in params.get("probabilistic_sets", []):
        # one request per item (all its candidates); a server echoes prompt + candidate once per candidate
        p_tok = sum(tok(score_prompt(it)) + cc.max_tokens for it in items) * cc.n
        add(_row(f"score_probabilistic@{s}", teacher, n, n, teacher.server_calls(n, cc.n), p_tok,
                 teacher.server_calls(n, cc.n)))
    ctx = load_section(params, "contextual", ContextualConfig)
    for s in params.get("contextual_sets", []):
        per_cand = min(cc.max_tokens, math.ceil(ctx.max_chars / 4))
        p_tok = sum(tok(contextual_prompt(it, list(range(cc.n)), ctx)) + cc.n * per_cand for it in items)
        add(_row(f"rank_contextual@{s}", teacher, n, n * ctx.attempts, teacher.server_calls(n, 1), p_tok,
                 n * ctx.max_tokens))

    # answers: every model answers the capped eval sets; CITING mode drafts, then revises with a rubric
    ans = params.get("answer", {})
    answered = cap_per_set(evals, int(ans.get("max_per_set", 0)), int(ans.get("seed", 17)))
    revisions = int(ans.get("citing_revisions", 1))
    answer_items = [rec for rows_ in answered.values() for rec in rows_]
    for m, spec in params["evaluate"]["models"].items():
        per = 1 + (revisions if spec.get("mode") == "citing" else 0)
        n = len(answer_items) * per
        p_tok = sum(tok(record_prompt(rec)) for rec in answer_items)
        if per > 1:
            p_tok += revisions * sum(tok(revise_prompt(rec["instruction"], rec.get("input", ""), rc.fallback_rubric,
                                                       "")) + decode.max_tokens for rec in answer_items)
        add(_row(f"answer@{m}", student, n, n, student.server_calls(n, 1), p_tok, n * decode.max_tokens))

    # judging: both orders of every pair; probs mode asks all criteria of an order as one request
    jc = load_section(params, "judge", JudgeConfig)
    pairs = [rec for rows_ in answered.values() for rec in (rows_[:jc.max_per_set] if jc.max_per_set else rows_)]
    answer_tok = min(decode.max_tokens, math.ceil(jc.max_answer_chars / 4))
    per_order = sum(tok(build_prompt(rec["instruction"], rec.get("input", ""), "", "", c, jc.max_answer_chars))
                    + 2 * answer_tok for rec in pairs for c in jc.criteria)
    for c in params["evaluate"]["comparisons"]:
        if jc.mode == "probs":
            n, grouped, done = 2 * len(pairs), len(jc.criteria), 1
            max_n = n
        else:
            n, grouped, done = 2 * len(pairs) * len(jc.criteria), 1, jc.max_tokens
            max_n = n * jc.attempts
        calls = judge_role.server_calls(n, grouped)
        add(_row(f"judge@{c}", judge_role, n, max_n, calls, 2 * per_order, calls * done))
    return rows


# --- the finished run ---------------------------------------------------------------------------------------


def first_attempts(counts: dict) -> int:
    """A counts file's requests on first attempts: re-asks and Tuna resamples are extra requests of the same item."""
    return int(counts.get("requests", 0)) - int(counts.get("reasks", 0)) - int(counts.get("resamples", 0))


def table(rows: list[StagePlan], tokens_how: str, actual: dict[str, int | None] | None = None) -> str:
    """The plan as a markdown table, totals last; `actual` adds the counted first-attempt requests per stage."""
    has_cost = any(r.cost is not None for r in rows)
    head = ["stage", "role", "backend", "requests", "at most", "server calls", "prompt tokens", "completion tokens <="]
    head += ["cost $"] if has_cost else []
    head += ["counted"] if actual is not None else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.stage, r.role, r.backend, r.requests, r.max_requests, r.server_calls, r.prompt_tokens,
                 r.completion_tokens]
        cells += [f"{r.cost:.4f}" if r.cost is not None else "-"] if has_cost else []
        if actual is not None:
            got = actual.get(r.stage)
            cells += ["-" if got is None else (f"{got}" if got == r.requests else f"**{got}**")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    total = ["total", "", "", sum(r.requests for r in rows), sum(r.max_requests for r in rows),
             sum(r.server_calls for r in rows), sum(r.prompt_tokens for r in rows),
             sum(r.completion_tokens for r in rows)]
    total += [f"{sum(r.cost or 0 for r in rows):.4f}"] if has_cost else []
    total += [""] if actual is not None else []
    lines.append("| " + " | ".join(str(c) for c in total) + " |")
    notes = [f"Tokens: {tokens_how}. Prompt tokens count a draft, candidate, answer or rubric the run has yet to "
             "write at its full budget; completion tokens are max_tokens budgets: both are upper bounds there.",
             "requests: first attempts, = the counts file's requests - reasks - resamples after the run. "
             "at most: with every re-ask and resample. server calls: HTTP calls to an OpenAI-compatible server "
             "(a grouped llama.cpp request is several there)."]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
