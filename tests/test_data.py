"""Data preparation: every bad row or file gets a clear, located reason; splits are deterministic.

tests/data/bad/ is a corpus of broken inputs (bad encodings, binary, BOMs, wrappers, duplicate ids, control
characters, eval items that repeat training rows); each is read by the library and by the real stage script.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from teachloop.data import DataError, load_records, read_jsonl, split_records, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
BAD = Path(__file__).parent / "data" / "bad_rows.jsonl"
CORPUS = Path("tests/data/bad")  # relative to ROOT, as params.yaml paths are


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


# ---- the bad-input corpus, through the library -------------------------------------------------------------------

def _load(name, **kw):
    return load_records([ROOT / CORPUS / name], **kw)


@pytest.mark.parametrize("name", ["bom.jsonl", "bom.json"])
def test_a_utf8_byte_order_mark_is_stripped(name):
    records, rejected = _load(name)
    assert len(records) == 2 and not rejected
    assert records[0]["instruction"] in ("Name a tree.", "Name a metal.")


def test_a_non_utf8_jsonl_line_is_a_rejected_row_naming_its_byte_offset():
    path = ROOT / CORPUS / "invalid_utf8.jsonl"
    offset = path.read_bytes().index(b"\xe9")
    records, rejected = _load("invalid_utf8.jsonl")
    assert [r["instruction"] for r in records] == ["Name a planet.", "Name an ocean."]
    assert [(r["row"], r["kind"]) for r in rejected] == [(2, "invalid UTF-8")]
    assert f"byte 0xe9 at byte offset {offset} of the file" in rejected[0]["reason"]
    located = rf"invalid_utf8.jsonl row 2: not valid UTF-8: byte 0xe9 at byte offset {offset} "
    with pytest.raises(DataError, match=located):
        _load("invalid_utf8.jsonl", on_bad_row="fail")


def test_file_level_problems_are_data_errors_naming_the_file():
    offset = (ROOT / CORPUS / "invalid_utf8.json").read_bytes().index(b"\xef")
    cases = {
        "invalid_utf8.json": rf"invalid_utf8.json: not valid UTF-8: byte 0xef at byte offset {offset} \(line 3\)",
        "garbage.bin": r"garbage.bin: NUL byte at byte offset 8: this is a binary file",
        "utf16.jsonl": r"utf16.jsonl: the file is UTF-16 text .* iconv -f UTF-16 -t UTF-8",
        "wrapped_unknown.json": r"wrapped_unknown.json: a JSON object with keys 'items', 'meta' and no list of rows;"
                                r".* under one of 'data', 'rows', 'examples', 'instances', 'train'",
    }
    for name, pattern in cases.items():
        with pytest.raises(DataError, match=pattern):
            _load(name)


def test_control_characters_are_rejected_but_tab_and_newlines_pass():
    records, rejected = _load("control_chars.jsonl")
    assert [r["instruction"] for r in records] == ["Two lines\nand a\ttab."]
    assert records[0]["output"] == "Fine.\r\nYes."
    assert [(r["row"], r["kind"]) for r in rejected] == [(1, "control character"), (2, "control character")]
    assert rejected[0]["reason"].startswith("field 'instruction' contains control character U+0000 at character 8")
    assert rejected[1]["reason"].startswith("field 'output' contains control character U+0007")


def test_duplicate_explicit_ids_with_other_questions_are_rejected_and_integer_ids_are_strings():
    records, rejected = _load("duplicate_ids.jsonl")
    src = str(ROOT / CORPUS / "duplicate_ids.jsonl")
    assert [(r["id"], r["instruction"]) for r in records] == [("q1", "Name a colour."), ("7", "Name a number.")]
    assert [(r["row"], r["kind"], r["reason"]) for r in rejected] == [
        (2, "duplicate id", f"duplicate id q1 of {src} row 1 (a different instruction/input)"),
        (3, "duplicate", f"duplicate of {src} row 1"),  # same question, same id: a plain duplicate
        (5, "duplicate id", f"duplicate id 7 of {src} row 4 (a different instruction/input)"),  # "7" == 7
    ]
    with pytest.raises(DataError, match=r"duplicate_ids.jsonl row 2: duplicate id q1 of"):
        _load("duplicate_ids.jsonl", on_bad_row="fail")
    records, rejected = _load("integer_id.jsonl")
    assert records[0]["id"] == "42" and not rejected


@pytest.mark.parametrize("key", ["data", "rows", "examples", "instances", "train"])
def test_wrapped_datasets_are_recognised(tmp_path, key):
    rows = [{"instruction": "Name a season.", "output": "Winter."}, {"instruction": "Name a month.", "output": "May."}]
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"meta": {"version": 1}, key: rows}, indent=2))
    records, rejected = load_records([path])
    assert [r["instruction"] for r in records] == ["Name a season.", "Name a month."] and not rejected
    records, rejected = _load("wrapped.json")
    assert len(records) == 2 and not rejected
    path.write_text(json.dumps({"data": rows, "train": rows}))
    with pytest.raises(DataError, match=r"rows under more than one of the keys \['data', 'train'\]"):
        load_records([path])
    path.write_text(json.dumps({"data": {"instruction": "x", "output": "y"}}))
    with pytest.raises(DataError, match="'data' holds a dict, expected a list of rows"):
        load_records([path])


def test_empty_files_yield_no_rows_and_no_error():
    assert _load("empty.jsonl") == ([], [])
    records, rejected = _load("all_bad.jsonl")
    assert records == [] and [r["kind"] for r in rejected] == ["missing field", "not an object", "invalid JSON",
                                                               "empty field"]


def test_eval_items_repeating_a_training_row_are_dropped():
    index, corpus = {}, ROOT / CORPUS
    train, _ = load_records([corpus / "good.jsonl"], index=index)
    assert set(index.values()) == {f"{corpus / 'good.jsonl'} row {n}" for n in (1, 2, 3)}
    rows, rejected = load_records([corpus / "eval_overlap.jsonl"], overlap=index)
    assert [r["instruction"] for r in rows] == ["Name a continent."]
    assert rejected == [{"source": str(corpus / "eval_overlap.jsonl"), "row": 1, "kind": "overlaps training",
                         "reason": f"same instruction and input as training row {corpus / 'good.jsonl'} row 1"}]
    assert len(index) == 3  # loading an eval set does not add to the training index


# ---- the bad-input corpus, through the stage script ----------------------------------------------------------------

def run_prepare(tmp_path, sources, eval_sets=None, on_bad_row="skip", out="out"):
    """Run stages/prepare.py on corpus files; (process, out dir). Never a traceback, whatever the input."""
    params = {"prepare": {"sources": [str(CORPUS / s) for s in sources], "on_bad_row": on_bad_row,
                          "split": [0.8, 0.1, 0.1], "seed": 13, "max_chars": 4000,
                          "eval_sets": {k: str(CORPUS / v) for k, v in (eval_sets or {}).items()}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "stages/prepare.py", "--params", str(tmp_path / "params.yaml"),
                           "--out", str(tmp_path / out)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "Traceback" not in proc.stderr + proc.stdout
    return proc, tmp_path / out


MIXED = ["good.jsonl", "bom.jsonl", "bom.json", "invalid_utf8.jsonl", "empty.jsonl", "all_bad.jsonl",
         "duplicate_ids.jsonl", "control_chars.jsonl", "wrapped.json", "integer_id.jsonl"]


def test_stage_keeps_usable_rows_counts_the_rest_and_warns_on_empty_sources(tmp_path):
    proc, out = run_prepare(tmp_path, MIXED, {"overlap": "eval_overlap.jsonl"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    kept = {"good.jsonl": 3, "bom.jsonl": 2, "bom.json": 2, "invalid_utf8.jsonl": 2, "empty.jsonl": 0,
            "all_bad.jsonl": 0, "duplicate_ids.jsonl": 2, "control_chars.jsonl": 1, "wrapped.json": 2,
            "integer_id.jsonl": 1}
    assert summary["rows_by_source"] == {**{str(CORPUS / k): n for k, n in kept.items()},
                                         str(CORPUS / "eval_overlap.jsonl"): 1}
    assert summary["rows_ok"] == sum(kept.values()) == summary["n_train"] + summary["n_val"] + summary["n_test"]
    assert summary["n_eval_overlap"] == 1
    assert summary["rejected_by_kind"] == {"control character": 2, "duplicate": 1, "duplicate id": 2,
                                           "empty field": 1, "invalid JSON": 1, "invalid UTF-8": 1,
                                           "missing field": 1, "not an object": 1, "overlaps training": 1}
    assert summary["rows_rejected"] == sum(summary["rejected_by_kind"].values())
    assert summary["n_empty_sources"] == 2
    assert f"warning: {CORPUS / 'empty.jsonl'} yielded no usable rows (the file has no rows)" in proc.stderr
    assert f"warning: {CORPUS / 'all_bad.jsonl'} yielded no usable rows (all 4 rows rejected" in proc.stderr
    rejected = read_jsonl(out / "rejected.jsonl")
    assert len(rejected) == summary["rows_rejected"]
    assert {"source": str(CORPUS / "eval_overlap.jsonl"), "row": 1, "kind": "overlaps training",
            "reason": f"same instruction and input as training row {CORPUS / 'good.jsonl'} row 1"} in rejected
    ids = [r["id"] for name in ("train", "val", "test") for r in read_jsonl(out / f"{name}.jsonl")]
    assert len(ids) == len(set(ids)) and {"q1", "7", "42"} <= set(ids)


def test_stage_output_is_byte_identical_across_runs(tmp_path):
    runs = [run_prepare(tmp_path, MIXED, {"overlap": "eval_overlap.jsonl"}, out=f"run{i}")[1] for i in (1, 2)]
    files = sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*.jsonl")) + [Path("summary.json")]
    assert len(files) == 6
    for f in files:
        assert (runs[0] / f).read_bytes() == (runs[1] / f).read_bytes(), f


@pytest.mark.parametrize("sources, eval_sets, message", [
    (["empty.jsonl", "all_bad.jsonl"], {}, "no usable training row in prepare.sources "
                                           f"({CORPUS / 'empty.jsonl'}, {CORPUS / 'all_bad.jsonl'})"),
    (["good.jsonl"], {"dup": "eval_all_overlap.jsonl"},
     f"no usable row in eval set 'dup' ({CORPUS / 'eval_all_overlap.jsonl'})"),
])
def test_stage_fails_clearly_when_a_set_is_left_empty(tmp_path, sources, eval_sets, message):
    proc, out = run_prepare(tmp_path, sources, eval_sets)
    assert proc.returncode != 0
    assert message in proc.stderr and f"{out / 'rejected.jsonl'}" in proc.stderr
    assert (out / "rejected.jsonl").exists() and not (out / "train.jsonl").exists()


@pytest.mark.parametrize("name, message", [
    ("garbage.bin", "garbage.bin: NUL byte at byte offset 8"),
    ("invalid_utf8.json", "invalid_utf8.json: not valid UTF-8: byte 0xef"),
    ("utf16.jsonl", "utf16.jsonl: the file is UTF-16 text"),
    ("wrapped_unknown.json", "wrapped_unknown.json: a JSON object with keys 'items', 'meta'"),
    ("missing.jsonl", "missing.jsonl: file not found"),
])
def test_stage_names_the_file_it_cannot_read(tmp_path, name, message):
    proc, _ = run_prepare(tmp_path, ["good.jsonl", name])
    assert proc.returncode != 0 and message in proc.stderr


def test_stage_fail_policy_stops_at_the_first_bad_row(tmp_path):
    proc, _ = run_prepare(tmp_path, ["good.jsonl", "control_chars.jsonl"], on_bad_row="fail")
    assert proc.returncode != 0
    assert f"{CORPUS / 'control_chars.jsonl'} row 1: field 'instruction' contains control character U+0000" \
        in proc.stderr
