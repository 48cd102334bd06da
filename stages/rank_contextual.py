"""Stage `rank_contextual@SET`: the teacher ranks all N candidates of an instruction in one prompt (Tuna_c).

    python stages/rank_contextual.py --candidates data/candidates/sft/candidates.jsonl \
        --out data/candidates/sft/contextual.jsonl
Replies that are not a permutation are re-asked, then recorded as failed (ranking: null) with their raw text.
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import roles
from teachloop.config import load_section, read_params
from teachloop.data import read_jsonl, write_json, write_jsonl
from teachloop.methods.ranking import ContextualConfig, rank_contextual


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--candidates", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="contextual.jsonl to write.")
def main(params: str, candidates: Path, out: Path) -> None:
    """Ask the teacher for one ranking of each instruction's candidates."""
    p = read_params(params)
    teacher = roles.teacher(p)
    items, counts = rank_contextual(teacher, read_jsonl(candidates), load_section(p, "contextual", ContextualConfig))
    write_jsonl(out, items)
    write_json(out.with_name("contextual_calls.json"), {**teacher.stats.as_dict(), **counts})
    click.echo(f"contextual ranking: {counts}")


if __name__ == "__main__":
    main()
