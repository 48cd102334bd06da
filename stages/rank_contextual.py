"""Stage `rank_contextual@SET`: the teacher ranks all N candidates of an instruction in one prompt (Tuna_c).

    python stages/rank_contextual.py --candidates JSONL --out JSONL --counts JSON   (paths: dvc.yaml)
Replies that are not a permutation are re-asked, then recorded as failed (ranking: null) with their raw text.
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import roles, runlog
from teachloop.config import load_section, read_params, run_stage
from teachloop.data import read_jsonl, write_jsonl
from teachloop.llm.client import counts_file
from teachloop.methods.ranking import ContextualConfig, rank_contextual


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--candidates", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Ranked items JSONL to write.")
@click.option("--counts", "counts_path", required=True, type=click.Path(path_type=Path),
              help="Counts JSON to write (requests, re-asks, failures).")
def main(params: str, candidates: Path, out: Path, counts_path: Path) -> None:
    """Ask the teacher for one ranking of each instruction's candidates."""
    p = read_params(params)
    teacher = roles.teacher(p)
    with runlog.timed(f"rank_contextual:{candidates.parent.name}") as extra, \
            counts_file(counts_path, teacher) as stage_counts:
        items, counts = rank_contextual(teacher, read_jsonl(candidates), load_section(p, "contextual", ContextualConfig))
        extra["llm"] = teacher.stats.as_dict()
        stage_counts.update(counts)
    write_jsonl(out, items)
    click.echo(f"contextual ranking: {counts}")


if __name__ == "__main__":
    run_stage(main)
