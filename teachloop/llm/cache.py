"""Content-addressed cache of LLM calls, kept outside DVC outs so an interrupted stage resumes for free.

Key = sha256 of the whole request (operation, backend identity incl. model hash, prompt, sampling params, seed,
schema). Each entry is one small JSON file written to a temp name and renamed, so a kill at any moment leaves
either the old state or the complete entry, never a torn one.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_DIR = ".cache/llm"


def request_key(payload: dict) -> str:
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class CallCache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or os.environ.get("TEACHLOOP_CACHE", DEFAULT_DIR))

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        path = self._path(key)
        try:
            with path.open() as f:
                return json.load(f)["response"]
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, KeyError):
            return None  # unreadable entry (should not happen with atomic writes): treat as a miss

    def put(self, key: str, payload: dict, response: Any) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"request": payload, "response": response}, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
