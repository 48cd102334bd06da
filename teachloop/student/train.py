"""One LoRA training loop for every method: the method supplies a loss over a batch of its own units.

A unit is whatever one example of a method is (an SFT pair, an instruction with N ranked candidates, a DPO pair);
`loss_fn(model, units) -> (loss, {name: value})`. The device, precision and data-parallel processes come from
`accelerate` (`launch.py`); micro-batches and processes split a step's scoring without changing its loss
(`split.py`); `save_every` checkpoints the run outside DVC's outputs so a killed stage resumes (`checkpoint.py`). Per-step values go to a dvclive dir (one TSV per metric under
DIR/plots/metrics/, the last values in its summary file) without timestamps, so two identical runs write identical
bytes; the returned summary holds only what the inputs determine (wall time belongs in `teachloop.runlog`).
"""
from __future__ import annotations

import math
import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from ..config import ConfigError, one_of
from . import split
from .checkpoint import Checkpoints, load_trainable, rng_state, set_rng_state, trainable_state
from .launch import DEVICES, PRECISIONS
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
    device: str = "auto"  # auto (cuda > mps > cpu) | cuda | mps | cpu
    precision: str = "auto"  # auto (bf16 on a CUDA GPU or a CPU with bf16 units, else fp32) | fp32 | bf16
    micro_batch_size: int = 0  # units per forward pass (0 = the whole batch); the loss is the batch's either way
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1.3x the compute
    processes: int = 1  # data-parallel processes (`accelerate launch`; gloo on CPU); batch_size is the global batch
    save_every: int = 50  # checkpoint every N steps under .cache/checkpoints for resuming a killed run (0 = never)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self, where: str) -> None:
        if self.row_tokens < 0:
            raise ConfigError(f"{where}.row_tokens must be >= 0 (0 = one padded row per sequence), "
                              f"got {self.row_tokens}")
        one_of(self.device, DEVICES, f"{where}.device")
        if self.precision == "fp16":
            raise ConfigError(f"{where}.precision: fp16 needs loss scaling, which this loop does not do; use bf16 "
                              f"(or fp32)")
        one_of(self.precision, PRECISIONS, f"{where}.precision")
        for name, least in (("batch_size", 1), ("micro_batch_size", 0), ("processes", 1), ("save_every", 0)):
            if getattr(self, name) < least:
                raise ConfigError(f"{where}.{name} must be >= {least}, got {getattr(self, name)}")
        if self.processes > 1 and self.device in ("auto", "cuda") and torch.cuda.is_available() \
                and self.processes > torch.cuda.device_count():
            raise ConfigError(f"{where}.processes is {self.processes} but torch sees {torch.cuda.device_count()} "
                              f"CUDA GPU(s) here; on GPUs each process takes one: set processes <= "
                              f"{torch.cuda.device_count()}")
        if self.micro_batch_size > self.batch_size:
            raise ConfigError(f"{where}.micro_batch_size ({self.micro_batch_size}) is larger than batch_size "
                              f"({self.batch_size}); set it <= batch_size (0 = the whole batch)")


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup_ratio * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


@contextmanager
def deterministic(threads: int, strict: bool = True) -> Iterator[None]:
    """Fixed thread count and deterministic kernels for the block; the previous settings come back afterwards.

    A reduction split over a different number of threads sums in a different order, so the thread count is part
    of what makes a run repeatable, as is torch's deterministic mode (it raises on ops with no deterministic path
    rather than silently varying). `strict=False` (GPUs) warns instead: some CUDA kernels have no deterministic
    path, and a GPU run is not bit-repeatable across machines anyway.
    """
    threads_before, det_before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if threads:
        torch.set_num_threads(threads)
    if not strict:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS requires
    torch.use_deterministic_algorithms(True, warn_only=not strict)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det_before)
        torch.set_num_threads(threads_before)


def open_live(live_dir: str | Path | None):
    """A dvclive logger that writes only under `live_dir`: no dvc.yaml edit, no experiment, no report, no git."""
    if live_dir is None:
        return None
    from dvclive import Live

    return Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False, report=None)


def seconds_since_process_start() -> float:
    import psutil

    return time.time() - psutil.Process().create_time()


def schedule(units: list, cfg: TrainConfig) -> list[tuple[int, list]]:
    """(epoch, units) of every step: each epoch a seeded shuffle cut into batches. A pure function of the units
    and the seed, so a resumed run takes the same steps."""
    rng, steps = random.Random(cfg.seed), []
    for epoch in range(cfg.epochs):
        order = list(units)
        rng.shuffle(order)
        steps += [(epoch, order[i : i + cfg.batch_size]) for i in range(0, len(order), cfg.batch_size)]
    return steps


def step_split(batch: list, cfg: TrainConfig, acc, precision) -> split.Split | None:
    """How a step's scoring is split (`split.py`): None, one forward pass, unless micro-batches or processes."""
    micro = cfg.micro_batch_size or math.ceil(len(batch) / acc.num_processes)
    if acc.num_processes == 1 and micro >= len(batch):
        return None
    return split.Split(share=min(1.0, micro / len(batch)), rank=acc.process_index, world=acc.num_processes,
                       add_up=lambda t: acc.reduce(t, reduction="sum"), autocast=precision)


def _add_up_gradients(params: list, acc) -> None:
    """Sum each parameter's gradient over the processes (each holds its share of the step's sequences).

    Not DDP: the losses call the decoder and LM head directly (`logprobs.response_logprobs`), past the DDP
    wrapper's forward that its gradient hooks rely on; one all-reduce of the LoRA gradients per step is all DDP
    would do here.
    """
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = acc.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="sum")
    at = 0
    for p in params:
        p.grad = flat[at : at + p.numel()].view_as(p).clone()
        at += p.numel()


def take_step(model, batch: list, loss_fn: Callable, opt, lr: float, cfg: TrainConfig, acc,
              precision) -> tuple[float, dict]:
    """One optimiser step on `batch` at learning rate `lr` (gradients added over processes, clipped to
    `cfg.max_grad_norm`): (the loss's value, its logs)."""
    for group in opt.param_groups:
        group["lr"] = lr
    with split.active(step_split(batch, cfg, acc, precision)), precision():
        loss, logs = loss_fn(model, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in opt.param_groups for p in group["params"]]
    if acc.num_processes > 1:
        _add_up_gradients(params, acc)
    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    opt.step()
    return loss.item(), logs


def log_step(live, step: int, values: dict) -> None:
    live.step = step
    for name, value in values.items():
        live.log_metric(name, value)  # timestamp=False: the files depend on the inputs only
    live.next_step()


def train(model, units: list, loss_fn: Callable, cfg: TrainConfig, live_dir: str | Path | None = None,
          desc: str = "train", times: dict | None = None, checkpoints: Checkpoints | None = None,
          acc=None) -> dict:
    """Run `cfg.epochs` over `units`; returns a summary (steps, units, the last step's values).

    `times`, when given, gets `startup_s`: seconds from process start to the first step (imports, loading, the
    adapter), the fixed cost of a training stage. It is run-dependent, so it goes to the run log, not the summary.
    `checkpoints`: resume from its checkpoint if there is one, and save one every `cfg.save_every` steps.
    `acc`: the run's `accelerate.Accelerator` (default: one for `cfg.device`).
    """
    from .launch import accelerator, autocast, lora_inputs_as_they_come

    if not units:
        raise ValueError(f"{desc}: no training units; check the method's data stage output")
    acc = acc or accelerator(cfg.device)
    precision = autocast(cfg.precision, acc.device)
    if acc.num_processes != cfg.processes:
        raise ConfigError(f"{desc}: train.processes is {cfg.processes} but {acc.num_processes} processes were "
                          f"launched; make them agree (a stage relaunches itself with the right count)")
    model.to(acc.device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    live = open_live(live_dir) if acc.is_main_process else None
    with deterministic(cfg.threads, strict=acc.device.type == "cpu"), \
            lora_inputs_as_they_come(model, cfg.precision, acc.device):
        torch.manual_seed(cfg.seed)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = schedule(units, cfg)
        total, start, history = len(steps), 0, []
        state = checkpoints.load() if checkpoints else None
        if state is not None:
            load_trainable(model, state["trainable"])
            opt.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"], acc.device)
            start, history = state["step"], state["history"]
            acc.print(f"{desc}: resuming from step {start} of {total} (checkpoint {checkpoints.dir})")
        if live:
            for step, values in enumerate(history):
                log_step(live, step, values)
        model.train()
        last = history[-1] if history else {}
        with tqdm(total=total, initial=start, desc=desc, unit="step", disable=not acc.is_main_process) as bar:
            for step in range(start, total):
                epoch, batch = steps[step]
                if step == start and times is not None:
                    times["startup_s"] = round(seconds_since_process_start(), 2)
                lr = lr_at(step, total, cfg)
                loss, logs = take_step(model, batch, loss_fn, opt, lr, cfg, acc, precision)
                last = {"epoch": epoch, "lr": lr, "loss": loss, **logs}
                history.append(last)
                if live:
                    log_step(live, step, last)
                bar.set_postfix(loss=f"{loss:.3f}")
                bar.update(1)
                if checkpoints and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total \
                        and acc.is_main_process:
                    checkpoints.save({"step": step + 1, "trainable": trainable_state(model),
                                      "optimizer": opt.state_dict(), "rng": rng_state(acc.device),
                                      "history": history})
        model.eval()
    acc.wait_for_everyone()
    summary = {"steps": total, "units": len(units), "final": last}
    if live:
        live.summary.update({"steps": total, "units": len(units)})
        live.end()
    return summary


def train_adapter(base_dir: str | Path, units: list, make_loss: Callable, cfg: TrainConfig, out_dir: str | Path,
                  init_adapter: str | Path | None = None, live_dir: str | Path | None = None,
                  desc: str = "train", before: Callable | None = None, lora_key: str = "lora",
                  times: dict | None = None) -> dict:
    """Load the student (continuing `init_adapter`, or a fresh LoRA), train on `units`, save PEFT dir + GGUF twin.

    `make_loss(tokenizer) -> loss_fn`; `before(model, tokenizer, units, scope)` runs once before training (e.g.
    DPO's reference log-probs, computed with the starting weights); `scope` is a `split.Split` giving this
    process's share, the sum over processes and the training precision. A continued adapter keeps its own LoRA shape, so
    `cfg.lora` must match it (`lora_key` names where those settings live, for the error message). `times`: see
    `train`. With `cfg.processes > 1` a stage script runs again as that many processes (`launch.relaunch`) and
    this process exits with their status; of those, only the main one returns from here (and writes).
    """
    from .launch import accelerator, autocast, dtype_of, launched, lora_inputs_as_they_come, relaunch
    from .model import (adapted_modules, check_lora_matches, load_student, load_tokenizer, model_skeleton,
                        resolve_targets, save_adapter)

    # The LoRA's layers are checked against the model's module tree before any weight is read or process started.
    if init_adapter:
        check_lora_matches(cfg.lora, init_adapter, lora_key, base_dir)
    else:
        resolve_targets(cfg.lora, model_skeleton(base_dir), lora_key)
    if cfg.processes > 1 and not launched():
        raise SystemExit(relaunch(cfg.processes))
    acc = accelerator(cfg.device)
    checkpoints = Checkpoints.for_run(base_dir, init_adapter, units, cfg, desc) if cfg.save_every else None
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(base_dir)
    model = load_student(base_dir, adapter=init_adapter, lora=cfg.lora, trainable=True,
                         dtype=dtype_of(cfg.precision, acc.device.type), device=acc.device)
    if before is not None:
        # Under the training step's precision and split over the processes like its scoring, so that a reference
        # computed here equals the policy's own score at step 0.
        scope = split.Split(share=1.0, rank=acc.process_index, world=acc.num_processes,
                            add_up=lambda t: acc.reduce(t, reduction="sum"), autocast=autocast(cfg.precision, acc.device))
        with deterministic(cfg.threads, strict=acc.device.type == "cpu"), \
                lora_inputs_as_they_come(model, cfg.precision, acc.device):
            before(model, tokenizer, units, scope)
    summary = train(model, units, make_loss(tokenizer), cfg, live_dir=live_dir, desc=desc, times=times,
                    checkpoints=checkpoints, acc=acc)
    if not acc.is_main_process:
        raise SystemExit(0)  # the main process writes the adapter and the stage's other outputs
    save_adapter(model, out_dir)
    if checkpoints:
        checkpoints.clear()
    return {**summary, "init_adapter": str(init_adapter or ""), "target_modules": adapted_modules(model),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
