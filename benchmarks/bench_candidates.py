"""Benchmark candidate sampling: N samples of an instruction as one grouped llama.cpp request (the prompt evaluated
once, N streams decoded together) against N separate completions, each from a fresh state as before.

    python benchmarks/bench_candidates.py --out metrics/bench_candidates.json [--gguf models/base/model.gguf]
Prints seconds, generated tokens and the ratios, and writes them to --out (the lead merges it into
metrics/bench.json). Asserts nothing: timings are for people, not tests.
"""
from __future__ import annotations

import dataclasses
import glob
import time
from pathlib import Path

import click

from teachloop.data import load_records
from teachloop.llm import LLMConfig, Request
from teachloop.llm.llamacpp import LlamaCppBackend
from teachloop.machine import write_figures
from teachloop.methods.candidates import item_seed, sample_records
from teachloop.student.prompting import record_prompt

TARGET = 1.3  # issue #12: grouped sampling must be at least this much faster than separate calls


def separate(backend: LlamaCppBackend, req: Request, n: int) -> list[str]:
    """The previous path: one fresh-state completion per sample, seeds as in a grouped request."""
    return [backend.complete(dataclasses.replace(req, seed=req.seed + k)) for k in range(n)]


def n_tokens(backend: LlamaCppBackend, texts: list[str]) -> int:
    return sum(len(backend.gen.tokenize(t.encode(), add_bos=False, special=False)) for t in texts)


@click.command()
@click.option("--gguf", default=".cache/test-base/model.gguf", show_default=True,
              type=click.Path(exists=True, path_type=Path), help="Model (the packaged base model by default).")
@click.option("--seed-data", default="data/seed/train", show_default=True, help="Folder of training rows.")
@click.option("--instructions", default=12, show_default=True, help="Instructions sampled.")
@click.option("--n", default=4, show_default=True, help="Candidates per instruction.")
@click.option("--max-tokens", default=48, show_default=True, help="New tokens per candidate.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="JSON file to write the figures to.")
def main(gguf: Path, seed_data: str, instructions: int, n: int, max_tokens: int, out: Path) -> None:
    """Time both paths on the same requests, interleaved per instruction so machine load hits both alike."""
    records, _ = load_records(sorted(glob.glob(f"{seed_data}/*")))
    records = sample_records(records, instructions, seed=11)
    backend = LlamaCppBackend(LLMConfig(gguf=str(gguf)))
    reqs = [Request(record_prompt(r), max_tokens=max_tokens, temperature=0.8, seed=item_seed(11, r["id"]),
                    stop=("\n###",), repeat_penalty=1.1) for r in records]
    # Warm-up outside the timings: model load and the one-off grouped context (opened once per process).
    backend.complete_samples(reqs[0], n)
    separate(backend, reqs[0], 1)
    times = {"grouped": 0.0, "separate": 0.0}
    tokens = {"grouped": 0, "separate": 0}
    for i, req in enumerate(reqs):
        order = ("grouped", "separate") if i % 2 == 0 else ("separate", "grouped")
        for path in order:
            start = time.perf_counter()
            texts = backend.complete_samples(req, n) if path == "grouped" else separate(backend, req, n)
            times[path] += time.perf_counter() - start
            tokens[path] += n_tokens(backend, texts)
    ratio = times["separate"] / times["grouped"]
    tps = {p: tokens[p] / times[p] for p in times}
    figures = {
        "instructions": len(reqs), "n": n, "max_tokens": max_tokens,
        "separate_s": round(times["separate"], 2), "grouped_s": round(times["grouped"], 2),
        "separate_tokens": tokens["separate"], "grouped_tokens": tokens["grouped"],
        "ratio": round(ratio, 3), "tokens_per_s_ratio": round(tps["grouped"] / tps["separate"], 3),
        "target": TARGET,
    }
    write_figures(out, {"candidates_grouped_vs_separate": figures})
    print(f"candidates, {len(reqs)} instructions x {n}, <= {max_tokens} tokens each:")
    print(f"  {n} separate calls per instruction : {times['separate']:7.2f} s  {tokens['separate']:5d} tokens  "
          f"{tps['separate']:6.1f} tok/s")
    print(f"  1 grouped request per instruction: {times['grouped']:7.2f} s  {tokens['grouped']:5d} tokens  "
          f"{tps['grouped']:6.1f} tok/s")
    print(f"  ratio {ratio:.2f}x (tokens/s {figures['tokens_per_s_ratio']:.2f}x; target >= {TARGET}x) -> {out}")


if __name__ == "__main__":
    main()
