"""Stage `citing_revise@R`: the teacher revises each student answer following the instruction's rubric.

    python stages/citing_revise.py --round R --answers JSONL --rubrics DIR --out JSONL --counts JSON   (paths: dvc.yaml)
Rows keep raw teacher replies beside the parsed revision; failed revisions are recorded (ok=false), not dropped.
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import roles, runlog
from teachloop.config import load_section, read_params, run_stage
from teachloop.data import read_json, read_jsonl, write_jsonl
from teachloop.llm.client import counts_file
from teachloop.methods.citing import RoundConfig, revise


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--round", "round_no", required=True, type=int, help="Round number (1-based).")
@click.option("--answers", required=True, type=click.Path(exists=True, path_type=Path), help="The round's answers JSONL.")
@click.option("--rubrics", "rubric_dir", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Revisions JSONL to write.")
@click.option("--counts", "counts_path", required=True, type=click.Path(path_type=Path),
              help="JSON of request and failure counts to write (a DVC out: no cache hits, no timings).")
def main(params: str, round_no: int, answers: Path, rubric_dir: Path, out: Path, counts_path: Path) -> None:
    """Ask the teacher for a rubric-guided revision of every answer of the round."""
    p = read_params(params)
    cfg = load_section(p, "citing.round", RoundConfig)
    teacher = roles.teacher(p)
    with runlog.timed(f"citing_revise@{round_no}") as log, counts_file(counts_path, teacher) as counts:
        cats = read_json(rubric_dir / "categories.json")

        def one(row: dict) -> dict:
            rubric = cats[row["category"]]["rubric"]
            return {**row, "rubric_id": row["category"], **revise(teacher, row, rubric, row["answer"], cfg)}

        rows = teacher.map(one, read_jsonl(answers), desc=f"round {round_no} revisions")
        write_jsonl(out, rows)
        failed = sum(not r["ok"] for r in rows)
        # A revision that only repeats the draft teaches the student nothing: the rate says how much the teacher did.
        same = sum(r["ok"] and r["revision"].strip() == r["answer"].strip() for r in rows)
        counts.update(revisions_failed=failed, revisions_equal_draft=same)
        log["llm"] = teacher.stats.as_dict()
    click.echo(f"round {round_no}: {len(rows) - failed} revisions ({same} equal to the draft), {failed} failed; teacher {teacher.stats.as_dict()}")


if __name__ == "__main__":
    run_stage(main)
