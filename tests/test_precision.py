"""Training precision: `auto` picks bf16 only where bf16 units are reported (detection mocked both ways), and a
bf16 run (frozen base in bf16, fp32 LoRA and optimiser) tracks the fp32 run and repeats to the byte. Tiny
random-config Gemma-3 saved to disk and loaded through `load_student`, as the stages load the real one."""
from __future__ import annotations

import pytest
import torch

from teachloop import machine
from teachloop.student import launch
from teachloop.student.logprobs import IGNORE, collate, response_logprobs
from teachloop.student.model import LoraConfig, load_student
from teachloop.student.train import TrainConfig, train


@pytest.mark.parametrize("units, expected", [(["avx512_bf16"], "bf16"), (["amx_bf16", "avx512_bf16"], "bf16"),
                                             ([], "fp32")])
def test_auto_picks_bf16_on_a_cpu_only_where_bf16_units_are_reported(monkeypatch, units, expected):
    monkeypatch.setattr(launch, "cpu_bf16_units", lambda: units)
    assert launch.precision_name("auto", "cpu") == expected
    assert launch.dtype_of("auto", "cpu") == {"bf16": torch.bfloat16, "fp32": torch.float32}[expected]
    # an explicit choice is kept either way; mps has no bf16 path here
    assert launch.precision_name("fp32", "cpu") == "fp32" and launch.precision_name("bf16", "cpu") == "bf16"
    assert launch.precision_name("auto", "mps") == "fp32"


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_cuda_follows_the_gpu(monkeypatch, supported):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    monkeypatch.setattr(launch, "cpu_bf16_units", lambda: ["amx_bf16"])  # the host CPU does not decide for a GPU
    assert launch.precision_name("auto", "cuda") == ("bf16" if supported else "fp32")


def test_bf16_units_come_from_torch_and_else_from_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert machine.cpu_bf16_units() == ["avx512_bf16"]
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert machine.cpu_bf16_units() == []
    # a torch without the checks: /proc/cpuinfo's flags answer
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "amx_tile", "amx_bf16", "avx512_bf16"})
    assert machine.cpu_bf16_units() == ["amx_bf16", "avx512_bf16"]
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert machine.cpu_bf16_units() == []


def test_machine_description_names_the_cpu_and_torch():
    info = machine.describe()
    assert info["cpu_model"] and info["torch"] == torch.__version__ and info["torch_threads"] >= 1
    assert set(info["cpu_flags"]) <= set(machine.SPEED_FLAGS) and set(info["bf16_units"]) <= {"amx_bf16",
                                                                                                "avx512_bf16"}


# --- bf16 against fp32 on a tiny model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A 2-layer Gemma-3 with a 64-token vocabulary, saved in fp32 as the base twin is."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=64)
    out = tmp_path_factory.mktemp("tiny") / "hf"
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    return out


def units(n: int) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    return [{"prompt": torch.randint(3, 64, (6,), generator=gen).tolist(),
             "response": torch.randint(3, 64, (6,), generator=gen).tolist()} for _ in range(n)]


def nll(model, batch_units):
    batch = collate([(u["prompt"] + u["response"], [IGNORE] * len(u["prompt"]) + u["response"])
                     for u in batch_units], 0)
    sums, counts = response_logprobs(model, batch)
    return -sums.sum() / counts.sum(), {}


def run(base, precision: str, live_dir):
    """(loss per step, the trained LoRA weights, their starting values) of one run in `precision`."""
    cfg = TrainConfig(lr=5e-3, batch_size=4, epochs=4, warmup_ratio=0.0, threads=2, precision=precision,
                      lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(cfg.seed)
    model = load_student(base, lora=cfg.lora, dtype=launch.dtype_of(precision, "cpu"))
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train(model, units(16), nll, cfg, live_dir=live_dir)
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    rows = (live_dir / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]
    loss = [float(row.split("\t")[1]) for row in rows]
    return loss, lora, start, model


def test_bf16_training_keeps_a_bf16_base_and_fp32_lora_and_tracks_fp32(tiny_base, tmp_path):
    loss32, lora32, start32, _ = run(tiny_base, "fp32", tmp_path / "fp32")
    loss16, lora16, start16, model16 = run(tiny_base, "bf16", tmp_path / "bf16")
    kinds = {(p.requires_grad, p.dtype) for p in model16.parameters()}
    assert kinds == {(False, torch.bfloat16), (True, torch.float32)}  # frozen base bf16, LoRA weights fp32
    assert len(loss16) == len(loss32) == 16 and loss32[-1] < loss32[0] - 0.3  # it learned
    # bf16 matmuls carry 8 mantissa bits: every per-step loss within 1% of the fp32 run's (measured: 0.05%)
    assert max(abs(a - b) / a for a, b in zip(loss32, loss16)) < 0.01, (loss32, loss16)
    # the adapter moved the same way: cosine of the whole update (every LoRA weight, end minus start)
    delta32 = torch.cat([(lora32[n] - start32[n]).flatten() for n in sorted(lora32)])
    delta16 = torch.cat([(lora16[n] - start16[n]).flatten() for n in sorted(lora16)])
    assert torch.nn.functional.cosine_similarity(delta32, delta16, dim=0) > 0.98  # measured: 0.997


def test_a_bf16_run_repeats_to_the_byte(tiny_base, tmp_path):
    runs = [run(tiny_base, "bf16", tmp_path / name) for name in ("a", "b")]
    (loss_a, lora_a, _, _), (loss_b, lora_b, _, _) = runs
    assert loss_a == loss_b and all(torch.equal(lora_a[n], lora_b[n]) for n in lora_a)
    for f in (tmp_path / "a").rglob("*"):
        if f.is_file():
            assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f


def test_lora_inputs_stay_bf16_under_autocast_and_no_score_changes(tiny_base):
    """PEFT's cast of each LoRA input up to fp32 is undone by autocast before the matmul: switching it off (what
    bf16 training does) saves two copies per layer and changes no bit of the scores; fp32 runs keep it."""
    model = load_student(tiny_base, lora=LoraConfig(r=4, alpha=8, dropout=0.0), dtype=torch.bfloat16)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)  # B starts at zero: give the adapter a say in the scores
    model.eval()
    u = units(2)
    cpu = torch.device("cpu")
    with torch.no_grad(), launch.autocast("bf16", cpu)():
        cast = nll(model, u)[0]
        with launch.lora_inputs_as_they_come(model, "bf16", cpu):
            casts_off = [m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "lora_A")]
            as_they_come = nll(model, u)[0]
    assert casts_off and not any(casts_off) and torch.equal(cast, as_they_come)
    with launch.lora_inputs_as_they_come(model, "fp32", cpu):
        assert all(getattr(m, "cast_input_dtype_enabled", True) for m in model.modules() if hasattr(m, "lora_A"))
