"""Read the raw rows of an instruction-data file: an Alpaca JSON array, an array wrapped in an object, or JSONL.

Files are read as bytes so that every decoding problem has a place: a bad line of a JSONL file becomes one rejected
row naming its byte offset, and a file that cannot be read as a whole is a DataError naming the file.

    for n, row in read_rows("data/seed/train/part2.jsonl"):   # row is the parsed JSON value or a DataError
        ...
"""
from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Iterator

# Keys under which published instruction datasets commonly nest their rows ({"data": [...]} etc.).
WRAPPERS = ("data", "rows", "examples", "instances", "train")
# UTF-32 first: the UTF-32-LE mark begins with the UTF-16-LE one.
FOREIGN_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


class DataError(ValueError):
    """A dataset row or file is malformed; the message names the file, the row and the problem.

    `kind` is a short, stable category of the problem ("invalid JSON", "duplicate id", ...) that prepare counts.
    """

    def __init__(self, message: str, kind: str = "file"):
        super().__init__(message)
        self.kind = kind


def read_rows(path: str | Path) -> Iterator[tuple[int, object]]:
    """(row number, raw row) from a JSON array / wrapped array / JSONL file; row numbers are 1-based.

    For JSONL the row number is the line number, and a line that is not UTF-8 or not JSON comes out as a
    DataError in place of the row (the caller decides whether to skip it). Problems with the file as a whole
    (missing, binary, UTF-16, a JSON document that does not parse) raise DataError.
    """
    path = Path(path)
    data = _read_bytes(path)
    for bom, encoding in FOREIGN_BOMS:
        if data.startswith(bom):
            raise DataError(f"{path}: the file is {encoding} text (it starts with a {encoding} byte-order mark); "
                            f"prepare reads UTF-8: convert it, e.g. iconv -f {encoding} -t UTF-8")
    # A UTF-8 byte-order mark is legal but not JSON; editors on Windows add it. Offsets below still count it.
    base = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    data = data[base:]
    nul = data.find(b"\0")
    if nul >= 0:
        # Text in UTF-8 never holds a raw NUL (JSON escapes it as \u0000); binaries and BOM-less UTF-16 do.
        raise DataError(f"{path}: NUL byte at byte offset {nul + base}: this is a binary file or UTF-16/32 text, "
                        f"not UTF-8 JSON or JSONL; check the path in prepare.sources / prepare.eval_sets")
    # The lenient decode only decides the layout; strict decoding below locates any bad byte.
    rows = _document_rows(path, data.decode("utf-8", errors="replace"), data, base)
    if rows is None:
        yield from _jsonl_rows(data, base)
    else:
        yield from enumerate(rows, 1)


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataError(f"{path}: file not found (check prepare.sources / prepare.eval_sets in params.yaml)")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; list the JSON / JSONL files in it one by one")
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from e


def _check_utf8(path: Path, data: bytes, base: int) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: not valid UTF-8: byte 0x{data[e.start]:02x} at byte offset {e.start + base} "
                        f"(line {line}); re-save the file as UTF-8, e.g. iconv -f cp1252 -t UTF-8",
                        "invalid UTF-8") from e


def _document_rows(path: Path, text: str, data: bytes, base: int) -> list | None:
    """The rows if the file is one JSON document (an array, or an object wrapping one), None if it is JSONL."""
    head = text.lstrip()
    if not head.startswith(("[", "{")):
        return None
    if head.startswith("["):
        _check_utf8(path, data, base)  # report the bad byte before any JSON error it may cause
    try:
        value = json.loads(text)
    except RecursionError as e:
        raise DataError(f"{path}: JSON nested too deeply to be a list of rows") from e
    except json.JSONDecodeError as e:
        first = len(text) - len(head)
        first_line = text.count("\n", 0, first) + 1
        one_line_object = head.startswith("{") and head.split("\n", 1)[0].strip() != "{"
        # JSONL: the first object parses and more follow ("Extra data"), or the first line is itself a broken row.
        if head.startswith("{") and (e.msg == "Extra data" or (e.lineno == first_line and one_line_object)):
            return None
        _check_utf8(path, data, base)
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    _check_utf8(path, data, base)
    if isinstance(value, list):
        return value
    if not isinstance(value, dict):
        raise DataError(f"{path}: holds a single JSON {type(value).__name__}, expected a list of rows")
    found = [k for k in WRAPPERS if k in value]
    if len(found) > 1:
        raise DataError(f"{path}: rows under more than one of the keys {found}; keep one list per file")
    if found:
        rows = value[found[0]]
        if not isinstance(rows, list):
            raise DataError(f"{path}: '{found[0]}' holds a {type(rows).__name__}, expected a list of rows")
        return rows
    if "instruction" in value or "output" in value:
        return [value]  # a single row: one-line JSONL, or one pretty-printed object
    keys = ", ".join(repr(k) for k in sorted(value)[:10]) + (", ..." if len(value) > 10 else "")
    raise DataError(f"{path}: a JSON object with keys {keys} and no list of rows; expected a JSON array of rows, "
                    f"JSONL (one row per line), or an object with the rows under one of "
                    f"{', '.join(repr(k) for k in WRAPPERS)}")


def _jsonl_rows(data: bytes, base: int) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON or DataError) per non-blank line; bytes.splitlines splits only on \\n, \\r\\n, \\r,
    so a U+2028 inside a JSON string does not cut a row in two as str.splitlines would."""
    offset = base
    for n, chunk in enumerate(data.splitlines(keepends=True), 1):
        start, offset = offset, offset + len(chunk)
        raw = chunk.rstrip(b"\r\n")
        if not raw.strip():
            continue
        try:
            # A BOM mid-file is left over from concatenating files that each had one.
            line = raw.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as e:
            yield n, DataError(f"not valid UTF-8: byte 0x{raw[e.start]:02x} at byte offset {start + e.start} of the "
                               f"file (column {e.start + 1} of the line); re-save the file as UTF-8", "invalid UTF-8")
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            yield n, DataError(f"invalid JSON ({e.msg} at column {e.colno})", "invalid JSON")
        except RecursionError:
            yield n, DataError("invalid JSON (nested too deeply)", "invalid JSON")
