"""Stage `prepare`: validate, dedupe and split the instruction data; validate the extra eval sets.

    python stages/prepare.py --out data/prepared
Writes OUT/{train,val,test}.jsonl, OUT/eval/<name>.jsonl, OUT/rejected.jsonl and OUT/summary.json.
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop.config import load_section, read_params
from teachloop.data import (DataError, PrepareConfig, load_records, split_records, write_json,
                            write_jsonl)


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output dir (data/prepared).")
def main(params: str, out: Path) -> None:
    """Load prepare.sources, reject bad rows (policy prepare.on_bad_row), split 8:1:1 with prepare.seed."""
    cfg = load_section(read_params(params), "prepare", PrepareConfig)
    try:
        records, rejected = load_records(cfg.sources, cfg.on_bad_row, cfg.max_chars)
        splits = split_records(records, cfg.split, cfg.seed)
        evals = {}
        for name, path in cfg.eval_sets.items():
            rows, bad = load_records([path], cfg.on_bad_row, cfg.max_chars)
            rejected += bad
            evals[name] = [{**r, "eval_set": name} for r in rows]
    except DataError as e:
        raise click.ClickException(str(e)) from e
    for name, rows in splits.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    for name, rows in evals.items():
        write_jsonl(out / "eval" / f"{name}.jsonl", rows)
    write_jsonl(out / "rejected.jsonl", rejected)
    summary = {"rows_ok": len(records), "rows_rejected": len(rejected),
               **{f"n_{k}": len(v) for k, v in splits.items()}, **{f"n_eval_{k}": len(v) for k, v in evals.items()}}
    write_json(out / "summary.json", summary)
    click.echo(f"prepared {summary}")
    if rejected:
        click.echo(f"{len(rejected)} rows rejected; reasons in {out / 'rejected.jsonl'}", err=True)


if __name__ == "__main__":
    main()
