"""One LoRA training loop for every method: the method supplies a loss over a batch of its own units.

A unit is whatever one example of a method is (an SFT pair, an instruction with N ranked candidates, a DPO pair);
`loss_fn(model, units) -> (loss, {name: value})`. Per-step values go to a dvclive dir (one TSV per metric under
DIR/plots/metrics/, the last values in its summary file) without timestamps, so two identical runs write identical
bytes; the returned summary holds only what the inputs determine (wall time belongs in `teachloop.runlog`).
"""
from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from ..config import ConfigError
from .logprobs import ROW_TOKENS
from .model import LoraConfig


@dataclass
class TrainConfig:
    lr: float = 2e-4  # AdamW peak learning rate (LoRA tolerates far higher rates than full fine-tuning)
    epochs: int = 1
    batch_size: int = 4  # units per optimiser step
    max_len: int = 256  # tokens per sequence, prompt cut from the left
    row_tokens: int = ROW_TOKENS  # a step's sequences are packed into rows of ~this many tokens (0 = padded rows)
    warmup_ratio: float = 0.1  # linear warm-up fraction, then cosine decay to 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 7
    threads: int = 2  # torch CPU threads while training (2 = this machine's cores; 0 = torch's own default)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self, where: str) -> None:
        if self.row_tokens < 0:
            raise ConfigError(f"{where}.row_tokens must be >= 0 (0 = one padded row per sequence), "
                              f"got {self.row_tokens}")


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup_ratio * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


@contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic kernels for the block; the previous settings come back afterwards.

    A reduction split over a different number of threads sums in a different order, so the thread count is part
    of what makes a run repeatable, as is torch's deterministic mode (it raises on ops with no deterministic path
    rather than silently varying).
    """
    threads_before, det_before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det_before)
        torch.set_num_threads(threads_before)


def _open_live(live_dir: str | Path | None):
    """A dvclive logger that writes only under `live_dir`: no dvc.yaml edit, no experiment, no report, no git."""
    if live_dir is None:
        return None
    from dvclive import Live

    return Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False, report=None)


def seconds_since_process_start() -> float:
    import psutil

    return time.time() - psutil.Process().create_time()


def train(model, units: list, loss_fn: Callable, cfg: TrainConfig, live_dir: str | Path | None = None,
          desc: str = "train", times: dict | None = None) -> dict:
    """Run `cfg.epochs` over `units`; returns a summary (steps, units, the last step's values).

    `times`, when given, gets `startup_s`: seconds from process start to the first step (imports, loading, the
    adapter), the fixed cost of a training stage. It is run-dependent, so it goes to the run log, not the summary.
    """
    if not units:
        raise ValueError(f"{desc}: no training units; check the method's data stage output")
    live = _open_live(live_dir)
    with deterministic(cfg.threads):
        torch.manual_seed(cfg.seed)
        rng = random.Random(cfg.seed)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = math.ceil(len(units) / cfg.batch_size) * cfg.epochs
        model.train()
        step, last = 0, {}
        with tqdm(total=total, desc=desc, unit="step") as bar:
            for epoch in range(cfg.epochs):
                order = list(units)
                rng.shuffle(order)
                for i in range(0, len(order), cfg.batch_size):
                    if step == 0 and times is not None:
                        times["startup_s"] = round(seconds_since_process_start(), 2)
                    lr = lr_at(step, total, cfg)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    loss, logs = loss_fn(model, order[i : i + cfg.batch_size])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    opt.step()
                    last = {"epoch": epoch, "lr": lr, "loss": loss.item(), **logs}
                    if live:
                        live.step = step
                        for name, value in last.items():
                            live.log_metric(name, value)  # timestamp=False: the files depend on the inputs only
                        live.next_step()
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                    bar.update(1)
                    step += 1
        model.eval()
    summary = {"steps": step, "units": len(units), "final": last}
    if live:
        live.summary.update({"steps": step, "units": len(units)})
        live.end()
    return summary


def train_adapter(base_dir: str | Path, units: list, make_loss: Callable, cfg: TrainConfig, out_dir: str | Path,
                  init_adapter: str | Path | None = None, live_dir: str | Path | None = None,
                  desc: str = "train", before: Callable | None = None, lora_key: str = "lora",
                  times: dict | None = None) -> dict:
    """Load the student (continuing `init_adapter`, or a fresh LoRA), train on `units`, save PEFT dir + GGUF twin.

    `make_loss(tokenizer) -> loss_fn`; `before(model, tokenizer, units)` runs once before training (e.g. DPO's
    reference log-probs, computed with the starting weights). A continued adapter keeps its own LoRA shape, so
    `cfg.lora` must match it (`lora_key` names where those settings live, for the error message). `times`: see
    `train`.
    """
    from .model import check_lora_matches, load_student, load_tokenizer, save_adapter

    if init_adapter:
        check_lora_matches(cfg.lora, init_adapter, lora_key)
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(base_dir)
    model = load_student(base_dir, adapter=init_adapter, lora=cfg.lora, trainable=True)
    if before is not None:
        with deterministic(cfg.threads):
            before(model, tokenizer, units)
    summary = train(model, units, make_loss(tokenizer), cfg, live_dir=live_dir, desc=desc, times=times)
    save_adapter(model, out_dir)
    return {**summary, "init_adapter": str(init_adapter or ""), "trainable_params": sum(
        p.numel() for p in model.parameters() if p.requires_grad)}
