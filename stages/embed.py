"""Stage `embed`: sentence embeddings for every instruction in the splits and eval sets.

    python stages/embed.py --prepared data/prepared --out data/embeddings
Writes OUT/<set>.npz (ids, normalised vectors) for train, val, test and each eval set.
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import embeddings
from teachloop.config import load_section, read_params
from teachloop.data import read_jsonl


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--prepared", required=True, type=click.Path(exists=True, path_type=Path), help="data/prepared")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output dir (data/embeddings).")
def main(params: str, prepared: Path, out: Path) -> None:
    """Embed instruction (+ input) text of every prepared record with the packaged MiniLM encoder."""
    cfg = load_section(read_params(params), "embed", embeddings.EmbedConfig)
    encoder = embeddings.load_encoder(cfg.model)
    sets = {p.stem: p for p in sorted(prepared.glob("*.jsonl")) if p.stem != "rejected"}
    sets.update({p.stem: p for p in sorted((prepared / "eval").glob("*.jsonl"))})
    for name, path in sets.items():
        rows = read_jsonl(path)
        vectors = embeddings.embed(encoder, [embeddings.text_of(r) for r in rows], cfg.batch_size)
        embeddings.save(out / f"{name}.npz", [r["id"] for r in rows], vectors)
        click.echo(f"{name}: {len(rows)} x {vectors.shape[1]}")


if __name__ == "__main__":
    main()
