"""Stage `sft`: LoRA supervised fine-tuning of the student on train+val (loss on response tokens only).

    python stages/sft.py --prepared DIR --base HF_DIR --out ADAPTER_DIR --live DIR   (paths: dvc.yaml)
Writes a standard PEFT adapter dir (plus adapter.gguf for llama.cpp) with OUT/train_summary.json, and the per-step
training metrics under LIVE (a dvclive dir: one TSV per metric and a summary).
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import runlog
from teachloop.config import load_section, read_params, run_stage
from teachloop.data import read_jsonl, split_path, write_json
from teachloop.methods import sft
from teachloop.student.train import train_adapter


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--prepared", required=True, type=click.Path(exists=True, path_type=Path), help="The prepare stage's output dir.")
@click.option("--base", "base_dir", required=True, type=click.Path(exists=True, path_type=Path), help="The base model's HF dir (weights + tokenizer).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Adapter output dir.")
@click.option("--live", "live_dir", required=True, type=click.Path(path_type=Path),
              help="dvclive dir for the per-step training metrics.")
def main(params: str, prepared: Path, base_dir: Path, out: Path, live_dir: Path) -> None:
    """Fine-tune a fresh LoRA on (Alpaca prompt -> reference output) pairs."""
    cfg = load_section(read_params(params), "sft", sft.Config)
    units, counts = sft.build_units(read_jsonl(split_path(prepared, "train")) + read_jsonl(split_path(prepared, "val")), cfg)
    with runlog.timed("sft") as times:
        summary = train_adapter(base_dir, units, lambda tok: sft.make_loss(tok, None, cfg.train.max_len, cfg.train.row_tokens),
                                cfg.train, out, live_dir=live_dir, desc="sft", lora_key="sft.train.lora", times=times)
    write_json(out / "train_summary.json", {**summary, **counts})
    click.echo(f"sft: {summary['units']} examples ({counts['skipped_empty']} empty skipped), {summary['steps']} steps")


if __name__ == "__main__":
    run_stage(main)
