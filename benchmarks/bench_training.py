"""Benchmark the student's training on the default SFT data against TRL's `SFTTrainer`, in one session:

1. training tokens/s (real tokens: prompt + response, no padding; median per step) of the project's loop, packed and padded, and of
   TRL `SFTTrainer` on the same units, LoRA, learning rate, batch size and max length (fp32, the same threads);
2. padded / real tokens per step over one epoch of the default SFT data, in the project's step order;
3. seconds from process start to the first training step of the real `stages/sft.py`, and what they are made of.

    python benchmarks/bench_training.py --out metrics/bench.json [--base models/base/hf] [--steps 6]
TRL is a bench extra (requirements-bench.txt), never a run dependency; without it the TRL figures are null.
Prints the figures and writes them to --out; asserts nothing (timings are for people, not tests).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import click
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent

# Each piece of a training stage's fixed cost, timed in a fresh process in the order a stage meets them.
PIECES = r"""
import json, sys, time
t = time.perf_counter(); out = {}
def lap(name):
    global t
    now = time.perf_counter(); out[name] = round(now - t, 2); t = now
import torch; lap("import torch")
from transformers import AutoModelForCausalLM; lap("import transformers (model classes)")
import peft; lap("import peft")
from teachloop.student.model import LoraConfig, load_tokenizer
load_tokenizer(sys.argv[1]); lap("tokenizer")
base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32); lap("base model (fp32 safetensors)")
lora = LoraConfig()
peft.get_peft_model(base, peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                    target_modules=lora.target_modules, task_type="CAUSAL_LM")); lap("LoRA adapter")
print(json.dumps(out))
"""


def default_records(params: dict) -> list[dict]:
    """train + val of the default data, as the prepare stage splits it (no DVC run needed)."""
    from teachloop.config import build
    from teachloop.data import PrepareConfig, load_records, split_records

    cfg = build(PrepareConfig, params["prepare"], "prepare")
    records, _ = load_records(cfg.sources, cfg.on_bad_row, cfg.max_chars)
    splits = split_records(records, cfg.split, cfg.seed)
    return splits["train"] + splits["val"]


def step_batches(units: list, cfg) -> list[list]:
    """The batches of one epoch in the order `teachloop.student.train.train` visits them."""
    order = list(units)
    random.Random(cfg.seed).shuffle(order)
    return [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]


def encoded(tok, units: list[dict], max_len: int) -> list:
    from teachloop.student.logprobs import encode

    return [encode(tok, u["prompt"], u["response"], max_len) for u in units]


def padding_per_step(tok, units: list[dict], cfg) -> dict:
    """Mean and worst padded / real tokens per step, packed (cfg.row_tokens) and one padded row per sequence."""
    from teachloop.student.logprobs import layout, padding_ratio

    out = {}
    for name, rows in (("packed", cfg.row_tokens), ("padded", 0)):
        ratios = [padding_ratio(layout(encoded(tok, b, cfg.max_len), tok.pad_token_id, rows))
                  for b in step_batches(units, cfg)]
        out[name] = {"mean": round(sum(ratios) / len(ratios), 3), "max": round(max(ratios), 3)}
    return out


def project_tokens_per_s(base: Path, units: list[dict], cfg, steps: int, row_tokens: int) -> float:
    """Median real tokens/s per step of `train` over steps 2..steps+1 (the first warms up), a fresh LoRA as the
    sft stage trains. The median, because other processes on a shared machine stretch single steps."""
    from dataclasses import replace

    from teachloop.methods import sft
    from teachloop.student.model import load_student, load_tokenizer
    from teachloop.student.train import train

    tok = load_tokenizer(base)
    model = load_student(base, lora=cfg.lora)
    cfg = replace(cfg, epochs=1, row_tokens=row_tokens)
    units = [u for b in step_batches(units, cfg)[: steps + 2] for u in b]
    loss = sft.make_loss(tok, None, cfg.max_len, row_tokens)
    marks = []  # (time a step's loss starts, the step's real tokens)

    def timed_loss(model, batch):
        marks.append((time.perf_counter(), sum(len(ids) for ids, _ in encoded(tok, batch, cfg.max_len))))
        return loss(model, batch)

    train(model, units, timed_loss, cfg, desc=f"project rows={row_tokens}")
    # step k's time = start of step k+1 - start of step k; the last step only marks the end of the one before
    return median(n / (marks[k + 1][0] - t) for k, (t, n) in enumerate(marks[:-1]) if k >= 1)


def trl_tokens_per_s(base: Path, units: list[dict], cfg, steps: int, gradient_checkpointing: bool) -> float | None:
    """Median real tokens/s per step of TRL `SFTTrainer` (prompt-completion data: loss on the completion, as
    ours) over steps 2..steps+1, from the `num_tokens` it logs (attention-mask tokens) and its callbacks' times."""
    try:
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, TrainerCallback
        from trl import SFTConfig, SFTTrainer
    except ImportError as e:
        click.echo(f"TRL anchor skipped ({e}); pip install -r requirements-bench.txt", err=True)
        return None
    from teachloop.student.model import load_tokenizer

    class Clock(TrainerCallback):
        marks: list = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                self.marks.append((time.perf_counter(), logs["num_tokens"]))

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    # The base twin's config still names the GGUF it came from; Trainer refuses a "quantized" model that is not.
    model.config.quantization_config = None
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    model.is_quantized = False
    lora = cfg.lora
    data = Dataset.from_list([{"prompt": u["prompt"], "completion": u["response"]} for u in units])
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr,
                         max_steps=steps + 1, lr_scheduler_type="cosine",
                         warmup_steps=max(1, int(cfg.warmup_ratio * (steps + 1))),  # as `lr_at` counts it
                         weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed,
                         max_length=cfg.max_len, bf16=False, fp16=False, use_cpu=True,
                         gradient_checkpointing=gradient_checkpointing, logging_steps=1, report_to="none",
                         save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=load_tokenizer(base),
                             peft_config=LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                    target_modules=lora.target_modules,  # a list, or PEFT's "all-linear"
                                                    task_type="CAUSAL_LM"),
                             callbacks=[Clock()])
        trainer.train()
    marks = Clock.marks  # one per step, after it: the first one closes the warm-up step
    return median((n - n0) / (t - t0) for (t0, n0), (t, n) in zip(marks, marks[1:]))


def startup(params_path: Path, params: dict, records: list[dict], base: Path) -> tuple[float, dict]:
    """(seconds from process start to the first step of the real sft stage, its pieces in a fresh process)."""
    from teachloop.data import write_jsonl

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = json.loads(json.dumps(params))
        small["sft"]["max_examples"] = small["sft"]["train"]["batch_size"]  # one step is enough
        (tmp / "params.yaml").write_text(yaml.safe_dump(small))
        write_jsonl(tmp / "prepared" / "train.jsonl", records)
        write_jsonl(tmp / "prepared" / "val.jsonl", [])
        subprocess.run([sys.executable, str(ROOT / "stages" / "sft.py"), "--params", str(tmp / "params.yaml"),
                        "--prepared", str(tmp / "prepared"), "--base", str(base), "--out", str(tmp / "adapter"),
                        "--live", str(tmp / "live")], check=True, cwd=ROOT, capture_output=True,
                       env={**env, "TEACHLOOP_RUNLOG": str(tmp / "runlog.jsonl")})
        line = json.loads((tmp / "runlog.jsonl").read_text().splitlines()[-1])
    pieces = subprocess.run([sys.executable, "-c", PIECES, str(base)], check=True, cwd=ROOT, env=env,
                            capture_output=True, text=True)
    return line["startup_s"], json.loads(pieces.stdout.strip().splitlines()[-1])


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path(exists=True, path_type=Path))
@click.option("--base", default="models/base/hf", show_default=True, type=click.Path(exists=True, path_type=Path),
              help="The base model's HF dir.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="JSON file for the figures.")
@click.option("--steps", default=6, show_default=True, help="Timed training steps per contender (after 1 warm-up).")
@click.option("--trl-gradient-checkpointing/--no-trl-gradient-checkpointing", default=False, show_default=True,
              help="TRL's own default is on; off matches the project's (no recomputation).")
def main(params_path: Path, base: Path, out: Path, steps: int, trl_gradient_checkpointing: bool) -> None:
    """Measure and print the training figures and their ratios; write them to OUT."""
    from teachloop.config import build, read_params
    from teachloop.methods import sft
    from teachloop.student.model import load_tokenizer

    params = read_params(str(params_path))
    scfg = build(sft.Config, params["sft"], "sft")
    records = default_records(params)
    units, _ = sft.build_units(records, scfg)
    cfg = scfg.train
    torch.set_num_threads(cfg.threads or torch.get_num_threads())

    startup_s, pieces = startup(params_path, params, records, base)
    padding = padding_per_step(load_tokenizer(base), units, cfg)
    packed = project_tokens_per_s(base, units, cfg, steps, cfg.row_tokens)
    padded = project_tokens_per_s(base, units, cfg, steps, 0)
    trl = trl_tokens_per_s(base, units, cfg, steps, trl_gradient_checkpointing)

    figures = {
        "data": {"units": len(units), "batch_size": cfg.batch_size, "max_len": cfg.max_len,
                 "row_tokens": cfg.row_tokens, "timed_steps": steps, "threads": torch.get_num_threads()},
        "train_tokens_per_s": {"project_packed": round(packed, 1), "project_padded": round(padded, 1),
                               "trl_sft_trainer": trl and round(trl, 1),
                               "trl_gradient_checkpointing": trl_gradient_checkpointing},
        "ratio_vs_trl": trl and round(packed / trl, 2),
        "ratio_packed_vs_padded": round(packed / padded, 2),
        "padded_per_real_tokens_per_step": padding,
        "startup_s": {"sft_stage_to_first_step": startup_s, "pieces": pieces},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"training, default SFT data ({len(units)} units, batch {cfg.batch_size}, max_len {cfg.max_len}), "
          f"{steps} timed steps each, {torch.get_num_threads()} threads:")
    print(f"  TRL SFTTrainer (gradient checkpointing {'on' if trl_gradient_checkpointing else 'off'}): "
          + (f"{trl:7.1f} tok/s" if trl else "skipped"))
    print(f"  project, padded rows        : {padded:7.1f} tok/s")
    print(f"  project, packed rows        : {packed:7.1f} tok/s" + (f"  ratio vs TRL {packed / trl:.2f}x" if trl else "")
          + f"  vs padded {packed / padded:.2f}x")
    print(f"padded / real tokens per step: packed {padding['packed']['mean']} (max {padding['packed']['max']}), "
          f"padded rows {padding['padded']['mean']} (max {padding['padded']['max']})")
    print(f"sft stage, process start to first step: {startup_s:.1f} s  ({', '.join(f'{k} {v}' for k, v in pieces.items())})")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
