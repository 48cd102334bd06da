"""Data preparation: every bad row gets a clear, located reason; splits are deterministic."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from teachloop.data import DataError, load_records, split_records, write_jsonl

BAD = Path(__file__).parent / "data" / "bad_rows.jsonl"


def test_bad_rows_are_rejected_with_file_row_and_reason():
    records, rejected = load_records([BAD], on_bad_row="skip")
    assert [r["instruction"] for r in records] == ["Name a prime number.", "Translate 'cat' to French."]
    reasons = {r["row"]: r["reason"] for r in rejected}
    assert reasons == {
        2: "field 'instruction' is empty",
        3: "missing field 'output'",
        4: "field 'output' must be a string, got int",
        5: reasons[5],
        6: "expected an object with instruction/output, got list",
        7: f"duplicate of {BAD} row 1",
        8: f"duplicate of {BAD} row 1",
        9: "field 'output' is empty",
    }
    assert reasons[5].startswith("invalid JSON")
    assert all(r["source"] == str(BAD) for r in rejected)


def test_fail_policy_stops_at_the_first_bad_row_naming_it():
    with pytest.raises(DataError, match=r"bad_rows.jsonl row 2: field 'instruction' is empty"):
        load_records([BAD], on_bad_row="fail")


def test_alpaca_json_and_missing_files(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Add 2 and 2.", "input": "", "output": "4"},
                                {"instruction": "Hi", "output": "Hello"}]))
    records, rejected = load_records([path])
    assert len(records) == 2 and not rejected and records[1]["input"] == ""
    with pytest.raises(DataError, match="file not found"):
        load_records([tmp_path / "missing.jsonl"])
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_records([broken])


def _split_bytes(records, seed, tmp_path, tag):
    out = {}
    for name, rows in split_records(records, [0.8, 0.1, 0.1], seed).items():
        write_jsonl(tmp_path / f"{tag}-{name}.jsonl", rows)
        out[name] = (tmp_path / f"{tag}-{name}.jsonl").read_bytes()
    return out


def test_split_is_deterministic_and_independent_of_file_order(tmp_path):
    records = [{"id": f"{i:04d}", "instruction": f"q{i}", "input": "", "output": "a"} for i in range(50)]
    first = _split_bytes(records, 13, tmp_path, "a")
    assert first == _split_bytes(list(reversed(records)), 13, tmp_path, "b")
    assert first != _split_bytes(records, 14, tmp_path, "c")
    sizes = {k: v.count(b"\n") for k, v in first.items()}
    assert sizes == {"train": 40, "val": 5, "test": 5}


def test_seed_data_meets_the_embedded_default_contract():
    root = Path(__file__).resolve().parent.parent / "data" / "seed"
    records, rejected = load_records(sorted((root / "train").glob("*.json*")))
    assert not rejected and len(records) >= 300
    assert len({r["task_type"] for r in records}) >= 8
    for name in ("reading", "factual", "commonsense"):
        rows, bad = load_records([root / "eval" / f"{name}.jsonl"])
        assert not bad and len(rows) >= 40
