"""Benchmark the two speed choices the pipeline rests on, each against its baseline in the same process:

1. training: response-only LM head (`response_logprobs`) vs full-sequence logits, forward + backward;
2. judging: the three criteria of one order as one grouped llama.cpp request (`option_probs_many`, the shared
   prompt prefix evaluated once) vs three requests, each from a fresh state as every request now starts.

    python benchmarks/bench_logprobs.py --out FILE [--base models/base]
Prints seconds and speed-up ratios and writes them to --out; asserts nothing (timings are for people, not tests).
"""
from __future__ import annotations

import time
from pathlib import Path

import click
import torch

from teachloop.machine import write_figures


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_training(base: Path, repeats: int) -> dict:
    from teachloop.student.logprobs import IGNORE, collate, encode, response_logprobs
    from teachloop.student.model import load_student, load_tokenizer

    tok = load_tokenizer(base / "hf")
    model = load_student(base / "hf")
    prompt = "### Instruction:\n" + "Summarise the following passage about tides and the moon. " * 12 + "\n### Response:\n"
    pairs = [encode(tok, prompt, "The moon's gravity pulls the oceans, making two bulges that we see as tides.", 256)
             for _ in range(4)]
    batch = collate(pairs, tok.pad_token_id)

    def response_only():
        sums, counts = response_logprobs(model, batch)
        (-(sums / counts).mean()).backward()

    def full_logits():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        lp = torch.log_softmax(logits[:, :-1].float(), -1)
        mask = labels != IGNORE
        picked = lp.gather(2, labels.clamp(min=0).unsqueeze(2)).squeeze(2) * mask
        (-(picked.sum(1) / mask.sum(1)).mean()).backward()

    n_tokens = int(batch["attention_mask"].sum())
    fast, slow = _time(response_only, repeats), _time(full_logits, repeats)
    print(f"training step, batch 4 x {batch['input_ids'].shape[1]} tokens ({n_tokens} real):")
    print(f"  full-sequence logits : {slow:6.2f} s/step  {n_tokens / slow:7.1f} tok/s")
    print(f"  response-only head   : {fast:6.2f} s/step  {n_tokens / fast:7.1f} tok/s  ratio {slow / fast:.2f}x")
    return {"full_logits_s": slow, "response_only_s": fast, "tokens": n_tokens, "ratio": slow / fast}


def bench_judge(base: Path, repeats: int) -> dict:
    from teachloop.llm import LLMConfig
    from teachloop.llm.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(LLMConfig(gguf=str(base / "model.gguf")))
    shared = "Compare two answers to a question.\n" + "Answer A: the tides are caused by the moon. " * 20
    prompts = [shared + f"\nCriterion {c}: which answer is better? Verdict:" for c in ("one", "two", "three")]
    options = [" A", " B", " C"]

    def grouped():
        backend.option_probs_many(prompts, options)

    def separate():
        for p in prompts:
            backend.option_probs(p, options)

    fast, slow = _time(grouped, repeats), _time(separate, repeats)
    print("judge, 3 criteria sharing a ~250-token prefix:")
    print(f"  3 requests, each from a fresh state    : {slow:6.3f} s")
    print(f"  1 grouped request, prefix reused inside : {fast:6.3f} s  ratio {slow / fast:.2f}x")
    return {"separate_s": slow, "grouped_s": fast, "ratio": slow / fast}


@click.command()
@click.option("--base", default="models/base", show_default=True, type=click.Path(exists=True, path_type=Path))
@click.option("--repeats", default=3, show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="JSON file to write the figures to.")
def main(base: Path, repeats: int, out: Path) -> None:
    """Measure and print the speed-ups."""
    figures = {"response_only_head_vs_full_logits": bench_training(base, repeats),
               "judge_grouped_vs_separate": bench_judge(base, repeats)}
    write_figures(out, figures)


if __name__ == "__main__":
    main()
