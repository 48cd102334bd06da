"""GPU smoke run (`make gpu-smoke`): a tiny random LLaMA through every training method, a reference score and a
served-student answer on CUDA, in a few minutes, before a paper-scale run spends GPU hours.

    python benchmarks/gpu_smoke.py [--device cuda|cpu] [--work DIR]

Each method (SFT, CITING's revision SFT, Tuna_p and Tuna_c's loss, RRHF, RAFT, DPO with its reference) trains 2
steps through `train_adapter` with the params' defaults (precision auto: bf16 where the GPU has it) and writes its
adapter and GGUF twin; the reference log-likelihood scores two items on the device; `python -m llama_cpp.server`
serves the SFT adapter (all layers on the GPU when llama-cpp-python has GPU offload) and answers one prompt through
the OpenAI backend. Without a CUDA device it exits with status 2 and says so; `--device cpu` runs the same steps on
the CPU (a check of this script, not of the GPU path). Writes nothing outside --work (default: a temp dir).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "### Task:\nSay hello.\n\n### Answer:\n"
RANKED = [{"prompt": PROMPT, "candidates": ["Hello there!", "Hi.", "Go away."], "rewards": [2.0, 1.0, 0.0]},
          {"prompt": "### Task:\nName a colour.\n\n### Answer:\n", "candidates": ["Blue.", "A colour.", "No."],
           "rewards": [2.0, 1.0, 0.0]}]


def tiny_student(work: Path) -> Path:
    """The base stage's HF twin and GGUF of a random 2-layer LLaMA with llama.cpp's own LLaMA vocabulary."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from teachloop.student.llamacpp_src import vocab_gguf
    from teachloop.student.twins import spm_model_from_gguf

    vocab = vocab_gguf("llama-spm")
    tok = AutoTokenizer.from_pretrained(str(vocab.parent), gguf_file=vocab.name)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id))
    src = work / "src"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    (src / "tokenizer.model").write_bytes(spm_model_from_gguf(vocab))
    (work / "params.yaml").write_text(json.dumps({"base": {"hf_model": str(src), "gguf_outtype": "f32"}}))
    subprocess.run([sys.executable, str(ROOT / "stages" / "base.py"), "--params", str(work / "params.yaml"),
                    "--gguf", str(work / "base" / "model.gguf"), "--hf", str(work / "base" / "hf"), "--manifest",
                    str(work / "base" / "manifest.json")], cwd=ROOT, check=True)
    return work / "base"


def train_every_method(base: Path, work: Path, device: str) -> dict:
    """2 steps of each method; returns {method: its last step's logged values}."""
    from teachloop.methods import citing, dpo, raft, rrhf, sft, tuna
    from teachloop.student.model import LoraConfig
    from teachloop.student.train import TrainConfig, train_adapter

    cfg = TrainConfig(batch_size=1, max_len=64, device=device, threads=0, save_every=0,
                      lora=LoraConfig(r=4, alpha=8))
    sft_units = [{"prompt": PROMPT, "response": "Hello there!"}, {"prompt": RANKED[1]["prompt"], "response": "Blue."}]
    runs = {
        "sft": (sft.make_loss, None, sft_units, None),
        "citing": (citing.make_loss, None, sft_units, "sft"),
        "tuna_p": (tuna.make_loss, tuna.Config(), [{"prompt": u["prompt"], "candidates": u["candidates"]}
                                                   for u in RANKED], "sft"),
        "tuna_c": (tuna.make_loss, tuna.Config(loss=tuna.LossConfig(mle_on="best")),
                   [{"prompt": u["prompt"], "candidates": u["candidates"]} for u in RANKED], "sft"),
        "rrhf": (rrhf.make_loss, rrhf.Config(), RANKED, "sft"),
        "raft": (raft.make_loss, raft.Config(), sft_units, "sft"),
        "dpo": (dpo.make_loss, dpo.Config(), [{"prompt": u["prompt"], "chosen": u["candidates"][0],
                                               "rejected": u["candidates"][-1]} for u in RANKED], "sft"),
    }
    out = {}
    for name, (make_loss, mcfg, units, init) in runs.items():
        before = (lambda m, t, us, scope: dpo.before(m, t, us, cfg.max_len, cfg.row_tokens, scope)) \
            if name == "dpo" else None
        t0 = time.perf_counter()
        summary = train_adapter(base / "hf", [dict(u) for u in units],
                                lambda tok, f=make_loss, c=mcfg: f(tok, c, cfg.max_len, cfg.row_tokens), cfg,
                                work / "adapters" / name, init_adapter=work / "adapters" / init if init else None,
                                desc=name, before=before)
        out[name] = {"steps": summary["steps"], "loss": round(summary["final"]["loss"], 4),
                     "seconds": round(time.perf_counter() - t0, 1)}
        click.echo(f"  {name}: {out[name]}")
    return out


def reference_score(base: Path, adapter: Path, device: str) -> list[float]:
    import torch

    from teachloop.reference import reference_loglik
    from teachloop.student.launch import device_name
    from teachloop.student.model import load_student, load_tokenizer

    model = load_student(base / "hf", adapter, trainable=False).to(torch.device(device_name(device)))
    records = [{"instruction": "Say hello.", "input": "", "output": "Hello there!"},
               {"instruction": "Name a colour.", "input": "", "output": "Blue."}]
    return reference_loglik(model, load_tokenizer(base / "hf"), records, 64, batch_size=2)


def served_answer(base: Path, adapter: Path) -> tuple[str, int]:
    """One greedy answer of the SFT adapter served by `python -m llama_cpp.server` (GPU layers where it can)."""
    import llama_cpp

    from teachloop.llm import LLMConfig, Request, make_llm
    from teachloop.llm.testserver import free_port, llama_cpp_server

    gpu_layers = -1 if llama_cpp.llama_supports_gpu_offload() else 0
    port = free_port()
    config = adapter.parent / "models.json"
    config.write_text(json.dumps({"host": "127.0.0.1", "port": port, "models": [
        {"model": str(base / "model.gguf"), "model_alias": "sft", "lora_path": str(adapter / "adapter.gguf"),
         "n_ctx": 512, "n_gpu_layers": gpu_layers}]}))
    os.environ.setdefault("GPU_SMOKE_KEY", "local")
    with llama_cpp_server(["--config_file", str(config)], port=port) as url:
        cfg = LLMConfig(backend="openai", server="llamacpp", model="sft", base_url=url, api_key_env="GPU_SMOKE_KEY",
                        served={str(adapter): "sft"})
        return make_llm(cfg, "student").complete(Request(PROMPT, max_tokens=8)), gpu_layers


@click.command()
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=None, help="Work dir (default: a temp dir).")
def main(device: str, work: Path | None) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        click.echo("gpu-smoke: no CUDA device here (torch.cuda.is_available() is false): nothing was run. Run it on "
                   "a machine with an NVIDIA GPU and a CUDA build of torch (or --device cpu to check this script).",
                   err=True)
        raise SystemExit(2)
    start = time.perf_counter()
    where = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    click.echo(f"gpu-smoke on {where}")
    with tempfile.TemporaryDirectory() as tmp:
        work = work or Path(tmp)
        base = tiny_student(work)
        trained = train_every_method(base, work, device)
        scores = reference_score(base, work / "adapters" / "sft", device)
        click.echo(f"  reference log-likelihood on {device}: {[round(s, 4) for s in scores]}")
        answer, layers = served_answer(base, work / "adapters" / "sft")
        click.echo(f"  served student (llama_cpp.server, n_gpu_layers={layers}): {answer!r}")
    click.echo(f"gpu-smoke passed: {len(trained)} methods, 1 reference score, 1 served answer in "
               f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
