"""The run log: wall times and cache hits of each stage run, kept outside DVC so they never change an output hash.

Every stage appends one JSON line (stage, seconds, and whatever else is run-dependent, e.g. how many LLM calls
the cache answered) to `.cache/runlog.jsonl` (or `$TEACHLOOP_RUNLOG`). The README's "where the time goes" table
is read from it; DVC outs hold only what is a function of the stage's inputs.

    with runlog.timed("sft") as extra:
        ...
        extra["llm"] = llm.stats.as_dict()
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DEFAULT_PATH = ".cache/runlog.jsonl"


def path() -> Path:
    return Path(os.environ.get("TEACHLOOP_RUNLOG", DEFAULT_PATH))


def record(stage: str, **fields) -> None:
    """Append one line for `stage` (a single short write, so concurrent stages do not interleave lines)."""
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"stage": stage, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}, sort_keys=True)
    with target.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


@contextmanager
def timed(stage: str) -> Iterator[dict]:
    """Time the block and record it with whatever the block put into the yielded dict; nothing on failure."""
    extra: dict = {}
    start = time.time()
    yield extra
    record(stage, seconds=round(time.time() - start, 1), **extra)


def read(target: str | Path | None = None) -> list[dict]:
    target = Path(target) if target else path()
    if not target.exists():
        return []
    return [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines() if line.strip()]
