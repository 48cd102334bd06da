"""Stage `score_probabilistic@SET`: the teacher's length-normalised log-probability of every candidate (Tuna_p).

    python stages/score_probabilistic.py --candidates JSONL --out JSONL --counts JSON   (paths: dvc.yaml)
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import roles, runlog
from teachloop.config import load_section, read_params, run_stage
from teachloop.data import read_jsonl, write_jsonl
from teachloop.llm import BackendError, LLMConfig
from teachloop.llm.client import counts_file
from teachloop.methods.ranking import check_can_score, rank_probabilistic


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--candidates", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Scored items JSONL to write.")
@click.option("--counts", "counts_path", required=True, type=click.Path(path_type=Path),
              help="Counts JSON to write (requests, re-asks, failures).")
def main(params: str, candidates: Path, out: Path, counts_path: Path) -> None:
    """Score each candidate by the teacher's mean token log-probability and rank best..worst."""
    p = read_params(params)
    check_can_score(load_section(p, "teacher", LLMConfig))
    teacher = roles.teacher(p)
    with runlog.timed(f"score_probabilistic:{candidates.parent.name}") as extra, \
            counts_file(counts_path, teacher) as stage_counts:
        try:
            items, counts = rank_probabilistic(teacher, read_jsonl(candidates), p["probabilistic"]["length_penalty"])
        except BackendError as e:
            raise click.ClickException(str(e)) from e
        extra["llm"] = teacher.stats.as_dict()
        stage_counts.update(counts)
    write_jsonl(out, items)
    click.echo(f"probabilistic ranking: {counts}")


if __name__ == "__main__":
    run_stage(main)
