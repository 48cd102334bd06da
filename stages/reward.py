"""Stage `reward`: train the RLHF row's reward model on the teacher's preferences over the student's candidates.

    python stages/reward.py --ranked JSONL --base HF_DIR --out DIR --live DIR --metrics JSON   (paths: dvc.yaml)
A fresh LoRA on the base with a scalar head, Bradley-Terry loss on ranked pairs (`teachloop.methods.reward`);
the held-out items' pairwise accuracy goes to METRICS (a DVC metric), the per-step training values to LIVE.
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import runlog
from teachloop.config import load_section, read_params, run_stage
from teachloop.data import read_jsonl, write_json
from teachloop.methods import reward
from teachloop.student.checkpoint import Checkpoints
from teachloop.student.model import load_tokenizer
from teachloop.student.train import deterministic, train


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--ranked", required=True, type=click.Path(exists=True, path_type=Path),
              help="Ranked candidates (.jsonl from a ranking stage).")
@click.option("--base", "base_dir", required=True, type=click.Path(exists=True, path_type=Path),
              help="The base model's HF dir (weights + tokenizer).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Reward model output dir.")
@click.option("--live", "live_dir", required=True, type=click.Path(path_type=Path),
              help="dvclive dir for the per-step training metrics.")
@click.option("--metrics", "metrics_out", required=True, type=click.Path(path_type=Path),
              help="JSON for the held-out pairwise accuracy (a DVC metric).")
def main(params: str, ranked: Path, base_dir: Path, out: Path, live_dir: Path, metrics_out: Path) -> None:
    """Split the ranked items, train on the train pairs, measure accuracy on the held-out pairs."""
    cfg = load_section(read_params(params), "reward", reward.Config)
    t = cfg.train
    units, heldout, counts = reward.build_units(read_jsonl(ranked), cfg)
    with runlog.timed("reward") as times:
        checkpoints = Checkpoints.for_run(base_dir, None, units, t, "reward") if t.save_every else None
        tokenizer = load_tokenizer(base_dir)
        model = reward.new_model(base_dir, t)
        summary = train(model, units, reward.make_loss(tokenizer, cfg, t.max_len, t.row_tokens), t,
                        live_dir=live_dir, desc="reward", times=times, checkpoints=checkpoints)
        with deterministic(t.threads, strict=next(model.parameters()).device.type == "cpu"):
            acc = reward.accuracy(model, tokenizer, heldout, t.max_len, row_tokens=t.row_tokens)
    reward.save(model.to("cpu"), out)
    if checkpoints:
        checkpoints.clear()
    write_json(out / "train_summary.json", {**summary, **counts, "heldout_accuracy": acc})
    write_json(metrics_out, {"heldout_accuracy": round(acc, 4), "heldout_pairs": counts["heldout_pairs"]})
    click.echo(f"reward: {counts['train_pairs']} train pairs, {summary['steps']} steps; held-out accuracy "
               f"{acc:.3f} on {counts['heldout_pairs']} pairs")


if __name__ == "__main__":
    run_stage(main)
