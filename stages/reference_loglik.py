"""Stage `reference_loglik@MODEL`: the student's mean token log-likelihood of every eval item's reference answer.

    python stages/reference_loglik.py --name NAME --adapter DIR --base HF_DIR --prepared DIR --out JSONL
                                                                                       (paths: dvc.yaml)
One teacher-forced pass per item (no generation, no judge call), so it covers every item of every eval set by
default: the measure with the most items, and the one that can separate models whose answers a small judge cannot.
`--adapter` may be the base HF dir itself (no adapter_config.json): then the untuned base model is scored.
Writes one row per item, in eval-set order: {eval_set, id, loglik}.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from teachloop import roles, runlog
from teachloop.config import ConfigError, load_section, one_of, read_params, run_stage
from teachloop.student.launch import DEVICES
from teachloop.data import cap_per_set, eval_records, write_jsonl


@dataclass
class LoglikConfig:
    """params.yaml `reference`: how the reference log-likelihood is computed."""

    dtype: str = "bfloat16"  # bfloat16 halves the CPU time on AVX512-BF16/AMX CPUs (mean moves ~3e-4); float32 exact
    batch_size: int = 8  # items per forward pass (sorted by length, so padding stays small)
    max_len: int = 256  # tokens per item; the prompt is cut from the left, as in training
    max_per_set: int = 0  # items per eval set (0 = all): a cap for quick checks, not for reported figures
    seed: int = 17
    threads: int = 2  # torch CPU threads (runtime; the same count keeps the bytes the same)
    device: str = "auto"  # runtime: auto (cuda > mps > cpu) | cuda | mps | cpu, as training's `device`

    def validate(self, where: str) -> None:
        one_of(self.dtype, ("bfloat16", "float32"), f"{where}.dtype")
        one_of(self.device, DEVICES, f"{where}.device")
        if self.batch_size < 1 or self.max_len < 8 or self.max_per_set < 0:
            raise ConfigError(f"{where}: need batch_size >= 1, max_len >= 8, max_per_set >= 0")


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file (section: reference).")
@click.option("--name", required=True, help="Model name (as in evaluate.models).")
@click.option("--adapter", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="PEFT adapter dir, or the base HF dir itself for the untuned base model.")
@click.option("--base", "base_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The base model's HF dir.")
@click.option("--prepared", required=True, type=click.Path(exists=True, path_type=Path), help="The prepare stage's output dir.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="JSONL of per-item scores to write.")
def main(params: str, name: str, adapter: Path, base_dir: Path, prepared: Path, out: Path) -> None:
    """Score every eval item's reference answer under the model NAME."""
    import torch

    from teachloop.reference import reference_loglik
    from teachloop.student.launch import device_name
    from teachloop.student.model import load_student, load_tokenizer
    from teachloop.student.train import deterministic

    cfg = load_section(read_params(params), "reference", LoglikConfig)
    if not roles.is_adapter_dir(adapter) and adapter.resolve() != base_dir.resolve():
        raise ConfigError(f"--adapter {adapter}: no adapter_config.json there, and it is not the base dir "
                          f"{base_dir}; name a PEFT adapter dir, or the base dir to score the untuned model")
    items = [r for rows in cap_per_set(eval_records(prepared), cfg.max_per_set, cfg.seed).values() for r in rows]
    # Length-sorted batches: similar lengths share a batch, so almost no compute goes to padding. Order is
    # restored by writing rows keyed by item, in the original order.
    order = sorted(range(len(items)), key=lambda i: (len(items[i]["instruction"]) + len(items[i].get("input", ""))
                                                      + len(items[i]["output"]), items[i]["id"]))
    device = torch.device(device_name(cfg.device))
    with runlog.timed(f"reference_loglik@{name}"), deterministic(cfg.threads, strict=device.type == "cpu"):
        tok = load_tokenizer(base_dir)
        dtype = getattr(torch, cfg.dtype)  # the base is read straight into it: no fp32 copy first
        if roles.is_adapter_dir(adapter):
            model = load_student(base_dir, adapter, trainable=False, dtype=dtype)
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
        model = model.to(device=device, dtype=dtype)  # the (fp32) adapter too: scoring has no master weights to keep
        scores = reference_loglik(model, tok, [items[i] for i in order], cfg.max_len, cfg.batch_size)
    by_index = dict(zip(order, scores))
    write_jsonl(out, [{"eval_set": r["eval_set"], "id": r["id"], "loglik": round(by_index[i], 6)}
                      for i, r in enumerate(items)])
    click.echo(f"{name}: {len(items)} reference answers scored, mean log-likelihood "
               f"{sum(scores) / max(len(scores), 1):.4f}")


if __name__ == "__main__":
    run_stage(main)
