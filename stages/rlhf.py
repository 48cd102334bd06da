"""Stage `rlhf`: online policy optimisation of the SFT adapter against the reward model (the RLHF row).

    python stages/rlhf.py --prepared DIR --base HF_DIR --init ADAPTER_DIR --reward DIR --out ADAPTER_DIR --live DIR
(paths: dvc.yaml). Each iteration samples the policy on training prompts, scores the samples with the reward
model and takes clipped policy-gradient steps with a KL penalty to SFT (`teachloop.methods.rlhf` says which
algorithm and why). Writes a PEFT adapter dir (plus adapter.gguf) with OUT/train_summary.json.
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import runlog
from teachloop.config import load_section, read_params, run_stage
from teachloop.data import read_jsonl, split_path, write_json
from teachloop.methods import rlhf


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--prepared", required=True, type=click.Path(exists=True, path_type=Path),
              help="The prepare stage's output dir (prompts come from its train split).")
@click.option("--base", "base_dir", required=True, type=click.Path(exists=True, path_type=Path),
              help="The base model's HF dir (weights + tokenizer).")
@click.option("--init", "init_adapter", required=True, type=click.Path(exists=True, path_type=Path),
              help="The adapter the policy starts from, and the KL penalty's reference (SFT).")
@click.option("--reward", "reward_dir", required=True, type=click.Path(exists=True, path_type=Path),
              help="The reward stage's model dir.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Adapter output dir.")
@click.option("--live", "live_dir", required=True, type=click.Path(path_type=Path),
              help="dvclive dir for the per-step training metrics.")
def main(params: str, prepared: Path, base_dir: Path, init_adapter: Path, reward_dir: Path, out: Path,
         live_dir: Path) -> None:
    """Iterations of sample -> reward -> clipped updates, from the SFT adapter."""
    cfg = load_section(read_params(params), "rlhf", rlhf.Config)
    records = read_jsonl(split_path(prepared, "train"))
    with runlog.timed("rlhf") as times:
        summary = rlhf.train_policy(base_dir, init_adapter, reward_dir, records, cfg, out, live_dir=live_dir,
                                    times=times)
    write_json(out / "train_summary.json", summary)
    rewards = ", ".join(f"{r['reward']:.3f}" for r in summary["rollouts"])
    click.echo(f"rlhf: {cfg.iterations} iterations, {summary['steps']} steps; mean reward per iteration: {rewards}")


if __name__ == "__main__":
    run_stage(main)
