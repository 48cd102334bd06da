"""Stage `prepare`: validate, dedupe and split the instruction data; validate the extra eval sets.

    python stages/prepare.py --out DIR   (the path: dvc.yaml)
Writes OUT/{train,val,test}.jsonl, OUT/eval/<name>.jsonl, OUT/rejected.jsonl and OUT/summary.json. Exits non-zero
(after writing rejected.jsonl and summary.json) when no training row or no row of an eval set survives validation.
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import runlog
from teachloop.config import load_section, read_params, run_stage
from teachloop.data import (DataError, PrepareConfig, count_kinds, eval_path, load_records, rows_by_source,
                            split_path, split_records, write_json, write_jsonl)


def empty_sets(cfg: PrepareConfig, records: list[dict], evals: dict[str, list[dict]]) -> list[str]:
    """What is left with no usable row, in words; later stages cannot run on an empty set."""
    problems = []
    if not records:
        problems.append(f"no usable training row in prepare.sources ({', '.join(cfg.sources)})")
    problems += [f"no usable row in eval set '{name}' ({cfg.eval_sets[name]})" for name, rows in evals.items()
                 if not rows]
    return problems


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output dir: splits, eval sets, rejected rows, summary.")
def main(params: str, out: Path) -> None:
    """Load prepare.sources, reject bad rows (policy prepare.on_bad_row), split 8:1:1 with prepare.seed."""
    cfg = load_section(read_params(params), "prepare", PrepareConfig)
    index: dict[str, str] = {}  # instruction+input key -> "file row N" of every training row
    try:
        with runlog.timed("prepare"):
            records, rejected = load_records(cfg.sources, cfg.on_bad_row, cfg.max_chars, index=index)
            evals = {}
            for name, path in cfg.eval_sets.items():
                rows, bad = load_records([path], cfg.on_bad_row, cfg.max_chars, overlap=index)
                rejected += bad
                evals[name] = [{**r, "eval_set": name} for r in rows]
    except DataError as e:
        raise click.ClickException(str(e)) from e
    per_source = rows_by_source([*cfg.sources, *cfg.eval_sets.values()],
                                records + [r for rows in evals.values() for r in rows])
    empty = [source for source, n in per_source.items() if n == 0]
    for source in empty:
        n_bad = sum(r["source"] == source for r in rejected)
        why = f"all {n_bad} rows rejected, reasons in {out / 'rejected.jsonl'}" if n_bad else "the file has no rows"
        click.echo(f"warning: {source} yielded no usable rows ({why})", err=True)
    splits = split_records(records, cfg.split, cfg.seed)
    summary = {"rows_ok": len(records), "rows_rejected": len(rejected), "rejected_by_kind": count_kinds(rejected),
               "rows_by_source": per_source, "n_empty_sources": len(empty),
               **{f"n_{k}": len(v) for k, v in splits.items()}, **{f"n_eval_{k}": len(v) for k, v in evals.items()}}
    write_jsonl(out / "rejected.jsonl", rejected)
    write_json(out / "summary.json", summary)
    if problems := empty_sets(cfg, records, evals):
        raise click.ClickException(f"{'; '.join(problems)}. Every rejected row and its reason is in "
                                   f"{out / 'rejected.jsonl'}; fix the data or the paths in params.yaml.")
    for name, rows in splits.items():
        write_jsonl(split_path(out, name), rows)
    for name, rows in evals.items():
        write_jsonl(eval_path(out, name), rows)
    click.echo(f"prepared {summary}")
    if rejected:
        click.echo(f"{len(rejected)} rows rejected ({summary['rejected_by_kind']}); reasons in "
                   f"{out / 'rejected.jsonl'}", err=True)


if __name__ == "__main__":
    run_stage(main)
