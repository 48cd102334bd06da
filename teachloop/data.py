"""Instruction data: load Alpaca JSON / JSONL, validate each row, dedupe, and split deterministically.

A record is a dict with `id`, `instruction`, `input`, `output` (and optional `task_type`, `source`). Ids are a hash
of the normalised instruction+input, so the same question keeps the same id across runs and files.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .config import ConfigError, one_of

REQUIRED = ("instruction", "output")
OPTIONAL_TEXT = ("input", "task_type", "id")


class DataError(ValueError):
    """A dataset row or file is malformed; the message names the file, the row and the problem."""


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


def read_rows(path: str | Path) -> Iterator[tuple[int, object]]:
    """(row number, raw row) from an Alpaca JSON array or a JSONL file; row numbers are 1-based."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (check prepare.sources / prepare.eval_sets in params.yaml)")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from e
        yield from enumerate(rows, 1)
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            yield n, DataError(f"invalid JSON ({e.msg} at column {e.colno})")


def validate_row(row: object, max_chars: int) -> dict:
    """The row as a clean record, or DataError naming the problem."""
    if isinstance(row, DataError):
        raise row
    if not isinstance(row, dict):
        raise DataError(f"expected an object with instruction/output, got {type(row).__name__}")
    for key in REQUIRED:
        if key not in row:
            raise DataError(f"missing field '{key}'")
    for key in REQUIRED + OPTIONAL_TEXT:
        if key in row and not isinstance(row[key], str):
            raise DataError(f"field '{key}' must be a string, got {type(row[key]).__name__}")
    for key in REQUIRED:
        if not row[key].strip():
            raise DataError(f"field '{key}' is empty")
    rec = {
        "instruction": row["instruction"].strip(),
        "input": row.get("input", "").strip(),
        "output": row["output"].strip(),
    }
    size = sum(len(v) for v in rec.values())
    if size > max_chars:
        raise DataError(f"row is {size} characters, over max_chars={max_chars}")
    rec["id"] = row.get("id") or make_id(rec["instruction"], rec["input"])
    if row.get("task_type"):
        rec["task_type"] = row["task_type"]
    return rec


def load_records(paths: Iterable[str], on_bad_row: str = "skip", max_chars: int = 4000) -> tuple[list, list]:
    """(records, rejected): valid unique records in file order, and one entry per rejected row with its reason."""
    records, rejected, seen = [], [], {}
    for path in paths:
        for n, row in read_rows(path):
            try:
                rec = validate_row(row, max_chars)
            except DataError as e:
                if on_bad_row == "fail":
                    raise DataError(f"{path} row {n}: {e} (set prepare.on_bad_row: skip to record and go on)") from e
                rejected.append({"source": str(path), "row": n, "reason": str(e)})
                continue
            key = make_id(rec["instruction"], rec["input"])
            if key in seen:
                rejected.append({"source": str(path), "row": n, "reason": f"duplicate of {seen[key]}"})
                continue
            seen[key] = f"{path} row {n}"
            rec["source"] = str(path)
            records.append(rec)
    return records, rejected


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
