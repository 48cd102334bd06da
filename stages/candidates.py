"""Stage `candidates@SET`: N sampled answers per training instruction, near-duplicates resampled (Tuna's rule).

    python stages/candidates.py --prepared DIR --adapter ADAPTER_DIR --out JSONL --counts JSON   (paths: dvc.yaml)
The sampler is the student with ADAPTER (candidates.source: student) or the teacher (source: teacher); an
instruction's N first draws are one request (one cache entry), so `requests` in the counts is per instruction.
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import roles, runlog
from teachloop.config import load_section, read_params, run_stage
from teachloop.data import read_jsonl, split_path, write_jsonl
from teachloop.llm.client import counts_file
from teachloop.methods.candidates import CandidatesConfig, build_candidates, sample_records


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--prepared", required=True, type=click.Path(exists=True, path_type=Path), help="The prepare stage's output dir.")
@click.option("--adapter", required=True, type=click.Path(exists=True, path_type=Path),
              help="Student adapter that samples (ignored when candidates.source is teacher).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Candidates JSONL to write.")
@click.option("--counts", "counts_path", required=True, type=click.Path(path_type=Path),
              help="JSON of request and resample counts to write (a DVC out: no cache hits, no timings).")
def main(params: str, prepared: Path, adapter: Path, out: Path, counts_path: Path) -> None:
    """Sample candidates.n answers for candidates.sample_size training instructions."""
    p = read_params(params)
    cfg = load_section(p, "candidates", CandidatesConfig)
    llm = roles.student_llm(p, adapter) if cfg.source == "student" else roles.teacher(p)
    # The run log names the set (the adapter's dir) so `teachloop times` tells the two candidate stages apart.
    with runlog.timed(f"candidates@{adapter.name}") as log, counts_file(counts_path, llm) as written:
        records = sample_records(read_jsonl(split_path(prepared, "train")), cfg.sample_size, cfg.seed)
        items, counts = build_candidates(llm, records, cfg)
        write_jsonl(out, items)
        written.update(counts)
        log["llm"] = llm.stats.as_dict()
    click.echo(f"candidates: {counts}; llm {llm.stats.as_dict()}")


if __name__ == "__main__":
    run_stage(main)
