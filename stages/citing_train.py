"""Stage `citing_train@R`: LoRA-tune the student to turn (instruction, rubric, own answer) into the revision.

    python stages/citing_train.py --round R --revisions JSONL --rubrics DIR --base HF_DIR --init PREVIOUS_ADAPTER \
        --out ADAPTER_DIR --live DIR     (dvc.yaml's citing_train@R stages give the real paths)
Training continues from the previous round's adapter; failed or empty revisions are skipped and counted.
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import runlog
from teachloop.config import load_section, read_params, run_stage
from teachloop.data import read_json, read_jsonl, write_json
from teachloop.methods import citing
from teachloop.student.train import TrainConfig, train_adapter


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--round", "round_no", required=True, type=int, help="Round number (1-based).")
@click.option("--revisions", required=True, type=click.Path(exists=True, path_type=Path), help="The round's revisions JSONL.")
@click.option("--rubrics", "rubric_dir", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--base", "base_dir", required=True, type=click.Path(exists=True, path_type=Path), help="The base model's HF dir (weights + tokenizer).")
@click.option("--init", "init_adapter", required=True, type=click.Path(exists=True, path_type=Path),
              help="Adapter to continue from (round 1: the SFT adapter).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Adapter output dir.")
@click.option("--live", "live_dir", required=True, type=click.Path(path_type=Path),
              help="dvclive dir for the per-step training metrics.")
def main(params: str, round_no: int, revisions: Path, rubric_dir: Path, base_dir: Path, init_adapter: Path,
         out: Path, live_dir: Path) -> None:
    """Train on the round's (instruction, rubric, answer) -> revision examples."""
    cfg = load_section(read_params(params), "citing.train", TrainConfig)
    units, counts = citing.build_units(read_jsonl(revisions), read_json(rubric_dir / "categories.json"))
    if not units:
        raise click.ClickException(f"round {round_no}: no usable revisions in {revisions} ({counts}); "
                                   f"check the citing_revise stage's failures")
    with runlog.timed(f"citing_train@{round_no}") as times:
        summary = train_adapter(base_dir, units, lambda tok: citing.make_loss(tok, None, cfg.max_len, cfg.row_tokens), cfg,
                                out, init_adapter=init_adapter, live_dir=live_dir, desc=f"citing round {round_no}",
                                lora_key="citing.train.lora", times=times)
    write_json(out / "train_summary.json", {**summary, **counts})
    click.echo(f"round {round_no}: {counts}")


if __name__ == "__main__":
    run_stage(main)
