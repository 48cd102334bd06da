"""The run's results for people and for DVC: the leaderboard first, details one link away.

`build_report(...)` writes the main report (leaderboard, verdict, plots, links), the detail pages, the
leaderboard as CSV and markdown, the headline metrics and the LLM judge's win-rate JSON; run it through
`python stages/report.py`. The reference-grounded detail tables are in `report_findings`, the figures in `plots`.
"""
from __future__ import annotations

import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import leaderboard, plots
from .config import ConfigError, flatten
from .data import read_jsonl, write_json
from .findings import judge_signal
from .metrics import CRITERIA_ORDER, EVAL_SET_ORDER, average_win_rate, ordered, summarise_all

ROUND = re.compile(r"^citing_r(\d+)_vs_sft$")
DETAILS = {  # detail page -> its title; the report links each (the pages live in the dir dvc.yaml names)
    "per_set.md": "Per eval set", "pairwise.md": "Pairwise comparisons", "llm_judge.md": "LLM judge and its audit",
    "rubrics.md": "Rubrics", "examples.md": "Examples", "calls.md": "LLM calls and skips", "settings.md": "Settings"}
SIZES = ("sft.max_examples", "citing.round.sample_size", "candidates.sample_size", "candidates.n",
         "answer.max_per_set", "judge.max_per_set", "reference.max_per_set", "report.n_boot")


@dataclass
class ReportConfig:
    """params.yaml `report`: statistics and presentation of the results."""

    n_boot: int = 1000  # bootstrap resamples of instructions for each CI
    ci: float = 0.95  # confidence level of the intervals
    seed: int = 0  # bootstrap seed: the same verdicts always give the same intervals
    primary: str = "ref_loglik"  # the leaderboard's sort key: a reference measure (leaderboard.MEASURES)
    n_examples: int = 4  # side-by-side examples shown in the report
    examples_from: str = ""  # comparison to draw them from; "" = the last CITING round vs SFT, else the first
    judge_model: str = ""  # named in the report; "" = described from params judge.llm
    teacher_model: str = ""  # "" = described from params teacher
    student_model: str = ""  # "" = described from params student.llm
    versus: list[str] = field(default_factory=lambda: ["base", "sft"])  # every model vs these, by reference
    headline_opponent: str = "sft"  # the leaderboard's differences and win rates are against this model
    rouge_margin: float = 0.02  # reference judge: a ROUGE-L difference within this is a tie
    cosine_margin: float = 0.02  # reference judge: the same for embedding cosine to the reference
    names: dict[str, str] = field(default_factory=dict)  # display names; citing_rK -> "CITING rK", else the key
    eval_sets: dict[str, str] = field(default_factory=dict)  # display names of eval sets, in display order

    def validate(self, where: str) -> None:
        if self.n_boot < 10 or not 0 < self.ci < 1 or self.n_examples < 0:
            raise ConfigError(f"{where}: need n_boot >= 10, 0 < ci < 1, n_examples >= 0")
        if not (0 <= self.rouge_margin < 1 and 0 <= self.cosine_margin < 1):
            raise ConfigError(f"{where}: rouge_margin and cosine_margin must be in [0, 1)")
        if self.primary not in leaderboard.MEASURES:
            raise ConfigError(f"{where}.primary: {self.primary!r} is not a reference measure; use one of "
                              f"{sorted(leaderboard.MEASURES)}")


class Names:
    """Display names of models, comparisons and eval sets, from params `report.names` / `report.eval_sets`."""

    def __init__(self, cfg: ReportConfig | None = None):
        cfg = cfg or ReportConfig()
        self.models, self.set_names = cfg.names, cfg.eval_sets

    def __call__(self, model: str) -> str:
        if model in self.models:
            return self.models[model]
        m = re.match(r"^citing_r(\d+)$", model)
        return f"CITING r{m.group(1)}" if m else model

    def pair(self, comparison: str) -> str:
        a, _, b = comparison.partition("_vs_")
        return f"{self(a)} vs {self(b)}"

    def eval_set(self, name: str) -> str:
        return self.set_names.get(name, name)

    def sets(self, names) -> list[str]:
        """Eval sets in display order: `report.eval_sets` first, then the computation's order."""
        return ordered(names, tuple(dict.fromkeys((*self.set_names, *EVAL_SET_ORDER))))


def load_judgements(root: str | Path) -> dict[str, list[dict]]:
    """{comparison: verdict records} from `root/<comparison>/verdicts.jsonl`."""
    root = Path(root)
    found = {p.parent.name: read_jsonl(p) for p in sorted(root.glob("*/verdicts.jsonl"))}
    if not found:
        raise FileNotFoundError(f"no */verdicts.jsonl under {root}: run the judge stages first")
    return found


def sort_comparisons(names, order: list[str] = ()) -> list[str]:
    """CITING first (by round), then the rest; opponents in `order` (evaluate.models) order."""
    rank = {m: i for i, m in enumerate(order)}

    def key(n):
        a, _, b = n.partition("_vs_")
        m = re.match(r"^citing_r(\d+)$", a)
        return (0 if m else 1, int(m.group(1)) if m else 0, a, rank.get(b, len(rank)), b)
    return sorted(names, key=key)


def json_safe(obj):
    """JSON-safe and readable: NaN becomes null (strict JSON has no NaN), floats keep 4 decimals."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float):
        return None if math.isnan(obj) else round(obj, 4)
    return obj


def metrics_json(summaries: dict[str, dict]) -> dict:
    """{comparison: headline keys + by_eval_set + by_criterion}; per-cell detail stays in the report."""
    return json_safe({name: {k: v for k, v in s.items() if k != "by_cell"} for name, s in summaries.items()})


# ---- markdown helpers ------------------------------------------------------------------------------------------

def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _cell(s: dict | None) -> str:
    if not s or math.isnan(s["win_rate"]):
        return "n/a"
    return f"{100 * s['win_rate']:.1f}% [{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}]"


def _table(head: list[str], rows: list[list]) -> str:
    lines = [head, ["---"] * len(head)] + rows
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


# ---- the LLM judge's tables (details) ---------------------------------------------------------------------------

def paper_table(summaries: dict[str, dict], names: Names, order=()) -> str:
    """CITING paper layout: one row per comparison, each eval set's win rate, then the average; "win% [lo, hi]"."""
    sets = names.sets({e for s in summaries.values() for e in s["by_eval_set"]})
    rows = [[names.pair(n)] + [_cell(summaries[n]["by_eval_set"].get(e)) for e in sets] + [_cell(summaries[n])]
            for n in sort_comparisons(summaries, order)]
    return _table(["Comparison"] + [names.eval_set(e) for e in sets] + ["Average"], rows)


def detail_table(summaries: dict[str, dict], names: Names, order=()) -> str:
    keys = ["win_rate", "tie_rate", "loss_rate", "score", "position_bias_rate", "first_position_rate"]
    pref = lambda v: "n/a" if v is None else f"{v:+.3f}"  # noqa: E731
    rows = [[names.pair(n)] + [_pct(summaries[n][k]) for k in keys] + [pref(summaries[n]["mean_preference"]),
            summaries[n]["n_instructions"], summaries[n]["n_failed"]] for n in sort_comparisons(summaries, order)]
    return _table(["Comparison", "win", "tie", "loss", "win + tie/2", "position bias", "first chosen",
                   "graded pref.", "instructions", "failed"], rows)


def headline_lines(summaries: dict[str, dict], names: Names, order=()) -> list[str]:
    """The paper's headline per method of interest: its win rate averaged over its opponents (and over sets)."""
    by_a: dict[str, list[str]] = {}
    for n in sort_comparisons(summaries, order):
        by_a.setdefault(n.partition("_vs_")[0], []).append(n)
    out = []
    for a, comparisons in by_a.items():
        avg = average_win_rate(summaries, comparisons)
        opponents = ", ".join(names(n.partition("_vs_")[2]) for n in comparisons)
        out.append(f"- {names(a)} over {opponents}: average win rate {_pct(avg['win_rate'])} "
                   f"(win + tie/2: {_pct(avg['score'])})")
    return out


def _quote(text: str, n: int = 700) -> str:
    text = text.strip() if len(text) <= n else text[:n].rstrip() + " [...]"
    return "\n".join("> " + line for line in (text.splitlines() or [""]))


def pick_examples(records: list[dict], n: int, seed: int) -> list[list[dict]]:
    """Up to `n` instructions (their records, one per criterion), mixing wins, losses and ties when possible."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["eval_set"], r["id"]), []).append(r)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    majority = {k: max(("win", "tie", "loss"), key=[r["verdict"] for r in groups[k]].count) for k in keys}
    chosen: list[tuple] = []
    for want in ("win", "loss", "tie"):  # one of each first, so the examples are not all alike
        chosen += [k for k in keys if majority[k] == want and k not in chosen][:1]
    chosen += [k for k in keys if k not in chosen]
    return [groups[k] for k in chosen[:n]]


def examples_md(records: list[dict], n: int, seed: int, names: Names) -> str:
    parts = []
    for recs in pick_examples(records, n, seed):
        r = recs[0]
        verdicts = ", ".join(
            f"{x['criterion']}: **{x['verdict'] or 'failed'}** (orders: "
            f"{' / '.join(str(o['position_verdict']) for o in x['orders'])})" for x in recs)
        block = [f"**{names.eval_set(r['eval_set'])} `{r['id']}`**: {r['instruction']}"]
        if r.get("input"):
            block.append(f"Input:\n{_quote(r['input'], 400)}")
        block += [f"*{names(r['a_model'])}* (A):\n{_quote(r['answer_a'])}",
                  f"*{names(r['b_model'])}* (B):\n{_quote(r['answer_b'])}",
                  f"Verdicts for A: {verdicts}"]
        parts.append("\n\n".join(block))
    return "\n\n---\n\n".join(parts) if parts else "_No judged pairs._"


def calls_table(calls: list[dict]) -> str:
    """LLM requests per stage with re-asks and failures, and the other counts that are not zero."""
    if not calls:
        return "_No stage counts were found._"
    keys = ["stage", "requests", "retried", "failed"]
    other = lambda c: ", ".join(f"{k} {v}" for k, v in c.items() if k not in keys and v) or "—"  # noqa: E731
    return _table(keys + ["other counts (non-zero)"], [[c.get(k, "") for k in keys] + [other(c)] for c in calls])


def rubrics_md(categories: list[dict]) -> str:
    """One row per category; each distinct rubric text once, with how many categories use it."""
    if not categories:
        return "_No rubric categories found._"
    rows = [[i, c["name"], len(c.get("members", [])), "teacher" if c.get("ok", True) else "fallback"]
            for i, c in enumerate(categories)]
    out = [_table(["#", "category", "train members", "rubric from"], rows), ""]
    texts: dict[str, list[int]] = {}
    for i, c in enumerate(categories):
        texts.setdefault(c["rubric"], []).append(i)
    for text, ids in texts.items():
        failed = not categories[ids[0]].get("ok", True)
        who = (f"Fallback rubric (the teacher failed), used by {len(ids)} categories" if failed
               else f"Rubric of categor{'y' if len(ids) == 1 else 'ies'} {', '.join(map(str, ids))}")
        out.append(f"- {who}: {' '.join(text.split())}")
    return "\n".join(out)


def param_changes(params: dict, defaults: dict) -> list[tuple[str, object, object]]:
    """(dotted key, default, this run's value) for every key whose value differs, added or removed."""
    a, b = flatten(defaults), flatten(params)
    missing = object()
    out = []
    for k in list(dict.fromkeys(list(a) + list(b))):
        va, vb = a.get(k, missing), b.get(k, missing)
        if va != vb:
            out.append((k, "(absent)" if va is missing else va, "(absent)" if vb is missing else vb))
    return out


def settings_md(params: dict, defaults: dict | None, models: tuple[str, str, str], n_per_set: dict) -> str:
    judge, teacher, student = models
    flat = flatten(params)
    out = ["## Models", "", f"- judge: {judge}", f"- teacher: {teacher}", f"- student: {student}",
           f"- evaluated: {', '.join(params.get('evaluate', {}).get('models', {}))}", "", "## Sizes", "",
           _table(["param", "value"], [[f"`{k}`", flat[k]] for k in SIZES if k in flat])]
    if n_per_set:
        first = next(iter(n_per_set.values()))
        out += ["", "Eval items per set (reference log-likelihood): "
                + ", ".join(f"{s} {n}" for s, n in first.items()) + "."]
    out += ["", "## Params that differ from the committed defaults", ""]
    if defaults is None:
        out.append("_No defaults file was given._")
    else:
        changes = param_changes(params, defaults)
        out.append(_table(["param", "default", "this run"], [[f"`{k}`", f"`{a}`", f"`{b}`"] for k, a, b in changes])
                   if changes else "None: this run used the committed defaults.")
    return "\n".join(out)


def models_line(judge: str, teacher: str, student: str) -> str:
    same = judge == teacher == student
    line = (f"Student, teacher and judge: **{judge}**." if same
            else f"Judge **{judge}**, teacher **{teacher}**, student **{student}**.")
    if "270m" in judge.lower():
        line += (" A 270M base-model judge shows the machinery working, not the CITING paper's claim; the "
                 "reference measures carry the findings.")
    return line


def default_examples_source(names: list[str]) -> str:
    """The last CITING round vs SFT when there is one: the comparison the paper's story is about."""
    rounds = sorted((int(m.group(1)), n) for n in names if (m := ROUND.match(n)))
    return rounds[-1][1] if rounds else sort_comparisons(names)[0]


# ---- the report ----------------------------------------------------------------------------------------------

def render_main(rows: list[dict], cfg: ReportConfig, names: Names, no_signal: str, rel: dict[str, str],
                has: dict[str, bool], models: tuple[str, str, str], missing_logs: list[str],
                reward: dict | None = None) -> str:
    base = cfg.headline_opponent
    ci = f"{100 * cfg.ci:.0f}%"
    out = ["# Results", "", models_line(*models), "",
           leaderboard.to_markdown(rows, names, base, cfg.primary, no_signal), "",
           f"Sorted by {leaderboard.MEASURES[cfg.primary][0]}. Values: macro mean over eval sets [{ci} bootstrap "
           f"interval over items]. Δ: paired per-item difference from {names(base)}; judges: win rate against "
           f"{names(base)} with ties as half; * = the interval excludes zero (a win rate: 50%); bold = best in its "
           f"column; {leaderboard.n_legend(cfg.primary)}. As data: [CSV]({rel['csv']}), [markdown]({rel['md']}).", "",
           "**Verdict.** " + " ".join(leaderboard.verdict(rows, names, base, cfg.primary, no_signal, cfg.ci)), ""]
    if reward:
        # The RLHF row is only as good as the reward model it optimised against, so its accuracy sits with the table.
        out += [f"RLHF's reward model: held-out pairwise accuracy {reward['heldout_accuracy']:.2f} on "
                f"{reward['heldout_pairs']} teacher-preference pairs (chance: 0.50).", ""]
    out += ["## Plots", ""]
    if has.get("forest"):
        out += [f"![Paired differences from {names(base)}]({rel['forest']})", ""]
    if has.get("rounds"):
        out += [f"![CITING rounds on {leaderboard.MEASURES[cfg.primary][0]}]({rel['rounds']})", ""]
    out += [f"LLM judge: no plot, it carries no signal ({no_signal.removesuffix(': no signal')})." if no_signal else
            f"LLM judge: win rates per comparison and criterion in [{DETAILS['llm_judge.md']}]({rel['llm_judge.md']}).",
            ""]
    if has.get("loss"):
        out += [f"![Training losses]({rel['loss']})", ""]
    if missing_logs:
        out += [f"Training logs missing or empty: {', '.join(missing_logs)}.", ""]
    out += ["## Details", ""] + [f"- [{title}]({rel[page]})" for page, title in DETAILS.items()]
    return "\n".join(out) + "\n"


def render_details(found: dict, summaries: dict, by_comparison: dict, cfg: ReportConfig, names: Names,
                   no_signal: str, order: list[str], calls: list[dict], categories: list[dict], params: dict,
                   defaults: dict | None, models: tuple[str, str, str]) -> dict[str, str]:
    from .report_findings import audit_table, diff_table, model_table, reference_judge_table

    ci = f"{100 * cfg.ci:.0f}%"
    src = cfg.examples_from or default_examples_source(list(by_comparison))
    if src not in by_comparison:
        raise ConfigError(f"report.examples_from: no comparison {src!r}; have {sorted(by_comparison)}")
    checked = found.get("intervals_checked", 0)
    crits = ordered({c for s in summaries.values() for c in s["by_criterion"]}, CRITERIA_ORDER)
    pages = {
        "per_set.md": ["Per model and eval set, macro mean [" + ci + " bootstrap interval over items].", "",
                       "## Reference log-likelihood", "", "Mean token log-likelihood of the reference answer "
                       "(teacher-forced, the training prompt format, response tokens only; higher = the reference "
                       "is more likely).", "", model_table(found, "ref_loglik", names), "", "## ROUGE-L", "",
                       "ROUGE-L F (stemmed, `rouge-score`) of each model's answer to the reference.", "",
                       model_table(found, "rouge_l", names)],
        "pairwise.md": [f"Paired differences A - B per eval set (* = the {ci} interval excludes zero). {checked} "
                        f"intervals are checked here; about {checked * (1 - cfg.ci):.0f} would exclude zero by "
                        "chance alone, so a single-set finding is a lead to re-test.", "",
                        "## Reference log-likelihood", "", diff_table(found, "ref_loglik", names), "", "## ROUGE-L",
                        "", diff_table(found, "rouge_l", names), "", "## Reference judge (ROUGE-L)", "",
                        "The answer closer to the reference wins; a difference within the margin is a tie. It "
                        "never sees an order, so it has no position bias.", "",
                        reference_judge_table(found, "rouge_l", names), "", "## Reference judge (embedding cosine)",
                        "", reference_judge_table(found, "cosine", names)],
        "llm_judge.md": [f"**No signal**: {no_signal}." if no_signal else "The judge's verdicts vary with the "
                         "answers (see the audit).", "",
                         f"Win rate of the first model over the second ({ci} bootstrap intervals over instructions, "
                         f"{cfg.n_boot} resamples), macro over the criteria ({', '.join(crits)}); each pair judged "
                         "in both orders, a disagreement counted as a tie.", "",
                         paper_table(summaries, names, order), "", *headline_lines(summaries, names, order), "",
                         "## Detail", "", detail_table(summaries, names, order), "",
                         "Position bias: share of judgements whose two orders chose the same position. First "
                         "chosen: share of single-order verdicts picking the answer shown first. Graded pref.: mean "
                         "over both orders of P(A's answer) - P(B's answer) (probs mode).", "", "## Audit", "",
                         "Against the reference judge (ROUGE-L) on the same items. Calibrated: each criterion's mean "
                         "pull toward the first position (from both orders) is removed before the tie margin.", "",
                         audit_table(found, names)],
        "rubrics.md": [rubrics_md(categories)],
        "examples.md": [f"From {names.pair(src)}.", "", examples_md(by_comparison[src], cfg.n_examples, cfg.seed,
                                                                    names)],
        "calls.md": ["Requests answered by the backend or the call cache (how many the cache answered is in the run "
                     "log, `.cache/runlog.jsonl`, so a re-run from cache gives the same page).", "",
                     calls_table(calls)],
        "settings.md": [settings_md(params, defaults, models, found.get("n_per_set", {}))],
    }
    return {page: f"# {DETAILS[page]}\n\n" + "\n".join(lines).strip() + "\n" for page, lines in pages.items()}


def build_report(by_comparison: dict[str, list[dict]], found: dict, cfg: ReportConfig, outs: dict[str, Path],
                 order: list[str], logs: dict[str, str] | None = None, loss_of: dict[str, str] | None = None,
                 categories: list[dict] | None = None, params: dict | None = None, defaults: dict | None = None,
                 calls: list[dict] | None = None, models: tuple[str, str, str] = ("unspecified",) * 3,
                 reward: dict | None = None) -> dict:
    """Write every output named in `outs` (keys: report, details, csv, md, headline, winrates, forest, rounds,
    loss); return {"summaries": the LLM judge's per comparison, "rows": the leaderboard}. `reward`: the reward
    model's held-out figures (the reward stage's metrics), reported under the verdict when given."""
    names = Names(cfg)
    summaries = summarise_all(by_comparison, cfg.n_boot, cfg.seed, cfg.ci)
    no_signal = judge_signal(summaries)
    rows = leaderboard.rows(found, summaries, order, cfg.headline_opponent, cfg.primary, no_signal)
    write_json(outs["winrates"], metrics_json(summaries))
    write_json(outs["headline"], json_safe(leaderboard.headline(rows, cfg.primary, cfg.headline_opponent)))
    for key, text in (("csv", leaderboard.to_csv(rows, names)),
                      ("md", leaderboard.to_markdown(rows, names, cfg.headline_opponent, cfg.primary, no_signal)
                       + "\n")):
        Path(outs[key]).parent.mkdir(parents=True, exist_ok=True)
        Path(outs[key]).write_text(text, encoding="utf-8")
    # Round 0 is the model whose adapter CITING's round 1 continues (SFT on the default).
    prev = ((params or {}).get("citing", {}).get("rounds", {}).get("1") or {}).get("prev")
    evaluated = (params or {}).get("evaluate", {}).get("models", {})
    round0 = next((m for m, e in evaluated.items() if prev and e.get("adapter") == prev), "")
    has = {"forest": plots.forest(rows, names, cfg.headline_opponent, outs["forest"], cfg.ci),
           "rounds": plots.rounds(rows, names, cfg.primary, round0 or cfg.headline_opponent, cfg.headline_opponent,
                                  outs["rounds"], cfg.ci)}
    missing = plots.losses(logs or {}, loss_of or {}, outs["loss"])
    has["loss"] = len(missing) < len(logs or {})
    report_dir = Path(outs["report"]).parent
    details = Path(outs["details"])
    rel = {k: os.path.relpath(outs[k], report_dir) for k in ("csv", "md", "forest", "rounds", "loss")}
    rel.update({page: os.path.relpath(details / page, report_dir) for page in DETAILS})
    pages = render_details(found, summaries, by_comparison, cfg, names, no_signal, order, calls or [],
                           categories or [], params or {}, defaults, models)
    details.mkdir(parents=True, exist_ok=True)
    for page, text in pages.items():
        (details / page).write_text(text, encoding="utf-8")
    report_dir.mkdir(parents=True, exist_ok=True)
    Path(outs["report"]).write_text(render_main(rows, cfg, names, no_signal, rel, has, models, missing, reward),
                                    encoding="utf-8")
    return {"summaries": summaries, "rows": rows}
