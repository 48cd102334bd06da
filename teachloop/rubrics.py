"""CITING's rubric clusters: categories of training instructions, one rubric each, and the assignment rule.

Two ways to form categories (params `rubrics.mode`):
- `cluster`: k-means on instruction embeddings; the teacher names each cluster and writes its rubric from sample
  members (robust with a small teacher: one short JSON reply per category);
- `llm`: the teacher sorts batches of instructions into categories and writes the rubrics in the same reply, as
  the CITING paper does; categories with the same name across batches are merged.
Any other instruction gets the category whose members have the highest mean inner product with it (the paper's
rule) -- `assign`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from . import prompts
from .config import one_of
from .embeddings import text_of
from .llm import LLM, ParseError, Request

NAME_MAX, RUBRIC_MAX = 60, 700
KMEANS_INITS = 10  # k-means restarts; the lowest-inertia one wins (one bad init can merge two topics)


@dataclass
class RubricsConfig:
    mode: str = "cluster"  # cluster (k-means + teacher writes rubrics) | llm (teacher sorts and writes)
    k: int = 8  # cluster mode: number of categories
    examples_per_category: int = 6  # cluster mode: members shown to the teacher
    batch_size: int = 12  # llm mode: instructions per teacher prompt
    max_tokens: int = 256  # teacher reply budget per prompt
    attempts: int = 3  # tries per prompt before the reply is recorded as failed
    seed: int = 11  # k-means init and example sampling
    # Used (and flagged failed) where the teacher never gives a valid rubric, so CITING still has one to show.
    fallback_rubric: str = ("1. Answers exactly what was asked. 2. Is correct. 3. Is clear and well organised. "
                            "4. Is complete but concise.")

    def validate(self, where: str) -> None:
        one_of(self.mode, ("cluster", "llm"), f"{where}.mode")


CLUSTER_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 3, "maxLength": NAME_MAX},
                   "rubric": {"type": "string", "minLength": 40, "maxLength": RUBRIC_MAX}},
    "required": ["name", "rubric"],
}


def _json_object(text: str) -> dict:
    match = re.search(r"\{.*\}", text, re.S)
    if not match:
        raise ParseError("no JSON object in the reply")
    try:
        obj = json.loads(match.group(0))
    except json.JSONDecodeError as e:
        raise ParseError(f"invalid JSON: {e.msg}") from e
    if not isinstance(obj, dict):
        raise ParseError("reply is not a JSON object")
    return obj


def parse_named_rubric(text: str) -> dict:
    """{"name", "rubric"} with both non-empty.

    >>> parse_named_rubric('{"name": "Math", "rubric": "1. Correct. 2. Shows steps."}')["name"]
    'Math'
    >>> parse_named_rubric('{"name": "", "rubric": "x"}')
    Traceback (most recent call last):
    ...
    teachloop.llm.client.ParseError: empty name or rubric
    """
    obj = _json_object(text)
    name, rubric = str(obj.get("name", "")).strip(), str(obj.get("rubric", "")).strip()
    if not name or not rubric:
        raise ParseError("empty name or rubric")
    return {"name": name[:NAME_MAX], "rubric": rubric[:RUBRIC_MAX]}


def prompt_example_texts(name: str) -> set[str]:
    """The names and rubrics of a prompt's worked example: a reply that repeats them is a copy, not an answer."""
    return set(re.findall(r'"(?:name|rubric)": "([^"]+)"', prompts.load(name)))


def reject_copies(parsed: dict, examples: set[str]) -> dict:
    """`parsed` unless its name or rubric repeats the prompt's worked example (small models copy it).

    >>> reject_copies({"name": "Poems", "rubric": "Vivid."}, {"poems"})
    Traceback (most recent call last):
    ...
    teachloop.llm.client.ParseError: reply copies the prompt's worked example
    """
    if prompts.repeats(parsed["name"], examples) or prompts.repeats(parsed["rubric"], examples):
        raise ParseError("reply copies the prompt's worked example")
    return parsed


def parse_categories(text: str, n_items: int) -> list[dict]:
    """Categories from an `llm`-mode reply; members must be task numbers 1..n_items.

    >>> parse_categories('{"categories": [{"name": "A", "members": [1, 2], "rubric": "r"}]}', 2)[0]["members"]
    [1, 2]
    """
    cats = _json_object(text).get("categories")
    if not isinstance(cats, list) or not cats:
        raise ParseError("'categories' must be a non-empty list")
    out = []
    for cat in cats:
        if not isinstance(cat, dict):
            raise ParseError("each category must be an object")
        members = cat.get("members")
        if not isinstance(members, list) or not all(isinstance(m, int) and 1 <= m <= n_items for m in members):
            raise ParseError(f"members must be task numbers between 1 and {n_items}")
        named = parse_named_rubric(json.dumps({"name": cat.get("name", ""), "rubric": cat.get("rubric", "")}))
        out.append({**named, "members": sorted(set(members))})
    return out


def kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster labels of the rows of `x` (scikit-learn k-means, k-means++ init, best of KMEANS_INITS runs).

    The rows are unit vectors, so squared Euclidean distance is 2 - 2 cos: k-means here groups by cosine. Labels
    are renumbered by first appearance (the first row is in cluster 0), so category numbers do not depend on
    the order in which the library happens to number its centres.
    """
    from sklearn.cluster import KMeans

    k = min(k, len(x))
    raw = KMeans(n_clusters=k, n_init=KMEANS_INITS, random_state=seed).fit_predict(np.asarray(x, dtype=np.float64))
    first_seen: dict[int, int] = {}
    for label in raw.tolist():
        first_seen.setdefault(label, len(first_seen))
    return np.array([first_seen[label] for label in raw.tolist()], dtype=int)


def _examples(records: list[dict], numbered: bool) -> str:
    lines = []
    for i, rec in enumerate(records, 1):
        text = text_of(rec).replace("\n", " ")[:300]
        lines.append(f"{i}. {text}" if numbered else f"- {text}")
    return "\n".join(lines)


def categories_by_cluster(records, vectors, cfg: RubricsConfig, teacher: LLM) -> list[dict]:
    labels = kmeans(vectors, cfg.k, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    copies = prompt_example_texts("rubric_cluster")
    groups = []  # (cluster, members, request): the seeded draws of shown examples stay in cluster order
    for j in sorted(set(labels.tolist())):
        members = [r for r, lab in zip(records, labels) if lab == j]
        shown = [members[i] for i in rng.permutation(len(members))[: cfg.examples_per_category]]
        prompt = prompts.render("rubric_cluster", examples=_examples(shown, numbered=False))
        groups.append((j, members, Request(prompt, max_tokens=cfg.max_tokens, json_schema=CLUSTER_SCHEMA, seed=cfg.seed)))
    results = teacher.map(lambda g: teacher.generate(g[2], lambda t: reject_copies(parse_named_rubric(t), copies),
                                                     attempts=cfg.attempts), groups)
    cats = []
    for (j, members, _), res in zip(groups, results):
        named = res.parsed if res.ok else {"name": f"category {j + 1}", "rubric": cfg.fallback_rubric}
        cats.append({"name": named["name"], "rubric": named["rubric"], "members": [r["id"] for r in members],
                     "ok": res.ok, "raw": res.raw, "error": res.error})
    return cats


def categories_by_llm(records, cfg: RubricsConfig, teacher: LLM) -> tuple[list[dict], list[str]]:
    """(categories, ids the teacher left unsorted); unsorted ids are assigned by embedding afterwards."""
    merged: dict[str, dict] = {}
    unsorted: list[str] = []
    copies = prompt_example_texts("rubric_llm")
    batches = [records[start : start + cfg.batch_size] for start in range(0, len(records), cfg.batch_size)]

    def ask(batch: list[dict]):
        prompt = prompts.render("rubric_llm", examples=_examples(batch, numbered=True))
        return teacher.generate(Request(prompt, max_tokens=cfg.max_tokens, seed=cfg.seed),
                                lambda t, n=len(batch): [reject_copies(c, copies) for c in parse_categories(t, n)],
                                attempts=cfg.attempts)

    for batch, res in zip(batches, teacher.map(ask, batches)):  # merged in batch order, whatever finished first
        placed = set()
        for cat in res.parsed or []:
            key = cat["name"].strip().lower()
            entry = merged.setdefault(key, {"name": cat["name"], "rubric": cat["rubric"], "members": [],
                                            "ok": True, "raw": [], "error": ""})
            entry["raw"].append(res.text)
            for m in cat["members"]:
                if m not in placed:
                    placed.add(m)
                    entry["members"].append(batch[m - 1]["id"])
        unsorted += [r["id"] for i, r in enumerate(batch, 1) if i not in placed]
    return list(merged.values()), unsorted


def assign(vectors: np.ndarray, categories: list[dict], index: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(category index, score matrix): score[i, c] = mean inner product of row i with category c's members."""
    scores = np.stack([vectors @ np.stack([index[m] for m in c["members"]]).T.mean(1) if c["members"]
                       else np.full(len(vectors), -np.inf) for c in categories], axis=1)
    return scores.argmax(1), scores


def summary_markdown(categories: list[dict], by_id: dict[str, dict], assigned_counts: dict[int, int]) -> str:
    lines = ["# Rubric clusters", "", "| # | category | train members | assigned (val/test/eval) |", "|---|---|---|---|"]
    for i, c in enumerate(categories):
        lines.append(f"| {i} | {c['name']} | {len(c['members'])} | {assigned_counts.get(i, 0)} |")
    for i, c in enumerate(categories):
        note = "" if c.get("ok", True) else " _(teacher failed: fallback rubric; raw replies in categories.json)_"
        lines += ["", f"## {i}. {c['name']}", "", f"Rubric:{note}", "", c["rubric"], "",
                  "Examples:"]
        lines += [f"- {by_id[m]['instruction'][:120]}" for m in c["members"][:3]]
    return "\n".join(lines) + "\n"


def rubric_lookup(rubric_dir) -> dict[str, dict]:
    """id -> {"category", "name", "rubric"} for every instruction the rubrics stage assigned."""
    from pathlib import Path

    from .data import read_json, read_jsonl

    cats = read_json(Path(rubric_dir) / "categories.json")
    out = {}
    for row in read_jsonl(Path(rubric_dir) / "assignments.jsonl"):
        cat = cats[row["category"]]
        out[row["id"]] = {"category": cat["id"], "name": cat["name"], "rubric": cat["rubric"]}
    return out
