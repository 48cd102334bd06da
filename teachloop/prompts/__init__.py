"""Prompt templates as files: `load(name)` reads `<name>.txt` beside this module; its first line is a version tag.

The version line (`# version: N`) is stripped from the text but kept in `version(name)`, so outputs can record
which prompt produced them and a changed prompt is a changed DVC dependency.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable

HERE = Path(__file__).parent


@lru_cache(maxsize=None)
def _read(name: str) -> tuple[str, str]:
    text = (HERE / f"{name}.txt").read_text(encoding="utf-8")
    first, _, rest = text.partition("\n")
    if not first.startswith("# version:"):
        raise ValueError(f"prompt {name}.txt must start with '# version: N'")
    return first.split(":", 1)[1].strip(), rest


def load(name: str) -> str:
    return _read(name)[1]


def version(name: str) -> str:
    return _read(name)[0]


def render(name: str, **fields: str) -> str:
    """The template with `{field}` slots filled; unknown braces in the values are left alone."""
    text = load(name)
    for key, value in fields.items():
        text = text.replace("{" + key + "}", value)
    return text


def normalise(text: str) -> str:
    """Lower-case words only: numbering and punctuation do not make a copied text new.

    >>> normalise("2. Is correct!")
    'is correct'
    """
    return re.sub(r"[\W\d_]+", " ", text.lower()).strip()


def repeats(reply: str, sources: Iterable[str], min_chars: int = 20) -> bool:
    """Whether `reply` merely repeats prompt text: equal to a source, or (if long enough to mean it) part of one.

    Small models copy a prompt's worked example or the rubric they were given instead of answering.

    >>> repeats("2. Is correct. 3. Is clear and brief.", ["1. Answers it. 2. Is correct. 3. Is clear and brief."])
    True
    >>> repeats("Paris is the capital.", ["1. Correct. 2. Clear."])
    False
    """
    text = normalise(reply)
    return any(text == normalise(s) or (len(text) >= min_chars and text in normalise(s)) for s in sources)
