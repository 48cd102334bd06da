"""Benchmark the student's training on the default SFT data against TRL's `SFTTrainer`, in one session:

1. training tokens/s (real tokens: prompt + response, no padding; median per step) of the project's loop in fp32
   and in bf16 (frozen base in bf16, LoRA and optimiser fp32: what `precision: auto` picks on a CPU with bf16
   units), and of TRL `SFTTrainer` at its best CPU setting (bf16=True, use_cpu=True, no gradient checkpointing) and
   at its defaults (bf16 and gradient checkpointing on; use_cpu=True, without which it refuses bf16 on a CPU), on
   the same units, LoRA, learning rate, batch size and max length, the same threads. The contenders take turns
   (ABCD ABCD ...) for --rounds rounds, so a neighbour's load on a shared machine falls on all of them alike; each
   figure is the median over rounds, each ratio the median of the per-round ratios;
2. padded / real tokens per step over one epoch of the default SFT data, in the project's step order, and the
   project's packed rows against one padded row per sequence (one run each, the precision auto picks here);
3. seconds from process start to the first training step of the real `stages/sft.py`, and what they are made of.

    python benchmarks/bench_training.py --out metrics/bench/training.json [--base models/base/hf] [--steps 6]
TRL is a bench extra (requirements-bench.txt), never a run dependency; without it the TRL figures are null.
Every figure is written with the machine it came from (CPU model and flags, torch, threads: `teachloop.machine`).
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
from teachloop.student.launch import dtype_of
from teachloop.student.model import LoraConfig, load_tokenizer
load_tokenizer(sys.argv[1]); lap("tokenizer")
dtype = dtype_of("auto", "cpu")
base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=dtype); lap(f"base model (safetensors to {dtype})")
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


def project_tokens_per_s(base: Path, units: list[dict], cfg, steps: int, row_tokens: int, precision: str) -> float:
    """Median real tokens/s per step of `train` over steps 2..steps+1 (the first warms up), a fresh LoRA loaded
    as the sft stage loads it (`train_adapter`: the base in the precision's dtype). The median, because other
    processes on a shared machine stretch single steps."""
    from dataclasses import replace

    from teachloop.methods import sft
    from teachloop.student.launch import dtype_of
    from teachloop.student.model import load_student, load_tokenizer
    from teachloop.student.train import train

    tok = load_tokenizer(base)
    cfg = replace(cfg, epochs=1, row_tokens=row_tokens, precision=precision, save_every=0)
    torch.manual_seed(cfg.seed)
    model = load_student(base, lora=cfg.lora, dtype=dtype_of(precision, "cpu"))
    units = [u for b in step_batches(units, cfg)[: steps + 2] for u in b]
    loss = sft.make_loss(tok, None, cfg.max_len, row_tokens)
    marks = []  # (time a step's loss starts, the step's real tokens)

    def timed_loss(model, batch):
        marks.append((time.perf_counter(), sum(len(ids) for ids, _ in encoded(tok, batch, cfg.max_len))))
        return loss(model, batch)

    train(model, units, timed_loss, cfg, desc=f"project {precision} rows={row_tokens}")
    # step k's time = start of step k+1 - start of step k; the last step only marks the end of the one before
    return median(n / (marks[k + 1][0] - t) for k, (t, n) in enumerate(marks[:-1]) if k >= 1)


# TRL's settings per contender: its best on a CPU, and its defaults (bf16 and gradient checkpointing on) with the
# one setting it demands on a CPU: without use_cpu=True, bf16 on a machine with no GPU is refused at SFTConfig.
TRL_SETTINGS = {"trl_best": {"bf16": True, "use_cpu": True, "gradient_checkpointing": False},
                "trl_defaults": {"use_cpu": True}}


def trl_tokens_per_s(base: Path, units: list[dict], cfg, steps: int, settings: dict) -> tuple[float, dict] | None:
    """(median real tokens/s per step of TRL `SFTTrainer` over steps 2..steps+1, the bf16 / use_cpu / gradient
    checkpointing it ran with), prompt-completion data (loss on the completion, as ours), from the `num_tokens`
    it logs (attention-mask tokens) and its callbacks' times. `settings` go to `SFTConfig` as given."""
    try:
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, TrainerCallback
        from trl import SFTConfig, SFTTrainer
    except ImportError as e:
        click.echo(f"TRL anchor skipped ({e}); pip install --no-deps -r requirements-bench.txt", err=True)
        return None
    from teachloop.student.model import load_tokenizer

    marks = []

    class Clock(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                marks.append((time.perf_counter(), logs["num_tokens"]))

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
                         max_length=cfg.max_len, logging_steps=1, report_to="none", save_strategy="no",
                         disable_tqdm=True, dataloader_num_workers=0, **settings)
        ran = {"bf16": bool(args.bf16), "use_cpu": bool(args.use_cpu),
               "gradient_checkpointing": bool(args.gradient_checkpointing)}
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=load_tokenizer(base),
                             peft_config=LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                    target_modules=lora.target_modules,  # a list, or PEFT's "all-linear"
                                                    task_type="CAUSAL_LM"),
                             callbacks=[Clock()])
        trainer.train()
    torch.set_num_threads(cfg.threads or torch.get_num_threads())  # Trainer may have changed them
    # one mark per step, after it: the first one closes the warm-up step
    return median((n - n0) / (t - t0) for (t0, n0), (t, n) in zip(marks, marks[1:])), ran


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


def interleaved(contenders: dict, rounds: int) -> dict[str, list[float]]:
    """Each contender's figure per round, the contenders taking turns within every round."""
    figures = {name: [] for name in contenders}
    for r in range(rounds):
        for name, measure in contenders.items():
            value = measure()
            if value is not None:
                figures[name].append(value)
            click.echo(f"round {r + 1}/{rounds} {name}: {value and round(value, 1)} tok/s", err=True)
    return figures


def ratio(per_round: dict, a: str, b: str) -> float | None:
    """Median over rounds of a / b (each round's pair ran back to back)."""
    pairs = list(zip(per_round.get(a, []), per_round.get(b, [])))
    return round(median(x / y for x, y in pairs), 2) if pairs else None


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path(exists=True, path_type=Path))
@click.option("--base", default="models/base/hf", show_default=True, type=click.Path(exists=True, path_type=Path),
              help="The base model's HF dir.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="JSON file for the figures.")
@click.option("--steps", default=6, show_default=True, help="Timed training steps per contender (after 1 warm-up).")
@click.option("--rounds", default=3, show_default=True, help="Turns each contender takes (median over them).")
@click.option("--startup/--no-startup", "with_startup", default=True, show_default=True,
              help="Also time the sft stage's start-up and the packed-vs-padded rows.")
def main(params_path: Path, base: Path, out: Path, steps: int, rounds: int, with_startup: bool) -> None:
    """Measure and print the training figures and their ratios; write them to OUT."""
    from teachloop.config import build, read_params
    from teachloop.machine import describe, write_figures
    from teachloop.methods import sft
    from teachloop.student.launch import precision_name
    from teachloop.student.model import load_tokenizer

    params = read_params(str(params_path))
    scfg = build(sft.Config, params["sft"], "sft")
    records = default_records(params)
    units, _ = sft.build_units(records, scfg)
    cfg = scfg.train
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    auto = precision_name("auto", "cpu")

    contenders = {f"project_{p}": (lambda p=p: project_tokens_per_s(base, units, cfg, steps, cfg.row_tokens, p))
                  for p in ("fp32", "bf16")}
    trl_ran = {}

    def trl(name):
        result = trl_tokens_per_s(base, units, cfg, steps, TRL_SETTINGS[name])
        if result is None:
            return None
        trl_ran[name] = result[1]
        return result[0]

    contenders.update({name: (lambda name=name: trl(name)) for name in TRL_SETTINGS})
    per_round = interleaved(contenders, rounds)
    tokens_per_s = {name: round(median(v), 1) if v else None for name, v in per_round.items()}
    ratios = {"bf16_vs_fp32": ratio(per_round, "project_bf16", "project_fp32"),
              "bf16_vs_trl_best": ratio(per_round, "project_bf16", "trl_best"),
              "bf16_vs_trl_defaults": ratio(per_round, "project_bf16", "trl_defaults"),
              "fp32_vs_trl_best": ratio(per_round, "project_fp32", "trl_best")}
    figures = {
        "data": {"units": len(units), "batch_size": cfg.batch_size, "max_len": cfg.max_len,
                 "row_tokens": cfg.row_tokens, "timed_steps": steps, "rounds": rounds,
                 "threads": torch.get_num_threads()},
        "auto_precision_on_this_cpu": auto,
        "train_tokens_per_s": tokens_per_s,
        "train_tokens_per_s_per_round": {k: [round(x, 1) for x in v] for k, v in per_round.items()},
        "trl_settings": trl_ran,
        "ratios": ratios,
    }
    if with_startup:
        packed = project_tokens_per_s(base, units, cfg, steps, cfg.row_tokens, auto)
        padded = project_tokens_per_s(base, units, cfg, steps, 0, auto)
        startup_s, pieces = startup(params_path, params, records, base)
        figures.update({
            "packed_vs_padded": {"precision": auto, "project_packed": round(packed, 1),
                                 "project_padded": round(padded, 1), "ratio": round(packed / padded, 2)},
            "padded_per_real_tokens_per_step": padding_per_step(load_tokenizer(base), units, cfg),
            "startup_s": {"sft_stage_to_first_step": startup_s, "pieces": pieces}})
    write_figures(out, figures)
    here = describe()
    print(f"machine: {here['cpu_model']}, {here['cpu_count']} CPUs, flags {' '.join(here['cpu_flags'])}; "
          f"torch {here['torch']}, {torch.get_num_threads()} threads")
    print(f"bf16 units: {', '.join(here['bf16_units']) or 'none'} -> precision: auto trains in {auto} on this CPU"
          + ("" if auto == "bf16" else " (no bf16 units: bf16 would be emulated, slower than fp32)"))
    print(f"training, default SFT data ({len(units)} units, batch {cfg.batch_size}, max_len {cfg.max_len}), "
          f"{steps} timed steps x {rounds} interleaved rounds, median tok/s:")
    for name, value in tokens_per_s.items():
        setting = f"  {trl_ran[name]}" if name in trl_ran else ""
        print(f"  {name:<14}: " + (f"{value:7.1f}" if value else "skipped") + setting)
    for name, value in ratios.items():
        print(f"  ratio {name:<22}: " + (f"{value:.2f}x" if value else "n/a"))
    if with_startup:
        pv, pad = figures["packed_vs_padded"], figures["padded_per_real_tokens_per_step"]
        print(f"project {auto}, packed rows {pv['project_packed']:.1f} vs padded {pv['project_padded']:.1f} tok/s "
              f"({pv['ratio']:.2f}x); padded / real tokens per step: packed {pad['packed']['mean']} "
              f"(max {pad['packed']['max']}), padded rows {pad['padded']['mean']} (max {pad['padded']['max']})")
        print(f"sft stage, process start to first step: {figures['startup_s']['sft_stage_to_first_step']:.1f} s  "
              f"({', '.join(f'{k} {v}' for k, v in figures['startup_s']['pieces'].items())})")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
