"""One LoRA training loop for every method: the method supplies a loss over a batch of its own units.

A unit is whatever one example of a method is (an SFT pair, an instruction with N ranked candidates, a DPO pair);
`loss_fn(model, units) -> (loss, {name: value})`. Steps are logged to a TSV that `dvc plots` can draw.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from .model import LoraConfig


@dataclass
class TrainConfig:
    lr: float = 2e-4  # AdamW peak learning rate (LoRA tolerates far higher rates than full fine-tuning)
    epochs: int = 1
    batch_size: int = 4  # units per optimiser step
    max_len: int = 256  # tokens per sequence, prompt cut from the left
    warmup_ratio: float = 0.1  # linear warm-up fraction, then cosine decay to 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 7
    lora: LoraConfig = field(default_factory=LoraConfig)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup_ratio * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train(model, units: list, loss_fn: Callable, cfg: TrainConfig, log_path: str | Path | None = None,
          desc: str = "train") -> dict:
    """Run `cfg.epochs` over `units`; returns a summary (steps, final loss, seconds)."""
    if not units:
        raise ValueError(f"{desc}: no training units; check the method's data stage output")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(units) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    model.train()
    log = open(log_path, "w") if log_path else None
    header_done = False
    start, step, last = time.time(), 0, {}
    with tqdm(total=total, desc=desc, unit="step") as bar:
        for epoch in range(cfg.epochs):
            order = list(units)
            rng.shuffle(order)
            for i in range(0, len(order), cfg.batch_size):
                lr = lr_at(step, total, cfg)
                for group in opt.param_groups:
                    group["lr"] = lr
                loss, logs = loss_fn(model, order[i : i + cfg.batch_size])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                last = {"step": step, "epoch": epoch, "lr": lr, "loss": loss.item(), **logs}
                if log:
                    if not header_done:
                        log.write("\t".join(last) + "\n")
                        header_done = True
                    log.write("\t".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in last.values()) + "\n")
                    log.flush()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update(1)
                step += 1
    if log:
        log.close()
    model.eval()
    return {"steps": step, "units": len(units), "final": last, "seconds": round(time.time() - start, 1)}


def train_adapter(base_dir: str | Path, units: list, make_loss: Callable, cfg: TrainConfig, out_dir: str | Path,
                  init_adapter: str | Path | None = None, log_path: str | Path | None = None,
                  desc: str = "train", before: Callable | None = None) -> dict:
    """Load the student (continuing `init_adapter`, or a fresh LoRA), train on `units`, save PEFT dir + GGUF twin.

    `make_loss(tokenizer) -> loss_fn`; `before(model, tokenizer, units)` runs once before training (e.g. DPO's
    reference log-probs, computed with the starting weights).
    """
    from .model import load_student, load_tokenizer, save_adapter

    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(base_dir)
    model = load_student(base_dir, adapter=init_adapter, lora=cfg.lora, trainable=True)
    if before is not None:
        before(model, tokenizer, units)
    summary = train(model, units, make_loss(tokenizer), cfg, log_path=log_path, desc=desc)
    save_adapter(model, out_dir)
    return {**summary, "init_adapter": str(init_adapter or ""), "trainable_params": sum(
        p.numel() for p in model.parameters() if p.requires_grad)}
