"""Benchmark `LLM.map`'s bounded concurrency: calls/s at 1, 4 and 16 requests in flight against a local
OpenAI-compatible server (`teachloop.llm.testserver`) that takes `--latency` seconds per request, as an API does.

    python benchmarks/bench_concurrency.py --out reports/bench_concurrency.json [--latency 0.5]
Prints calls/s and the speed-up over serial at each level and writes them to --out; asserts nothing (the issue's
target, >= 12x at 16, is for people to read). Every run uses a fresh cache, so every call reaches the server.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import click

from teachloop.llm import LLM, CallCache, LLMConfig, Request
from teachloop.llm.openai_backend import OpenAIBackend
from teachloop.llm.testserver import LocalServer
from teachloop.machine import write_figures


def calls_per_second(base_url: str, concurrency: int, n_calls: int) -> float:
    cfg = LLMConfig(backend="openai", model="bench", base_url=base_url, max_concurrency=concurrency)
    with tempfile.TemporaryDirectory() as cache:
        llm = LLM(OpenAIBackend(cfg), CallCache(cache), max_concurrency=concurrency)
        start = time.perf_counter()
        llm.map(lambda i: llm.complete(Request(f"prompt {concurrency} {i}", max_tokens=8)), list(range(n_calls)))
        return n_calls / (time.perf_counter() - start)


@click.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="JSON file to write the figures to.")
@click.option("--latency", default=0.5, show_default=True, help="Server seconds per request.")
@click.option("--levels", default="1,4,16", show_default=True, help="Concurrency levels, comma-separated.")
def main(out: Path, latency: float, levels: str) -> None:
    os.environ.setdefault("OPENAI_API_KEY", "local")
    rows = []
    with LocalServer(latency_s=latency) as srv:
        for level in [int(x) for x in levels.split(",")]:
            rate = calls_per_second(srv.base_url, level, n_calls=max(8, 4 * level))
            rows.append({"concurrency": level, "calls_per_s": round(rate, 2)})
        peak = srv.max_in_flight
    serial = rows[0]["calls_per_s"]
    for r in rows:
        r["speedup"] = round(r["calls_per_s"] / serial, 2)
        click.echo(f"concurrency {r['concurrency']:>3}: {r['calls_per_s']:7.2f} calls/s  ({r['speedup']:.1f}x serial)")
    write_figures(out, {"latency_s": latency, "levels": rows, "server_max_in_flight": peak})


if __name__ == "__main__":
    main()
