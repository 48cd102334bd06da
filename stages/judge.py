"""Stage `judge`: pairwise LLM judging of method A's answers against method B's, both orders, three criteria.

    python stages/judge.py --a-dir DIR --b-dir DIR --a-name A --b-name B --out DIR --counts JSON
(dvc.yaml's judge@A_vs_B stages give the real paths)
Writes OUT/verdicts.jsonl (one row per instruction and criterion, raw judge output beside the verdicts) and
the judge's counts to --counts. `--reparse` recomputes OUT/verdicts.jsonl from its stored raw output under
the current judge params (tie_margin, parser) without a single LLM call.
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import judge, runlog
from teachloop.config import load_section, read_params, run_stage
from teachloop.data import read_jsonl, write_jsonl
from teachloop.llm import make_llm
from teachloop.llm.client import counts_file
from teachloop.metrics import ordered


def load_answers(answer_dir: Path, name: str) -> dict[str, list[dict]]:
    """{eval_set: answer rows} from DIR/<eval_set>.jsonl, each row tagged with its file's eval set."""
    sets = {p.stem: p for p in answer_dir.glob("*.jsonl")}
    if not sets:
        raise click.ClickException(f"{answer_dir}: no <eval_set>.jsonl answer files for {name}")
    return {s: [{**r, "eval_set": r.get("eval_set") or s} for r in read_jsonl(sets[s])] for s in ordered(sets)}


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file (sections: judge).")
@click.option("--a-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Answers of the method of interest (an answer stage's output dir).")
@click.option("--b-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Answers of the method compared against.")
@click.option("--a-name", help="Model name of A (e.g. citing_r3).")
@click.option("--b-name", help="Model name of B (e.g. sft).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output dir (verdicts.jsonl inside).")
@click.option("--counts", "counts_path", type=click.Path(path_type=Path),
              help="Counts JSON to write (requests, re-asks, failures); required unless --reparse.")
@click.option("--reparse", is_flag=True, help="Redo verdicts from OUT/verdicts.jsonl's raw output; no LLM calls.")
def main(params: str, a_dir: Path | None, b_dir: Path | None, a_name: str | None, b_name: str | None, out: Path,
         counts_path: Path | None, reparse: bool) -> None:
    """Judge every instruction answered by both A and B, in both orders, on each of judge.criteria."""
    cfg = load_section(read_params(params), "judge", judge.JudgeConfig)
    if reparse:
        path = out / "verdicts.jsonl"
        if not path.exists():
            raise click.ClickException(f"{path} not found: nothing to re-parse (run the judge first)")
        records = judge.reparse(read_jsonl(path), cfg)
        write_jsonl(path, records)
        click.echo(f"re-parsed {len(records)} verdicts in {path}; {sum(r['failed'] for r in records)} failed")
        return
    missing = [o for o, v in (("--a-dir", a_dir), ("--b-dir", b_dir), ("--a-name", a_name), ("--b-name", b_name),
                              ("--counts", counts_path)) if not v]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (only --reparse works without them)")
    a_sets, b_sets = load_answers(a_dir, a_name), load_answers(b_dir, b_name)
    only = sorted(set(a_sets) ^ set(b_sets))
    if only:
        click.echo(f"eval sets answered by one side only, skipped: {only}", err=True)
    common = [s for s in a_sets if s in b_sets]
    if not common:
        raise click.ClickException(f"{a_dir} and {b_dir} share no eval set")
    llm = make_llm(cfg.llm, "judge")
    with runlog.timed(f"judge@{a_name}_vs_{b_name}") as extra, counts_file(counts_path, llm) as counts:
        records = judge.judge_answers(llm, cfg, [r for s in common for r in a_sets[s]],
                                      [r for s in common for r in b_sets[s]], a_name, b_name)
        extra["llm"] = llm.stats.as_dict()
        counts.update(judgements=len(records), failed_judgements=sum(r["verdict"] is None for r in records))
    write_jsonl(out / "verdicts.jsonl", records)
    tally = {v: sum(r["verdict"] == v for r in records) for v in ("win", "tie", "loss", None)}
    click.echo(f"{a_name} vs {b_name}: {len(records)} judgements over {common}; win {tally['win']}, "
               f"tie {tally['tie']}, loss {tally['loss']}, failed {tally[None]}; judge {llm.stats.as_dict()}")


if __name__ == "__main__":
    run_stage(main)
