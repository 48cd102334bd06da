"""Stage `citing_answer@R`: the round's sample of training instructions, answered by the previous student.

    python stages/citing_answer.py --round R --prepared DIR --rubrics DIR --adapter PREVIOUS_ADAPTER \
        --out JSONL --counts JSON        (dvc.yaml's citing_answer@R stages give the real paths)
Each row keeps the instruction id, its category and rubric id, and the student's answer.
"""
from __future__ import annotations

from pathlib import Path

import click
from teachloop import roles, runlog
from teachloop.config import load_section, read_params, run_stage
from teachloop.data import read_jsonl, split_path, write_jsonl
from teachloop.llm.client import counts_file
from teachloop.methods.citing import RoundConfig, sample_round
from teachloop.rubrics import rubric_lookup
from teachloop.student.prompting import record_prompt


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--round", "round_no", required=True, type=int, help="Round number (1-based).")
@click.option("--prepared", required=True, type=click.Path(exists=True, path_type=Path), help="The prepare stage's output dir.")
@click.option("--rubrics", "rubric_dir", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--adapter", required=True, type=click.Path(exists=True, path_type=Path),
              help="The previous round's adapter (round 1: the SFT adapter).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Answers JSONL to write.")
@click.option("--counts", "counts_path", required=True, type=click.Path(path_type=Path),
              help="Counts JSON to write (requests, re-asks, failures).")
def main(params: str, round_no: int, prepared: Path, rubric_dir: Path, adapter: Path, out: Path,
         counts_path: Path) -> None:
    """Sample the round's instructions and let the current student answer them."""
    p = read_params(params)
    cfg = load_section(p, "citing.round", RoundConfig)
    decode = roles.decode(p)
    student = roles.student_llm(p, adapter)
    lookup = rubric_lookup(rubric_dir)
    with runlog.timed(f"citing_answer@{round_no}") as extra, counts_file(counts_path, student) as counts:
        def one(rec: dict) -> dict:
            answer = student.complete(decode.request(record_prompt(rec))).strip()
            return {**rec, "round": round_no, "category": lookup[rec["id"]]["category"], "answer": answer}

        rows = student.map(one, sample_round(read_jsonl(split_path(prepared, "train")), cfg, round_no),
                           desc=f"round {round_no} answers")
        extra["llm"] = student.stats.as_dict()
        counts.update(answers=len(rows), empty=sum(not r["answer"] for r in rows))
    write_jsonl(out, rows)
    click.echo(f"round {round_no}: {len(rows)} answers; student {student.stats.as_dict()}")


if __name__ == "__main__":
    run_stage(main)
