"""Benchmark the judge stage against `python -m llama_cpp.server`: its wall time at judge.llm.max_concurrency 1 and 8.

    python benchmarks/bench_judge_server.py --gguf models/base/model.gguf --out reports/bench_judge_server.json
Starts the server on 127.0.0.1 (n_threads 2), then runs stages/judge.py on --items eval items (A: the reference
answer, B: its first sentence) once per level, each with a fresh call cache so every call reaches the server.
Prints the wall times and the speed-up and writes them to --out; asserts nothing. One llama.cpp server evaluates one
request at a time, so this measures what concurrency buys against a single local server (little), not an API.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import click
import yaml
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `stages` is imported as a package, as the tests do

from teachloop.data import read_jsonl, write_jsonl  # noqa: E402
from teachloop.llm.testserver import llama_cpp_server  # noqa: E402
from teachloop.machine import write_figures  # noqa: E402


def answer_dirs(tmp: Path, n_items: int) -> tuple[Path, Path]:
    """A = each item's reference answer, B = its first sentence: two answer dirs the judge stage reads."""
    rows = [r for f in sorted((ROOT / "data" / "seed" / "eval").glob("*.jsonl")) for r in read_jsonl(f)][:n_items]
    a, b = tmp / "a", tmp / "b"
    write_jsonl(a / "bench.jsonl", [{**r, "eval_set": "bench", "answer": r["output"]} for r in rows])
    write_jsonl(b / "bench.jsonl", [{**r, "eval_set": "bench", "answer": r["output"].split(". ")[0] + "."}
                                    for r in rows])
    return a, b


def judge_seconds(url: str, run: Path, a: Path, b: Path, concurrency: int, criteria: list[str]) -> tuple[float, dict]:
    """Wall seconds of one judge stage run at `concurrency` in the fresh dir `run`, and its counts file."""
    from stages import judge

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["judge"]["criteria"] = criteria
    params["judge"]["llm"].update(backend="openai", model="judge", base_url=url, api="completions", server="llamacpp",
                                  api_key_env="BENCH_LOCAL_KEY", timeout_s=600, max_concurrency=concurrency)
    run.mkdir()
    (run / "params.yaml").write_text(yaml.safe_dump(params))
    os.environ["TEACHLOOP_CACHE"] = str(run / "cache")
    os.environ["TEACHLOOP_RUNLOG"] = str(run / "runlog.jsonl")
    start = time.perf_counter()
    result = CliRunner().invoke(judge.main, ["--params", str(run / "params.yaml"), "--a-dir", str(a), "--b-dir", str(b),
                                             "--a-name", "reference", "--b-name", "first_sentence", "--out",
                                             str(run / "out"), "--counts", str(run / "counts.json")])
    seconds = time.perf_counter() - start
    if result.exit_code != 0:
        raise click.ClickException(f"judge stage failed at concurrency {concurrency}: {result.output}")
    return seconds, json.loads((run / "counts.json").read_text())


@click.command()
@click.option("--gguf", required=True, type=click.Path(exists=True, path_type=Path), help="The model the server serves.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="JSON file to write the figures to.")
@click.option("--items", default=8, show_default=True, help="Eval items judged (x2 orders x criteria calls each).")
@click.option("--criteria", default="articulate", show_default=True, help="Judge criteria, comma-separated.")
@click.option("--levels", default="1,8", show_default=True, help="judge.llm.max_concurrency levels, comma-separated.")
@click.option("--threads", default=2, show_default=True, help="Server CPU threads.")
def main(gguf: Path, out: Path, items: int, criteria: str, levels: str, threads: int) -> None:
    os.environ.setdefault("BENCH_LOCAL_KEY", "local")
    rows = []
    args = ["--model", str(gguf), "--n_ctx", "2048", "--n_threads", str(threads), "--seed", "1"]
    with llama_cpp_server(args) as url, tempfile.TemporaryDirectory() as tmp:
        a, b = answer_dirs(Path(tmp), items)
        for i, level in enumerate(int(x) for x in levels.split(",")):
            seconds, counts = judge_seconds(url, Path(tmp) / f"run{i}", a, b, level, criteria.split(","))
            rows.append({"max_concurrency": level, "wall_s": round(seconds, 1), "requests": counts["requests"],
                         "judgements": counts["judgements"]})
    serial = rows[0]["wall_s"]
    for r in rows:
        r["speedup"] = round(serial / r["wall_s"], 2)
        click.echo(f"judge at max_concurrency {r['max_concurrency']:>2}: {r['wall_s']:6.1f} s for {r['requests']} "
                   f"requests ({r['speedup']:.2f}x serial)")
    write_figures(out, {"server": "python -m llama_cpp.server", "gguf": gguf.name, "server_threads": threads,
                        "items": items, "criteria": criteria.split(","), "levels": rows})


if __name__ == "__main__":
    main()
