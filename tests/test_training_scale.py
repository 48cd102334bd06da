"""Training beyond one CPU process: micro-batches and data-parallel processes give the adapter one process with the
whole batch gives (the step's loss is split, not changed: `student/split.py`), and a training stage killed with
SIGKILL resumes from its checkpoint and ends at the uninterrupted adapter, to the byte.

The stage tests run `stages/sft.py` as `dvc repro` would, on a tiny random LLaMA with llama.cpp's SentencePiece
vocabulary (no download): `processes: 2` relaunches it under `accelerate launch`, two gloo processes on this CPU.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from teachloop.config import ConfigError, build
from teachloop.methods import dpo, sft, tuna
from teachloop.student.model import LoraConfig
from teachloop.student.train import TrainConfig, train
from test_packing import MAX_LEN, ROWS, UNITS_DPO, UNITS_SFT, UNITS_TUNA, ByteTokenizer, tiny_model

ROOT = Path(__file__).resolve().parent.parent


def tiny_student(dropout: float = 0.0):
    """test_packing's tiny Gemma 3 with a fresh LoRA (r 4), as the stages train one."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    torch.manual_seed(0)
    return get_peft_model(tiny_model(), PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, task_type="CAUSAL_LM",
                                                       target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[n] - b[n]).abs().max().item() for n in a)


@pytest.mark.parametrize("name,make,units", [
    ("sft", lambda tok: sft.make_loss(tok, None, MAX_LEN, ROWS), UNITS_SFT * 2),
    ("tuna", lambda tok: tuna.make_loss(tok, tuna.Config(), MAX_LEN, ROWS), UNITS_TUNA * 2),
    ("dpo", lambda tok: dpo.make_loss(tok, dpo.Config(beta=0.1), MAX_LEN, ROWS), UNITS_DPO * 2),
])
def test_micro_batches_train_the_adapter_the_whole_batch_trains(name, make, units):
    """4 x 1 micro-batches against one batch of 4: the losses couple a step's sequences (a token mean over the
    step, candidates compared with each other), so plain gradient accumulation would not pass this."""
    runs = {}
    for micro in (0, 1, 3):
        cfg = TrainConfig(lr=1e-2, batch_size=4, micro_batch_size=micro, epochs=2, max_len=MAX_LEN,
                          warmup_ratio=0.0, row_tokens=ROWS, precision="fp32", lora=LoraConfig(r=4, dropout=0.0))
        model = tiny_student()
        summary = train(model, units, make(ByteTokenizer()), cfg)
        runs[micro] = (summary, lora_weights(model))
    (s0, w0), (s1, w1), (s3, w3) = runs[0], runs[1], runs[3]
    assert s0["steps"] == s1["steps"] == 4
    assert abs(s0["final"]["loss"] - s1["final"]["loss"]) < 1e-4
    assert max_diff(w0, w1) < 1e-4 and max_diff(w0, w3) < 1e-4
    start = lora_weights(tiny_student())
    assert max_diff(w0, start) > 1e-3  # it trained: the comparison is not between two untouched adapters


def test_micro_batches_replay_dropout_exactly(monkeypatch):
    """With LoRA dropout on, backward's replay of a micro-batch must draw the masks its first pass drew, or the
    gradient would belong to another loss: every replayed score equals the first pass's, and runs repeat."""
    from teachloop.student import split

    seen = []
    real = split.response_logprobs

    def recording(model, batch):
        sums, counts = real(model, batch)
        seen.append(sums.detach().clone())
        return sums, counts

    monkeypatch.setattr(split, "response_logprobs", recording)
    cfg = TrainConfig(lr=1e-2, batch_size=4, micro_batch_size=1, epochs=1, max_len=MAX_LEN, warmup_ratio=0.0,
                      row_tokens=ROWS)
    runs = []
    for _ in range(2):
        seen.clear()
        model = tiny_student(dropout=0.5)
        assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())  # masks are drawn at all
        train(model, UNITS_SFT * 2, sft.make_loss(ByteTokenizer(), None, MAX_LEN, ROWS), cfg)
        runs.append(lora_weights(model))
        assert len(seen) == 2 * 4 * 2  # 2 steps x 4 micro-batches x (first pass + replay)
        for step in range(2):
            first, replayed = seen[step * 8 : step * 8 + 4], seen[step * 8 + 4 : step * 8 + 8]
            assert all(torch.equal(a, b) for a, b in zip(first, replayed))
    assert max_diff(*runs) == 0.0


def test_gradient_checkpointing_and_bf16_train_the_same_adapter_within_their_precision():
    """Activation checkpointing recomputes the forward, so the adapter is the one trained without it; bf16 (mixed,
    fp32 master weights, through accelerate's autocast) trains to nearby weights, not the same ones."""
    runs = {}
    for name, extra in (("fp32", {"precision": "fp32"}),
                        ("checkpointed", {"precision": "fp32", "gradient_checkpointing": True}),
                        ("bf16", {"precision": "bf16"})):
        cfg = TrainConfig(lr=1e-2, batch_size=4, epochs=2, max_len=MAX_LEN, warmup_ratio=0.0, row_tokens=ROWS,
                          device="cpu", **extra)
        model = tiny_student()
        summary = train(model, UNITS_SFT * 2, sft.make_loss(ByteTokenizer(), None, MAX_LEN, ROWS), cfg)
        runs[name] = (summary["final"]["loss"], lora_weights(model))
    start = lora_weights(tiny_student())

    def update(name):
        return torch.cat([(runs[name][1][n] - start[n]).flatten() for n in sorted(start)])

    assert max_diff(runs["fp32"][1], runs["checkpointed"][1]) < 1e-6
    assert update("fp32").abs().max() > 1e-3  # it trained
    # Adam flips the sign of near-zero gradients under bf16 noise, so compare the update's direction, not each weight
    assert torch.nn.functional.cosine_similarity(update("fp32"), update("bf16"), dim=0) > 0.9
    assert runs["bf16"][0] != runs["fp32"][0]  # it did run in bf16


def test_checkpoints_are_keyed_by_the_runs_inputs(tmp_path):
    from teachloop.student.checkpoint import Checkpoints

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    cfg = TrainConfig(save_every=5)

    def key(units=UNITS_SFT, cfg=cfg, desc="sft"):
        return Checkpoints.for_run(base, None, units, cfg, desc, root=tmp_path / "c").dir.name

    assert key() == key(cfg=TrainConfig(save_every=7))  # when it saves is not what it computes
    assert len({key(), key(units=UNITS_SFT[:3]), key(cfg=TrainConfig(lr=1.0)), key(desc="dpo")}) == 4
    before = key()
    (base / "config.json").write_text('{"hidden_size": 8}')
    assert key() != before  # another base model


@pytest.mark.parametrize("bad,match", [({"micro_batch_size": 8, "batch_size": 4}, "micro_batch_size"),
                                       ({"precision": "fp16"}, "bf16"), ({"device": "tpu"}, "device"),
                                       ({"processes": 0}, "processes"), ({"save_every": -1}, "save_every")])
def test_training_settings_that_cannot_work_are_refused(bad, match):
    with pytest.raises(ConfigError, match=match):
        build(TrainConfig, bad, "sft.train")


def test_a_device_that_is_not_here_is_an_error_not_a_cpu_run():
    from teachloop.student.launch import device_name

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert device_name("auto") in ("cpu", "mps") and device_name("cpu") == "cpu"
    with pytest.raises(ConfigError, match="no cuda device"):
        device_name("cuda")


# ---------------------------------------------------------------- the real stage: processes and SIGKILL resume


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny random LLaMA student (HF dir with llama.cpp's SentencePiece vocabulary) and 24 prepared records."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from teachloop.student.llamacpp_src import vocab_gguf
    from teachloop.student.twins import spm_model_from_gguf
    from test_student_arch import as_on_the_hub

    work = tmp_path_factory.mktemp("scale")
    vocab = vocab_gguf("llama-spm")
    tok = AutoTokenizer.from_pretrained(str(vocab.parent), gguf_file=vocab.name)
    as_on_the_hub(tok)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    base = work / "base"
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(base)
    tok.save_pretrained(base)
    (base / "tokenizer.model").write_bytes(spm_model_from_gguf(vocab))
    records = [json.loads(line) for line in (ROOT / "data/seed/train/part2.jsonl").read_text().splitlines()][:24]
    prepared = work / "prepared"
    prepared.mkdir()
    for split, rows in (("train", records[:20]), ("val", records[20:])):
        (prepared / f"{split}.jsonl").write_text("".join(json.dumps({**r, "id": f"{split}-{i}"}) + "\n"
                                                         for i, r in enumerate(rows)))
    return work


def sft_stage(project: Path, name: str, checkpoints: Path, **train) -> subprocess.Popen:
    """Start stages/sft.py on the tiny project with these sft.train settings (2 epochs of 24 records, batch 4)."""
    # fp32 unless a test asks otherwise: the comparisons below are at fp32 tolerance, and `auto` is bf16 on a CPU
    # with bf16 units, where two processes' partial sums round differently (2e-3 apart, not 1e-4).
    settings = {"lr": 1e-3, "epochs": 2, "batch_size": 4, "max_len": 128, "threads": 1, "row_tokens": 512,
                "precision": "fp32",
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0,
                         "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                            "down_proj"]}, **train}
    params = project / f"params-{name}.yaml"
    params.write_text(yaml.safe_dump({"sft": {"max_examples": 0, "seed": 3, "train": settings}}))
    env = {**os.environ, "TEACHLOOP_CHECKPOINTS": str(checkpoints), "TEACHLOOP_RUNLOG": str(project / "runlog.jsonl"),
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "stages/sft.py", "--params", str(params), "--prepared",
                             str(project / "prepared"), "--base", str(project / "base"), "--out",
                             str(project / name), "--live", str(project / f"live-{name}")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def kill_at_first_checkpoint(proc: subprocess.Popen, ckpt: Path) -> None:
    """SIGKILL the stage as soon as a checkpoint appears under `ckpt`, asserting it was still training."""
    deadline = time.time() + 300
    while not any(ckpt.glob("*/state.pt")):
        assert proc.poll() is None, "the stage ended before its first checkpoint:\n" + proc.communicate()[0][-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before the kill; the test needs slower steps"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def adapter(project: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(project / name / "adapter_model.safetensors"))


@pytest.mark.slow
def test_two_processes_train_the_adapter_one_process_trains(project):
    finish(sft_stage(project, "one", project / "ckpt-one", processes=1))
    out = finish(sft_stage(project, "two", project / "ckpt-two", processes=2))
    assert "relaunching" in out and "accelerate.commands.launch" in out
    one, two = adapter(project, "one"), adapter(project, "two")
    assert max_diff(one, two) < 1e-4
    assert (project / "two" / "adapter.gguf").exists() and (project / "two" / "train_summary.json").exists()
    # one process wrote the outputs: one run-log line for the stage, not two
    lines = [json.loads(x) for x in (project / "runlog.jsonl").read_text().splitlines()]
    assert sum(1 for x in lines if x["stage"] == "sft") == 2  # the one-process run and the two-process run


@pytest.mark.slow
def test_a_killed_training_stage_resumes_from_its_checkpoint_to_the_same_adapter(project):
    """SIGKILL after the first checkpoint, re-run: the log names the step it resumed from, and the adapter and the
    per-step metrics files equal those of an uninterrupted run (with LoRA dropout on: the RNG is restored too)."""
    dropout = {"lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "k_proj", "v_proj",
               "o_proj", "gate_proj", "up_proj", "down_proj"]}}
    finish(sft_stage(project, "whole", project / "ckpt-whole", save_every=2, **dropout))
    assert not any((project / "ckpt-whole").glob("*/state.pt"))  # cleared after the adapter was saved

    ckpt = project / "ckpt-killed"
    proc = sft_stage(project, "killed", ckpt, save_every=2, **dropout)
    kill_at_first_checkpoint(proc, ckpt)
    assert not (project / "killed" / "adapter_model.safetensors").exists()

    out = finish(sft_stage(project, "killed", ckpt, save_every=2, **dropout))
    resumed = [line for line in out.splitlines() if "resuming from step" in line]
    assert resumed, out[-2000:]
    step = int(resumed[0].split("resuming from step")[1].split()[0])
    assert 2 <= step < 12 and step % 2 == 0
    assert max_diff(adapter(project, "whole"), adapter(project, "killed")) == 0.0
    whole, killed = project / "live-whole", project / "live-killed"
    for f in sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file()):
        assert (killed / f).read_bytes() == (whole / f).read_bytes(), f
