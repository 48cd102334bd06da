"""RLHF, online: from the SFT adapter, sample K completions per prompt from the current policy, score them with
the reward model (`reward.py`), and optimise a clipped policy-gradient objective with a KL penalty to SFT.

Algorithm: a critic-free group baseline (GRPO, Shao et al. 2024; RLOO, Ahmadian et al. 2024) rather than PPO
with a value head. The advantage of a sample is its reward minus the mean reward of its prompt's K samples (no
division by their spread, as Dr. GRPO argues, so the reward model's scale is the step size's business, not the
prompt's). The importance ratio is per sequence and length-normalised, r = exp((log pi(y) - log pi_old(y)) / |y|)
(GSPO, Zheng et al. 2025): the reward is a sequence's, and the project's scorer gives sequence log-prob sums.
The loss per sample is -min(r A, clip(r, 1 - eps, 1 + eps) A) + beta * KL, with KL = exp(d) - d - 1,
d = (log pi_ref(y) - log pi(y)) / |y| (the non-negative k3 estimator GRPO adds to its loss), averaged over the
step's samples. Why not PPO with a critic: a value head is a second model to train and to get right, on a CPU
budget of a few iterations it would not fit, and the group mean is the baseline recent RLHF work uses. Why not
TRL's GRPOTrainer: TRL is not a runtime dependency here, and its trainer keeps neither the same-bytes checkpoint
and resume nor the project's packed scoring and params validation.

One iteration: `rollout` samples `prompts` training instructions (a seeded draw per iteration) x `samples`
completions, scores rewards, old log-probs (the policy now) and reference log-probs (the SFT adapter's LoRA
weights, swapped in for scoring: no second model), then `train.epochs` passes over those samples in shuffled
batches of `train.batch_size` are optimiser steps; from the second step on the policy has moved and the clip acts.
Dropout is off throughout (LoRA dropout modules stay in eval mode while the policy trains), so the first step's
ratio is 1 and a rollout is a function of the weights and the seed. A checkpoint (every `train.save_every`
steps) holds the current iteration's samples, so a run killed mid-iteration resumes at the same step with the
same data.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ConfigError
from ..student.logprobs import ROW_TOKENS
from ..student.prompting import record_prompt
from ..student.train import TrainConfig
from .common import LossFn, num, score_pairs
from . import reward


@dataclass
class Config:
    prompts: int = 4  # training instructions per iteration (a fresh seeded draw each iteration)
    samples: int = 4  # completions per prompt: the group whose mean reward is the baseline (>= 2)
    iterations: int = 2  # rollouts; each is followed by train.epochs passes over its samples
    clip: float = 0.2  # eps: the ratio is clipped to [1 - eps, 1 + eps] (PPO/GRPO: 0.2)
    kl_beta: float = 0.05  # weight of the KL penalty to the SFT policy (GRPO: 0.04)
    temperature: float = 1.0  # sampling temperature; 1 samples the policy itself (what the ratio assumes)
    max_new_tokens: int = 48  # tokens per completion
    stop: list[str] = field(default_factory=lambda: ["\n###"])  # completions are cut at the first of these
    seed: int = 23  # which prompts each iteration draws, and the samples' seeds
    train: TrainConfig = field(default_factory=TrainConfig)  # batch_size counts samples; epochs per rollout

    def validate(self, where: str) -> None:
        if self.samples < 2:
            raise ConfigError(f"{where}.samples must be >= 2: the baseline is the mean reward of a prompt's "
                              f"samples, so one sample has advantage 0 and teaches nothing")
        for name in ("prompts", "iterations", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.clip < 1:
            raise ConfigError(f"{where}.clip must be in (0, 1), got {self.clip} (PPO/GRPO use 0.2)")
        if self.kl_beta < 0:
            raise ConfigError(f"{where}.kl_beta must be >= 0, got {self.kl_beta}")
        if self.temperature <= 0:
            raise ConfigError(f"{where}.temperature must be > 0: greedy decoding gives a group identical "
                              f"samples, all with advantage 0")
        if self.train.max_len <= self.max_new_tokens:
            raise ConfigError(f"{where}.train.max_len ({self.train.max_len}) must exceed max_new_tokens "
                              f"({self.max_new_tokens}): a scored sequence holds its prompt and its completion")
        if self.train.processes != 1:
            raise ConfigError(f"{where}.train.processes must be 1: rollouts are sampled in one process (use "
                              f"micro_batch_size to bound memory)")


def loss(logp: torch.Tensor, old: torch.Tensor, ref: torch.Tensor, counts: torch.Tensor,
         advantages: torch.Tensor, clip: float = 0.2, beta: float = 0.05) -> tuple[torch.Tensor, dict]:
    """L = mean_i [ -min(r_i A_i, clip(r_i, 1 - clip, 1 + clip) A_i) + beta * (exp(d_i) - d_i - 1) ]

    r_i = exp((logp_i - old_i) / n_i), d_i = (ref_i - logp_i) / n_i; logp, old, ref are summed response
    log-probs [M] (policy now, policy at the rollout, SFT), counts n [M] their token counts, advantages A [M].
    Where the clipped term is the smaller one (r > 1 + clip with A > 0, r < 1 - clip with A < 0) the sample's
    surrogate is a constant: only its KL term has a gradient.
    """
    n = counts.clamp(min=1).to(logp.dtype)
    ratio = torch.exp((logp - old) / n)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    d = (ref - logp) / n
    kl = torch.exp(d) - d - 1
    total = (-surrogate + beta * kl).mean()
    clipped = ((ratio - 1).abs() > clip).float().mean()
    return total, {"surrogate": num(surrogate.mean()), "kl": num(kl.mean()), "ratio": num(ratio.mean()),
                   "clipped": num(clipped)}


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """[P, K] rewards -> [P, K] reward minus the mean of its row (a prompt's samples)."""
    return rewards - rewards.mean(dim=1, keepdim=True)


def make_loss(tokenizer, cfg: Config, max_len: int, row_tokens: int = ROW_TOKENS) -> LossFn:
    """loss_fn(model, units): the clipped objective on the units' current log-probs; old/ref/advantage are fixed."""

    def loss_fn(model, units):
        sums, counts = score_pairs(model, tokenizer, [(u["prompt"], u["response"]) for u in units], max_len,
                                   row_tokens)
        fixed = {k: torch.tensor([u[k] for u in units], dtype=sums.dtype, device=sums.device)
                 for k in ("old", "ref", "advantage")}
        total, logs = loss(sums, fixed["old"], fixed["ref"], counts.to(sums.device), fixed["advantage"],
                           clip=cfg.clip, beta=cfg.kl_beta)
        return total, {"tokens": int(counts.sum()), **logs}

    return loss_fn


def draw_prompts(records: list[dict], cfg: Config, iteration: int) -> list[dict]:
    """`cfg.prompts` records for this iteration: a seeded sample of the id-sorted records (all if fewer)."""
    ordered = sorted(records, key=lambda r: r["id"])
    if cfg.prompts >= len(ordered):
        return ordered
    return sorted(random.Random(f"{cfg.seed}:{iteration}").sample(ordered, cfg.prompts), key=lambda r: r["id"])


def sample_seed(seed: int, iteration: int, rec_id: str) -> int:
    """The torch seed of one prompt's samples in one iteration: a function of the three, nothing else."""
    return int(hashlib.sha256(f"{seed}:{iteration}:{rec_id}".encode()).hexdigest()[:12], 16)


def sample_group(model, tokenizer, records: list[dict], cfg: Config, iteration: int) -> list[list[str]]:
    """[P][K] completions of this iteration's prompts under `model` (see `teachloop.student.sample`)."""
    from ..student.sample import sample

    return [sample(model, tokenizer, record_prompt(r), cfg.samples, cfg.max_new_tokens, cfg.temperature,
                   sample_seed(cfg.seed, iteration, r["id"]), cfg.stop,
                   max_prompt=cfg.train.max_len - cfg.max_new_tokens)
            for r in records]


@torch.no_grad()
def _scores(model, tokenizer, pairs, max_len: int, row_tokens: int, batch_size: int) -> list[float]:
    out = []
    for i in range(0, len(pairs), batch_size):
        sums, _ = score_pairs(model, tokenizer, pairs[i : i + batch_size], max_len, row_tokens)
        out += sums.tolist()
    return out


def rollout(policy, reference_lora: dict, reward_model, tokenizer, records: list[dict], cfg: Config,
            iteration: int, precision) -> tuple[list[dict], dict]:
    """(units, logs) of one iteration: sampled completions with their reward, advantage, old and ref log-probs.

    `reference_lora` holds the SFT adapter's weights: they are loaded into the policy to score the reference and
    the policy's own weights put back, exactly.
    """
    from ..student.checkpoint import load_trainable, trainable_state

    chosen = draw_prompts(records, cfg, iteration)
    groups = sample_group(policy, tokenizer, chosen, cfg, iteration)
    pairs = [(record_prompt(r), text) for r, texts in zip(chosen, groups) for text in texts]
    t, rows, step = cfg.train, cfg.train.row_tokens, max(1, cfg.train.batch_size)
    with precision():
        with torch.no_grad():
            scored = torch.cat([reward.rewards(reward_model, tokenizer, pairs[i : i + step], t.max_len, rows)
                                for i in range(0, len(pairs), step)]).float().cpu()
        old = _scores(policy, tokenizer, pairs, t.max_len, rows, step)
        current = trainable_state(policy)
        load_trainable(policy, reference_lora)
        try:
            ref = _scores(policy, tokenizer, pairs, t.max_len, rows, step)
        finally:
            load_trainable(policy, current)
    advantages = group_advantages(scored.view(len(chosen), cfg.samples)).flatten().tolist()
    units = [{"id": chosen[i // cfg.samples]["id"], "prompt": p, "response": y, "reward": float(scored[i]),
              "advantage": advantages[i], "old": old[i], "ref": ref[i]} for i, (p, y) in enumerate(pairs)]
    return units, {"iteration": iteration, "reward": float(scored.mean()),
                   "reward_std": float(scored.std()) if len(scored) > 1 else 0.0,
                   "empty": sum(not y for _, y in pairs)}


def steps_per_iteration(n_units: int, cfg: TrainConfig) -> int:
    return cfg.epochs * math.ceil(n_units / cfg.batch_size)


def iteration_schedule(units: list[dict], cfg: TrainConfig, iteration: int) -> list[tuple[int, list]]:
    """(epoch, batch) of the iteration's steps: `student.train.schedule` with a seed per iteration."""
    from ..student.train import schedule

    return schedule(units, dataclasses.replace(cfg, seed=cfg.seed + iteration))


def train_policy(base_dir: str | Path, init_adapter: str | Path, reward_dir: str | Path, records: list[dict],
                 cfg: Config, out_dir: str | Path, live_dir: str | Path | None = None,
                 times: dict | None = None) -> dict:
    """Run `cfg.iterations` rollouts and their updates from `init_adapter`; save the adapter (PEFT + GGUF twin).

    Returns a summary of what the inputs determine (steps, last values, per-iteration reward means). Resumes from
    a checkpoint of the same inputs under .cache/checkpoints (`student.checkpoint`).
    """
    from ..student.checkpoint import (Checkpoints, fingerprint, load_trainable, rng_state, set_rng_state,
                                      trainable_state)
    from ..student.launch import accelerator, autocast
    from ..student.model import check_lora_matches, load_student, load_tokenizer, save_adapter
    from ..student.train import deterministic, log_step, lr_at, open_live, seconds_since_process_start, take_step

    t = cfg.train
    if not records:
        raise ConfigError("rlhf: no training records to draw prompts from; check the prepare stage's train split")
    check_lora_matches(t.lora, init_adapter, "rlhf.train.lora")
    acc = accelerator(t.device)
    precision = autocast(t.precision, acc.device)
    keyed = {"rlhf": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "train"},
             "reward": fingerprint(reward_dir), "records": records}
    checkpoints = Checkpoints.for_run(base_dir, init_adapter, [keyed], t, "rlhf") if t.save_every else None
    torch.manual_seed(t.seed)
    tokenizer = load_tokenizer(base_dir)
    policy = load_student(base_dir, adapter=init_adapter, trainable=True).to(acc.device)
    reward_model = reward.load(base_dir, reward_dir).to(acc.device)
    reference_lora = trainable_state(policy)
    if t.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loss_fn = make_loss(tokenizer, cfg, t.max_len, t.row_tokens)
    per_iter = steps_per_iteration(min(cfg.prompts, len(records)) * cfg.samples, t)
    total = cfg.iterations * per_iter
    live = open_live(live_dir)
    with deterministic(t.threads, strict=acc.device.type == "cpu"):
        params = [p for p in policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        start, history, rollouts, units = 0, [], [], None
        state = checkpoints.load() if checkpoints else None
        if state is not None:
            load_trainable(policy, state["trainable"])
            opt.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"], acc.device)
            start, history, rollouts, units = state["step"], state["history"], state["rollouts"], state["units"]
            print(f"rlhf: resuming from step {start} of {total} (checkpoint {checkpoints.dir})", flush=True)
        if live:
            for step, values in enumerate(history):
                log_step(live, step, values)
        policy.train()  # (gradient checkpointing acts in train mode only)
        for module in policy.modules():  # no dropout: exact ratios, and rollouts that depend on weights and seed
            if isinstance(module, torch.nn.Dropout):
                module.eval()
        last = history[-1] if history else {}
        for step in range(start, total):
            iteration, at = divmod(step, per_iter)
            if step == start and times is not None:
                times["startup_s"] = round(seconds_since_process_start(), 2)
            if at == 0 or units is None:
                units, logs = rollout(policy, reference_lora, reward_model, tokenizer, records, cfg, iteration,
                                      precision)
                rollouts.append(logs)
                print(f"rlhf: iteration {iteration}: mean reward {logs['reward']:.4f}", flush=True)
            epoch, batch = iteration_schedule(units, t, iteration)[at]
            lr = lr_at(step, total, t)
            value, logs = take_step(policy, batch, loss_fn, opt, lr, t, acc, precision)
            last = {"iteration": iteration, "epoch": epoch, "lr": lr, "loss": value,
                    "reward": rollouts[-1]["reward"], **logs}
            history.append(last)
            if live:
                log_step(live, step, last)
            if checkpoints and t.save_every and (step + 1) % t.save_every == 0 and step + 1 < total:
                checkpoints.save({"step": step + 1, "trainable": trainable_state(policy),
                                  "optimizer": opt.state_dict(), "rng": rng_state(acc.device),
                                  "history": history, "rollouts": rollouts, "units": units})
    if live:
        live.summary.update({"steps": total, "iterations": cfg.iterations})
        live.end()
    save_adapter(policy.to("cpu"), out_dir)
    if checkpoints:
        checkpoints.clear()
    return {"steps": total, "iterations": cfg.iterations, "samples_per_iteration": len(units),
            "final": last, "rollouts": rollouts, "init_adapter": str(init_adapter)}
