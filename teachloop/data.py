"""Instruction data: load Alpaca JSON / JSONL, validate each row, dedupe, and split deterministically.

A record is a dict with `id`, `instruction`, `input`, `output` (and optional `task_type`, `source`). A row's own
`id` (string or integer) is kept as a string; otherwise the id is a hash of the normalised instruction+input, so the
same question keeps the same id across runs and files. Reading files (encodings, wrappers) lives in datafiles.py.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping

from .config import ConfigError, one_of
from .datafiles import DataError, read_rows  # noqa: F401  (read_rows: part of this module's interface)

REQUIRED = ("instruction", "output")
OPTIONAL_TEXT = ("input", "task_type", "id")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # Unicode Cc, less \t \n \r


@dataclass
class PrepareConfig:
    sources: list[str] = field(default_factory=list)  # Alpaca JSON arrays or JSONL files
    on_bad_row: str = "skip"  # skip (record in the rejected report) | fail (stop at the first bad row)
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train/val/test fractions
    seed: int = 13  # split shuffle seed
    max_chars: int = 4000  # rows with a longer instruction+input+output are rejected (context budget)
    eval_sets: dict[str, str] = field(default_factory=dict)  # name -> JSONL path of an extra eval set

    def validate(self, where: str) -> None:
        one_of(self.on_bad_row, ("skip", "fail"), f"{where}.on_bad_row")
        if len(self.split) != 3 or abs(sum(self.split) - 1) > 1e-6 or min(self.split) < 0:
            raise ConfigError(f"{where}.split must be three non-negative fractions summing to 1, got {self.split}")
        if not self.sources:
            raise ConfigError(f"{where}.sources is empty: list at least one Alpaca JSON or JSONL file")


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def make_id(instruction: str, input_: str = "") -> str:
    return hashlib.sha1(f"{normalise(instruction)}\n{normalise(input_)}".encode()).hexdigest()[:12]


def _check_text(row: dict) -> None:
    """Reject C0/C1 control characters (bar tab, newline, carriage return): they are invisible in reports and
    some tokenizers drop or choke on them, so a row carrying one is almost always a broken export."""
    for key in REQUIRED + OPTIONAL_TEXT:
        value = row.get(key)
        if isinstance(value, str) and (m := CONTROL.search(value)):
            raise DataError(f"field '{key}' contains control character U+{ord(m.group()):04X} at character "
                            f"{m.start() + 1} (only tab, newline and carriage return are allowed)", "control character")


def validate_row(row: object, max_chars: int) -> dict:
    """The row as a clean record, or DataError naming the problem (its `kind` says which check failed)."""
    if isinstance(row, DataError):
        raise row
    if not isinstance(row, dict):
        raise DataError(f"expected an object with instruction/output, got {type(row).__name__}", "not an object")
    for key in REQUIRED:
        if key not in row:
            raise DataError(f"missing field '{key}'", "missing field")
    for key in REQUIRED + OPTIONAL_TEXT:
        # Integer ids are common in exported datasets; they are kept as strings so every id has one type.
        ok = (str, int) if key == "id" else str
        if key in row and (not isinstance(row[key], ok) or isinstance(row[key], bool)):
            expected = "a string or an integer" if key == "id" else "a string"
            raise DataError(f"field '{key}' must be {expected}, got {type(row[key]).__name__}", "wrong type")
    for key in REQUIRED:
        if not row[key].strip():
            raise DataError(f"field '{key}' is empty", "empty field")
    _check_text(row)
    rec = {
        "instruction": row["instruction"].strip(),
        "input": row.get("input", "").strip(),
        "output": row["output"].strip(),
    }
    size = sum(len(v) for v in rec.values())
    if size > max_chars:
        raise DataError(f"row is {size} characters, over max_chars={max_chars}", "too long")
    explicit = str(row.get("id", "")).strip()
    rec["id"] = explicit or make_id(rec["instruction"], rec["input"])
    if row.get("task_type"):
        rec["task_type"] = row["task_type"]
    return rec


def load_records(paths: Iterable[str], on_bad_row: str = "skip", max_chars: int = 4000, *,
                 index: dict[str, str] | None = None, overlap: Mapping[str, str] = MappingProxyType({})
                 ) -> tuple[list, list]:
    """(records, rejected): valid unique records in file order, and one entry per rejected row.

    A rejected entry is {source, row, reason, kind}. Rows repeating an earlier row's instruction+input are dropped
    (whatever the policy: the first copy is kept); so are rows whose instruction+input is a key of `overlap`
    (pass the training rows' `index` when loading an eval set, so no eval item was trained on). `index`, if
    given, is filled with instruction+input key -> "file row N" of every kept row.
    """
    records, rejected, ids = [], [], {}
    seen = {} if index is None else index
    for path in paths:
        for n, row in read_rows(path):
            try:
                rec = validate_row(row, max_chars)
                key = make_id(rec["instruction"], rec["input"])
                # Same id, different question: downstream joins by id would mix the two rows up.
                if key not in seen and key not in overlap and rec["id"] in ids:
                    raise DataError(f"duplicate id {rec['id']} of {ids[rec['id']]} "
                                    f"(a different instruction/input)", "duplicate id")
            except DataError as e:
                if on_bad_row == "fail":
                    raise DataError(f"{path} row {n}: {e} (set prepare.on_bad_row: skip to record and go on)",
                                    e.kind) from e
                rejected.append({"source": str(path), "row": n, "reason": str(e), "kind": e.kind})
                continue
            if key in seen:
                rejected.append({"source": str(path), "row": n, "reason": f"duplicate of {seen[key]}",
                                 "kind": "duplicate"})
                continue
            if key in overlap:
                rejected.append({"source": str(path), "row": n, "kind": "overlaps training",
                                 "reason": f"same instruction and input as training row {overlap[key]}"})
                continue
            seen[key] = ids[rec["id"]] = f"{path} row {n}"
            rec["source"] = str(path)
            records.append(rec)
    return records, rejected


def rows_by_source(paths: Iterable[str], records: Iterable[dict]) -> dict[str, int]:
    """Kept rows per source path, zero included (a source that yields nothing is a warning, not silence)."""
    counts = dict.fromkeys(map(str, paths), 0)
    for rec in records:
        counts[rec["source"]] = counts.get(rec["source"], 0) + 1
    return counts


def count_kinds(rejected: Iterable[dict]) -> dict[str, int]:
    """Rejected rows per kind of problem, sorted by kind (a stable summary.json)."""
    return dict(sorted(Counter(r["kind"] for r in rejected).items()))


def split_records(records: list[dict], fractions: list[float], seed: int) -> dict[str, list[dict]]:
    """Seeded shuffle by id (independent of file order), then cut into train/val/test."""
    ordered = sorted(records, key=lambda r: r["id"])
    random.Random(seed).shuffle(ordered)
    n = len(ordered)
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    return {
        "train": ordered[:n_train],
        "val": ordered[n_train : n_train + n_val],
        "test": ordered[n_train + n_val :],
    }


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def write_json(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


# The layout of the prepare stage's output dir (dvc.yaml names the dir; these names live here and nowhere else).
SPLITS = ("train", "val", "test")


def split_path(prepared: str | Path, split: str) -> Path:
    """The JSONL of one split (train / val / test) inside a prepared dir."""
    return Path(prepared) / f"{split}.jsonl"


def eval_path(prepared: str | Path, name: str) -> Path:
    """The JSONL of one extra eval set inside a prepared dir."""
    return Path(prepared) / "eval" / f"{name}.jsonl"


def eval_paths(prepared: str | Path) -> dict[str, Path]:
    """{eval set name: JSONL} of every extra eval set in a prepared dir, sorted by name."""
    return {p.stem: p for p in sorted((Path(prepared) / "eval").glob("*.jsonl"))}


def eval_records(prepared: str | Path) -> dict[str, list[dict]]:
    """{eval set: rows tagged with `eval_set`}: the held-out test split first, then every extra eval set."""
    sets = {"test": read_jsonl(split_path(prepared, "test"))}
    sets.update({name: read_jsonl(path) for name, path in eval_paths(prepared).items()})
    return {name: [{**r, "eval_set": name} for r in rows] for name, rows in sets.items()}


def cap_per_set(sets: dict[str, list[dict]], max_per_set: int, seed: int) -> dict[str, list[dict]]:
    """Each set cut to the same seeded subset of `max_per_set` items (0 = all, in file order).

    Drawn from the items sorted by id, so the subset depends on the set's content, not on its file order; every
    model that answers (and every planner that counts) gets the same items.
    """
    if not max_per_set:
        return sets
    return {k: random.Random(seed).sample(sorted(v, key=lambda r: r["id"]), min(max_per_set, len(v)))
            for k, v in sets.items()}
