"""The RLHF row: the reward model's Bradley-Terry loss and its pooling, the clipped policy objective with its KL
term against values worked out by hand, seeded sampling, one rollout on a tiny model, params refused with a
reason, and (slow) the reward and rlhf stages run as `dvc repro` runs them, killed mid-training and resumed to
the same adapter bytes."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from teachloop.config import ConfigError, build
from teachloop.methods import reward, rlhf
from teachloop.student.checkpoint import trainable_state
from teachloop.student.sample import sample
from test_packing import ByteTokenizer, tiny_model
from test_training_scale import finish, kill_at_first_checkpoint
from test_training_scale import project  # noqa: F401  (a fixture: the tiny LLaMA project the stages run on)

ROOT = Path(__file__).resolve().parent.parent


class Bytes(ByteTokenizer):
    """test_packing's byte tokenizer, decoding too (what `sample` needs)."""

    def batch_decode(self, rows, skip_special_tokens=True):
        return [bytes(int(t) - 3 for t in row if int(t) >= 3 and int(t) < 259).decode("utf-8", "replace")
                for row in rows]


def tiny_policy(seed: int = 0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(tiny_model(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                    target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():  # a trained-looking adapter (B != 0), as the SFT adapter the policy starts from
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


# ------------------------------------------------------------------------------------------------ reward model


def test_reward_loss_is_bradley_terry_by_hand():
    chosen = torch.tensor([1.0, 0.0, -0.5])
    rejected = torch.tensor([0.0, 0.5, -0.5])
    value, logs = reward.loss(chosen, rejected)
    # -log sigmoid(x) = log(1 + exp(-x)) for the differences 1, -0.5, 0
    by_hand = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(0.5)) + math.log(2.0)) / 3
    assert value.item() == pytest.approx(by_hand, abs=1e-6)
    assert logs["accuracy"] == pytest.approx(1 / 3) and logs["margin"] == pytest.approx(0.5 / 3)


def test_the_reward_models_step_loss_is_bradley_terry_over_every_pair_of_an_item():
    """An item of 3 ranked texts is 3 pairs from 3 scored sequences: the step's loss is their mean -log sigmoid."""
    torch.manual_seed(0)
    model = reward.RewardModel(tiny_policy()).eval()
    units = [{"prompt": "Name a colour.", "ranked": ["Red.", "Blue, I think.", "Turtles."]},
             {"prompt": "Say hi.", "ranked": ["Hi!", "No."]}]
    with torch.no_grad():
        r = reward.rewards(model, Bytes(), [(u["prompt"], t) for u in units for t in u["ranked"]], 48, 0).tolist()
        value, _ = reward.make_loss(Bytes(), reward.Config(), 48, 0)(model, units)
    pairs = [(0, 1), (0, 2), (1, 2), (3, 4)]
    by_hand = sum(math.log(1 + math.exp(-(r[a] - r[b]))) for a, b in pairs) / len(pairs)
    assert value.item() == pytest.approx(by_hand, abs=1e-5)
    right = sum(r[a] > r[b] for a, b in pairs) / len(pairs)
    assert reward.accuracy(model, Bytes(), units, 48, batch_size=1, row_tokens=0) == pytest.approx(right)


def test_reward_pairs_and_a_held_out_split_by_instruction():
    items = [{"id": f"r{i}", "prompt": f"p{i}", "candidates": ["x", "y", "z"], "ranking": [2, 0, 1], "ok": True}
             for i in range(8)]
    items.append({"id": "bad", "prompt": "p", "candidates": ["a", "b"], "ranking": None, "ok": False})
    cfg = reward.Config(heldout=0.25, seed=19)
    train, held, counts = reward.build_units(items, cfg)
    assert counts["failed_rankings"] == 1 and counts["heldout_items"] == 2 and counts["train_items"] == 6
    assert counts["train_pairs"] == 6 * 3 and counts["heldout_pairs"] == 2 * 3  # 3 pairs of 3 distinct texts
    assert all(u["ranked"] == ["z", "x", "y"] for u in held)
    assert not {u["prompt"] for u in train} & {u["prompt"] for u in held}  # no instruction on both sides
    again = reward.build_units(list(reversed(items)), cfg)[1]  # file order changes nothing
    assert {u["prompt"] for u in again} == {u["prompt"] for u in held}
    other = reward.build_units(items, reward.Config(heldout=0.25, seed=20))[1]
    assert {u["prompt"] for u in other} != {u["prompt"] for u in held}
    with pytest.raises(ConfigError, match="at least 2 ranked items"):
        reward.build_units(items[:1], cfg)
    same = [{**it, "candidates": ["x", "x ", ""], "ranking": [0, 1, 2]} for it in items[:4]]
    with pytest.raises(ConfigError, match="raise candidates"):
        reward.build_units(same, cfg)


def test_reward_of_a_sequence_does_not_depend_on_the_layout():
    """The head reads each sequence's last position; packed rows (several sequences each) must find the same one
    as padded rows, and a different response must change the reward (or the equality would prove nothing)."""
    torch.manual_seed(0)
    model = reward.RewardModel(tiny_policy()).eval()
    pairs = [("Name a colour.", "Red."), ("Say hi.", "Hello to you, how are you today?"), ("Name a colour.", "Blue")]
    with torch.no_grad():
        padded = reward.rewards(model, Bytes(), pairs, 48, row_tokens=0)
        packed = reward.rewards(model, Bytes(), pairs, 48, row_tokens=40)
        one_row = reward.rewards(model, Bytes(), pairs, 48, row_tokens=10_000)
    assert torch.allclose(padded, packed, atol=1e-5) and torch.allclose(padded, one_row, atol=1e-5)
    assert abs(padded[0] - padded[2]) > 1e-4


# ------------------------------------------------------------------------------------------------ policy loss


def by_hand(logp, old, ref, n, adv, clip, beta):
    total = 0.0
    for lp, o, r, k, a in zip(logp, old, ref, n, adv):
        ratio = math.exp((lp - o) / k)
        surrogate = min(ratio * a, min(max(ratio, 1 - clip), 1 + clip) * a)
        d = (r - lp) / k
        total += -surrogate + beta * (math.exp(d) - d - 1)
    return total / len(logp)


# sample 0: A > 0, ratio exp(0.5) > 1.2: clipped, its surrogate is constant
# sample 1: A < 0, ratio exp(-0.5) < 0.8: clipped on the other side, constant too
# sample 2: A > 0, ratio exp(-0.5) < 0.8: min keeps the unclipped (lower) term: gradient flows
# sample 3: A < 0, ratio exp(0.05) inside [0.8, 1.2]: unclipped
LOGP = [-10.0, -12.0, -9.0, -7.0]
OLD = [-12.0, -10.0, -7.0, -7.2]
REF = [-11.0, -11.0, -8.0, -7.5]
N = [4, 4, 4, 4]
ADV = [0.5, -0.25, 0.3, -0.6]


def test_policy_loss_equals_the_clipped_objective_by_hand():
    value, logs = rlhf.loss(torch.tensor(LOGP), torch.tensor(OLD), torch.tensor(REF), torch.tensor(N),
                            torch.tensor(ADV), clip=0.2, beta=0.05)
    assert value.item() == pytest.approx(by_hand(LOGP, OLD, REF, N, ADV, 0.2, 0.05), abs=1e-6)
    assert logs["clipped"] == pytest.approx(3 / 4)  # ratios outside [0.8, 1.2]: samples 0, 1 and 2
    assert logs["kl"] > 0
    value0, _ = rlhf.loss(torch.tensor(LOGP), torch.tensor(OLD), torch.tensor(REF), torch.tensor(N),
                          torch.tensor(ADV), clip=0.2, beta=0.0)
    assert value0.item() == pytest.approx(by_hand(LOGP, OLD, REF, N, ADV, 0.2, 0.0), abs=1e-6)


def test_clipping_stops_the_gradient_of_a_sample_and_the_kl_term_keeps_pulling():
    def grad(beta):
        logp = torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)
        value, _ = rlhf.loss(logp, torch.tensor(OLD, dtype=torch.float64), torch.tensor(REF, dtype=torch.float64),
                             torch.tensor(N), torch.tensor(ADV, dtype=torch.float64), clip=0.2, beta=beta)
        value.backward()
        return logp.grad.tolist()

    g = grad(0.0)
    assert g[0] == 0.0 and g[1] == 0.0  # clipped, on either side: exactly no gradient
    ratio2 = math.exp((LOGP[2] - OLD[2]) / N[2])
    assert g[2] == pytest.approx(-ADV[2] * ratio2 / N[2] / 4, rel=1e-9)  # d/dlogp of -(r A) / M
    ratio3 = math.exp((LOGP[3] - OLD[3]) / N[3])
    assert g[3] == pytest.approx(-ADV[3] * ratio3 / N[3] / 4, rel=1e-9)
    beta = 0.05
    g = grad(beta)
    d0 = (REF[0] - LOGP[0]) / N[0]  # only the KL term's gradient is left: beta / M * (exp(d) - 1) * (-1 / n)
    assert g[0] == pytest.approx(beta / 4 * (math.exp(d0) - 1) * (-1 / N[0]), rel=1e-9)


def test_group_advantages_are_reward_minus_the_prompts_mean():
    adv = rlhf.group_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5]]))
    assert adv.tolist() == [[-2.0, -1.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]]


# ------------------------------------------------------------------------------------------------ sampling


def test_samples_are_a_function_of_the_seed_and_leave_the_callers_rng_alone():
    model = tiny_policy()
    args = dict(n=3, max_new_tokens=12, temperature=1.0, stop=[])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = sample(model, Bytes(), "Say hi.", seed=5, **args)
    assert torch.equal(torch.get_rng_state(), before)
    again = sample(model, Bytes(), "Say hi.", seed=5, **args)
    other = sample(model, Bytes(), "Say hi.", seed=6, **args)
    assert first == again and first != other
    assert len(set(first)) > 1  # sampled, not greedy: the group differs


def test_a_steps_samples_are_a_function_of_seed_and_step():
    records = [{"id": f"r{i}", "instruction": f"Say {w}.", "input": ""} for i, w in enumerate("abcdef")]
    cfg = build(rlhf.Config, {"prompts": 2, "samples": 2, "max_new_tokens": 8, "seed": 1,
                              "train": {"max_len": 64}}, "rlhf")
    model = tiny_policy()
    assert rlhf.draw_prompts(records, cfg, 0) == rlhf.draw_prompts(list(reversed(records)), cfg, 0)
    step0 = rlhf.sample_group(model, Bytes(), rlhf.draw_prompts(records, cfg, 0), cfg, 0)
    assert step0 == rlhf.sample_group(model, Bytes(), rlhf.draw_prompts(records, cfg, 0), cfg, 0)
    fixed = rlhf.draw_prompts(records, cfg, 0)
    assert rlhf.sample_group(model, Bytes(), fixed, cfg, 1) != step0  # another step: other samples
    cfg2 = build(rlhf.Config, {"prompts": 2, "samples": 2, "max_new_tokens": 8, "seed": 2,
                               "train": {"max_len": 64}}, "rlhf")
    assert rlhf.sample_group(model, Bytes(), fixed, cfg2, 0) != step0  # another seed: other samples


def test_a_rollout_starts_on_the_reference_and_its_first_step_is_unclipped():
    records = [{"id": f"r{i}", "instruction": f"Say {w}.", "input": ""} for i, w in enumerate("abcd")]
    cfg = build(rlhf.Config, {"prompts": 2, "samples": 3, "max_new_tokens": 6, "train": {"max_len": 64,
                                                                                       "row_tokens": 40}}, "rlhf")
    policy = tiny_policy()
    torch.manual_seed(1)
    scorer = reward.RewardModel(tiny_policy(seed=1)).eval()
    units, logs = rlhf.rollout(policy, trainable_state(policy), scorer, Bytes(), records, cfg, 0, nullcontext)
    assert len(units) == 6 and logs["iteration"] == 0
    for group in (units[:3], units[3:]):
        assert len({u["prompt"] for u in group}) == 1
        assert sum(u["advantage"] for u in group) == pytest.approx(0.0, abs=1e-6)
    assert all(u["old"] == u["ref"] for u in units)  # the policy is the reference before any update
    value, step_logs = rlhf.make_loss(Bytes(), cfg, 64, 40)(policy, units)
    assert step_logs["clipped"] == 0.0 and step_logs["ratio"] == pytest.approx(1.0, abs=1e-5)
    assert step_logs["kl"] == pytest.approx(0.0, abs=1e-6)
    value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters() if p.requires_grad)
    # the reference weights are back in place: scoring again gives the same old log-probs
    again, _ = rlhf.rollout(policy, trainable_state(policy), scorer, Bytes(), records, cfg, 0, nullcontext)
    assert [u["old"] for u in again] == [u["old"] for u in units]


@pytest.mark.parametrize("section,bad,match", [
    (rlhf.Config, {"samples": 1}, "samples must be >= 2"),
    (rlhf.Config, {"clip": 1.5}, "clip must be in"),
    (rlhf.Config, {"kl_beta": -0.1}, "kl_beta"),
    (rlhf.Config, {"temperature": 0.0}, "greedy"),
    (rlhf.Config, {"iterations": 0}, "iterations"),
    (rlhf.Config, {"max_new_tokens": 300, "train": {"max_len": 256}}, "must exceed max_new_tokens"),
    (rlhf.Config, {"train": {"processes": 2}}, "processes must be 1"),
    (reward.Config, {"heldout": 0.0}, "heldout must be in"),
    (reward.Config, {"train": {"micro_batch_size": 2}}, "micro_batch_size: 0"),
])
def test_params_that_cannot_work_are_refused_with_a_reason(section, bad, match):
    with pytest.raises(ConfigError, match=match):
        build(section, bad, "section")


# ------------------------------------------------------------------------------------------------ the stages

LORA = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"]}


@pytest.fixture(scope="module")
def tiny(project):
    """test_training_scale's tiny LLaMA project, plus an SFT adapter on it (random B) and ranked candidates."""
    from teachloop.student.model import LoraConfig, load_student, save_adapter

    work = project
    torch.manual_seed(0)
    sft = load_student(work / "base", lora=LoraConfig(r=4, alpha=8, dropout=0.1, target_modules=LORA["target_modules"]),
                       trainable=False)
    with torch.no_grad():
        for name, p in sft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    save_adapter(sft, work / "sft")
    records = [json.loads(line) for line in (work / "prepared" / "train.jsonl").read_text().splitlines()]
    ranked = [{"id": r["id"], "prompt": f"### Instruction:\n{r['instruction']}\n\n### Response:\n",
               "candidates": [r["output"], r["output"][: len(r["output"]) // 2], "I do not know."],
               "ranking": [0, 1, 2], "ok": True} for r in records[:8]]
    (work / "ranked.jsonl").write_text("".join(json.dumps(it) + "\n" for it in ranked))
    return work



def stage(project: Path, script: str, name: str, section: dict, args: list[str], checkpoints: Path) -> subprocess.Popen:
    params = project / f"params-{name}.yaml"
    params.write_text(yaml.safe_dump(section))
    env = {**os.environ, "TEACHLOOP_CHECKPOINTS": str(checkpoints), "TEACHLOOP_RUNLOG": str(project / "runlog.jsonl"),
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, f"stages/{script}.py", "--params", str(params), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def reward_dir(tiny):
    project = tiny
    section = {"reward": {"heldout": 0.25, "seed": 19, "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4,
                                                                 "max_len": 128, "threads": 1, "lora": LORA}}}
    out = finish(stage(project, "reward", "reward", section,
                       ["--ranked", str(project / "ranked.jsonl"), "--base", str(project / "base"),
                        "--out", str(project / "reward"), "--live", str(project / "live-reward"),
                        "--metrics", str(project / "reward-metrics.json")], project / "ckpt-reward"))
    assert "held-out accuracy" in out
    return project / "reward"


def rlhf_stage(project: Path, name: str, checkpoints: Path) -> subprocess.Popen:
    section = {"rlhf": {"prompts": 2, "samples": 4, "iterations": 4, "max_new_tokens": 16, "seed": 3,
                        "train": {"lr": 1e-3, "epochs": 2, "batch_size": 4, "max_len": 128, "threads": 1,
                                  "warmup_ratio": 0.0, "save_every": 3, "lora": LORA}}}
    return stage(project, "rlhf", name, section,
                 ["--prepared", str(project / "prepared"), "--base", str(project / "base"), "--init",
                  str(project / "sft"), "--reward", str(project / "reward"), "--out", str(project / name),
                  "--live", str(project / f"live-{name}")], checkpoints)


@pytest.mark.slow
def test_the_reward_stage_writes_its_model_and_a_two_number_metric(tiny, reward_dir):
    project = tiny
    metrics = json.loads((project / "reward-metrics.json").read_text())
    assert set(metrics) == {"heldout_accuracy", "heldout_pairs"} and metrics["heldout_pairs"] == 2 * 3
    assert 0.0 <= metrics["heldout_accuracy"] <= 1.0
    assert (reward_dir / reward.HEAD).exists() and not (reward_dir / "adapter.gguf").exists()
    model = reward.load(project / "base", reward_dir)
    assert not any(p.requires_grad for p in model.parameters())
    summary = json.loads((reward_dir / "train_summary.json").read_text())
    assert summary["train_pairs"] == 6 * 3
    assert summary["heldout_accuracy"] == pytest.approx(metrics["heldout_accuracy"], abs=1e-4)


@pytest.mark.slow
def test_a_killed_rlhf_stage_resumes_to_the_same_adapter_bytes(tiny, reward_dir):
    """SIGKILL after a checkpoint, re-run: it resumes from that step and writes the adapter and the per-step
    metrics files an uninterrupted run writes, byte for byte (4 rollouts x 2 epochs x 2 batches = 16 steps).
    Checkpoints every 3 steps fall inside a rollout (3, 6, 9), so the resumed run must train on the rollout's
    samples from the checkpoint, then sample the next rollouts from restored weights."""
    project = tiny
    out = finish(rlhf_stage(project, "whole", project / "ckpt-whole"))
    assert sum(": mean reward " in line for line in out.splitlines()) == 4  # one line per rollout
    assert not any((project / "ckpt-whole").glob("*/state.pt"))

    ckpt = project / "ckpt-killed"
    proc = rlhf_stage(project, "killed", ckpt)
    kill_at_first_checkpoint(proc, ckpt)
    assert not (project / "killed" / "adapter_model.safetensors").exists()

    out = finish(rlhf_stage(project, "killed", ckpt))
    resumed = [line for line in out.splitlines() if "resuming from step" in line]
    assert resumed, out[-2000:]
    step = int(resumed[0].split("resuming from step")[1].split()[0])
    assert step in (3, 6, 9), step  # mid-rollout (a rollout is 4 steps)
    # (adapter.gguf is left out: llama.cpp's converter writes the output dir's name into it, "whole" or "killed")
    for f in ("adapter_model.safetensors", "train_summary.json"):
        assert (project / "killed" / f).read_bytes() == (project / "whole" / f).read_bytes(), f
    whole, killed = project / "live-whole", project / "live-killed"
    for f in sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file()):
        assert (killed / f).read_bytes() == (whole / f).read_bytes(), f
    # it trained: the adapter moved away from SFT, and clipping acted on the later steps of a rollout
    moved = load_file(str(project / "whole" / "adapter_model.safetensors"))
    start = load_file(str(project / "sft" / "adapter_model.safetensors"))
    assert max((moved[k] - start[k]).abs().max().item() for k in start) > 1e-4
    clipped = (whole / "plots" / "metrics" / "clipped.tsv").read_text().splitlines()[1:]
    assert any(float(line.split("\t")[1]) > 0 for line in clipped)
