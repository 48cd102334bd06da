"""Stage `embed`: sentence embeddings for every instruction in the splits and eval sets.

    python stages/embed.py --prepared DIR --out DIR   (paths: dvc.yaml)
Writes OUT/<set>.npz (ids, normalised vectors) for train, val, test and each eval set.
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import embeddings, runlog
from teachloop.config import load_section, read_params, run_stage
from teachloop.data import SPLITS, eval_paths, read_jsonl, split_path


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--prepared", required=True, type=click.Path(exists=True, path_type=Path), help="The prepare stage's output dir.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output dir: one <set>.npz per set.")
def main(params: str, prepared: Path, out: Path) -> None:
    """Embed instruction (+ input) text of every prepared record with the packaged MiniLM encoder."""
    cfg = load_section(read_params(params), "embed", embeddings.EmbedConfig)
    sets = {name: split_path(prepared, name) for name in SPLITS}
    sets.update(eval_paths(prepared))
    with runlog.timed("embed"):
        encoder = embeddings.load_encoder(cfg.model)
        for name, path in sets.items():
            rows = read_jsonl(path)
            vectors = embeddings.embed(encoder, [embeddings.text_of(r) for r in rows], cfg.batch_size)
            embeddings.save(out / f"{name}.npz", [r["id"] for r in rows], vectors)
            click.echo(f"{name}: {len(rows)} x {vectors.shape[1]}")


if __name__ == "__main__":
    run_stage(main)
