"""Stage `citing_train@R`: LoRA-tune the student to turn (instruction, rubric, own answer) into the revision.

    python stages/citing_train.py --round 2 --revisions data/rounds/2/revisions.jsonl --rubrics data/rubrics \
        --base models/base --init models/citing/1 --out models/citing/2 --log metrics/train/citing_2.tsv
Training continues from the previous round's adapter; failed revisions are skipped and counted.
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop.config import load_section, read_params
from teachloop.data import read_json, read_jsonl, write_json
from teachloop.methods.citing import training_unit
from teachloop.methods.trainers import sft_loss_fn
from teachloop.student.train import TrainConfig, train_adapter


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--round", "round_no", required=True, type=int, help="Round number (1-based).")
@click.option("--revisions", required=True, type=click.Path(exists=True, path_type=Path), help="revisions.jsonl")
@click.option("--rubrics", "rubric_dir", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--base", "base_dir", required=True, type=click.Path(exists=True, path_type=Path), help="models/base")
@click.option("--init", "init_adapter", required=True, type=click.Path(exists=True, path_type=Path),
              help="Adapter to continue from (round 1: models/sft).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Adapter output dir.")
@click.option("--log", "log_path", required=True, type=click.Path(path_type=Path), help="Per-step loss TSV.")
def main(params: str, round_no: int, revisions: Path, rubric_dir: Path, base_dir: Path, init_adapter: Path,
         out: Path, log_path: Path) -> None:
    """Train on the round's (instruction, rubric, answer) -> revision examples."""
    cfg = load_section(read_params(params), "citing.train", TrainConfig)
    cats = read_json(rubric_dir / "categories.json")
    rows = read_jsonl(revisions)
    units = [training_unit(r, cats[r["rubric_id"]]["rubric"], r["answer"], r["revision"]) for r in rows if r["ok"]]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    summary = train_adapter(base_dir / "hf", units, lambda tok: sft_loss_fn(tok, cfg.max_len), cfg, out,
                            init_adapter=init_adapter, log_path=log_path, desc=f"citing round {round_no}")
    write_json(out / "train_summary.json", {**summary, "skipped_failed_revisions": len(rows) - len(units)})
    click.echo(f"round {round_no}: trained on {len(units)} revisions ({len(rows) - len(units)} failed, skipped)")


if __name__ == "__main__":
    main()
