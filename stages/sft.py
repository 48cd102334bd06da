"""Stage `sft`: LoRA supervised fine-tuning of the student on train+val (loss on response tokens only).

    python stages/sft.py --prepared data/prepared --base models/base --out models/sft --log metrics/train/sft.tsv
Writes a standard PEFT adapter dir (plus adapter.gguf for llama.cpp) and OUT/train_summary.json.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import click

from teachloop.config import load_section, read_params
from teachloop.data import read_jsonl, write_json
from teachloop.methods.trainers import sft_loss_fn
from teachloop.student.prompting import record_prompt
from teachloop.student.train import TrainConfig, train_adapter


@dataclass
class SFTConfig:
    max_examples: int = 64  # cap on train+val examples (0 = all); keeps the 2-core default inside its budget
    seed: int = 3  # which examples the cap keeps
    train: TrainConfig = field(default_factory=TrainConfig)


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--prepared", required=True, type=click.Path(exists=True, path_type=Path), help="data/prepared")
@click.option("--base", "base_dir", required=True, type=click.Path(exists=True, path_type=Path), help="models/base")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Adapter output dir (models/sft).")
@click.option("--log", "log_path", required=True, type=click.Path(path_type=Path), help="Per-step loss TSV.")
def main(params: str, prepared: Path, base_dir: Path, out: Path, log_path: Path) -> None:
    """Fine-tune a fresh LoRA on (Alpaca prompt -> reference output) pairs."""
    cfg = load_section(read_params(params), "sft", SFTConfig)
    records = read_jsonl(prepared / "train.jsonl") + read_jsonl(prepared / "val.jsonl")
    if cfg.max_examples:
        records = random.Random(cfg.seed).sample(records, min(cfg.max_examples, len(records)))
    units = [{"prompt": record_prompt(r), "response": r["output"]} for r in records]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    summary = train_adapter(base_dir / "hf", units, lambda tok: sft_loss_fn(tok, cfg.train.max_len), cfg.train,
                            out, log_path=log_path, desc="sft")
    write_json(out / "train_summary.json", summary)
    click.echo(f"sft: {summary['units']} examples, {summary['steps']} steps, {summary['seconds']} s")


if __name__ == "__main__":
    main()
