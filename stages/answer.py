"""Stage `answer@MODEL`: a trained student answers the four eval sets (greedy, budget in student.decode).

    python stages/answer.py --name NAME --adapter ADAPTER --mode plain|citing --prepared DIR --rubrics DIR \
        --out DIR --counts JSON          (dvc.yaml's answer@NAME stages give the real paths)
Writes OUT/<eval_set>.jsonl (id, eval_set, instruction, input, answer, model) and the counts to --counts.
`--mode citing` answers as CITING's student does at inference: draft, then revise with the retrieved rubric.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
from teachloop import roles, runlog
from teachloop.config import ConfigError, load_section, read_params, run_stage
from teachloop.data import cap_per_set, eval_records, write_jsonl
from teachloop.llm.client import counts_file
from teachloop.methods.citing import answer_with_rubric
from teachloop.rubrics import rubric_lookup
from teachloop.student.prompting import record_prompt


@dataclass
class AnswerConfig:
    max_per_set: int = 6  # items per eval set (0 = all); the judge's cost grows with this
    seed: int = 17  # which items the cap keeps (same items for every model)
    citing_revisions: int = 1  # CITING at inference: rubric-guided self-revisions after the draft


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--name", required=True, help="Model name used in comparisons (e.g. sft, citing_r3, dpo).")
@click.option("--adapter", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="PEFT adapter dir; the base stage's HF dir (no adapter_config.json) = the untuned base model.")
@click.option("--mode", type=click.Choice(["plain", "citing"]), default="plain", show_default=True,
              help="plain: one greedy answer; citing: draft + rubric-guided revisions.")
@click.option("--prepared", required=True, type=click.Path(exists=True, path_type=Path), help="The prepare stage's output dir.")
@click.option("--rubrics", "rubric_dir", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output dir: one <eval_set>.jsonl per set.")
@click.option("--counts", "counts_path", required=True, type=click.Path(path_type=Path),
              help="Counts JSON to write (requests, re-asks, failures).")
def main(params: str, name: str, adapter: Path, mode: str, prepared: Path, rubric_dir: Path, out: Path,
         counts_path: Path) -> None:
    """Answer every eval item with the given adapter."""
    p = read_params(params)
    cfg = load_section(p, "answer", AnswerConfig)
    decode = roles.decode(p)
    if not roles.is_adapter_dir(adapter) and not (adapter / "config.json").exists():
        raise ConfigError(f"--adapter {adapter}: neither a PEFT adapter dir (adapter_config.json) nor the base "
                          "model's HF dir (config.json); evaluate.models names one of them per model")
    student = roles.student_llm(p, adapter if roles.is_adapter_dir(adapter) else None)
    lookup = rubric_lookup(rubric_dir) if mode == "citing" else {}
    n_answers = n_empty = 0
    with runlog.timed(f"answer@{name}") as extra, counts_file(counts_path, student) as counts:
        for set_name, rows in cap_per_set(eval_records(prepared), cfg.max_per_set, cfg.seed).items():
            def one(rec: dict, set_name: str = set_name) -> dict:
                if mode == "citing":
                    got = answer_with_rubric(student, rec, lookup[rec["id"]]["rubric"], decode, cfg.citing_revisions)
                else:
                    got = {"answer": student.complete(decode.request(record_prompt(rec))).strip()}
                return {"id": rec["id"], "eval_set": set_name, "instruction": rec["instruction"],
                        "input": rec.get("input", ""), "model": name, **got}

            answered = student.map(one, rows, desc=f"{name} {set_name}")
            write_jsonl(out / f"{set_name}.jsonl", answered)
            n_answers, n_empty = n_answers + len(answered), n_empty + sum(not r["answer"] for r in answered)
        extra["llm"] = student.stats.as_dict()
        counts.update(answers=n_answers, empty=n_empty)
    click.echo(f"{name}: answered; student {student.stats.as_dict()}")


if __name__ == "__main__":
    run_stage(main)
