"""Stage `rubrics`: the teacher forms instruction categories with one rubric each; every instruction gets one.

    python stages/rubrics.py --prepared data/prepared --embeddings data/embeddings --out data/rubrics
Writes OUT/categories.json (name, rubric, member ids, raw teacher replies), OUT/assignments.jsonl
(id, set, category, score per category), OUT/summary.md and OUT/calls.json.
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from teachloop import embeddings, roles, rubrics
from teachloop.config import load_section, read_params
from teachloop.data import read_jsonl, write_json, write_jsonl


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--prepared", required=True, type=click.Path(exists=True, path_type=Path), help="data/prepared")
@click.option("--embeddings", "emb_dir", required=True, type=click.Path(exists=True, path_type=Path),
              help="data/embeddings")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output dir (data/rubrics).")
def main(params: str, prepared: Path, emb_dir: Path, out: Path) -> None:
    """Categorise the training instructions and write rubrics (mode in rubrics.mode), then assign the rest."""
    p = read_params(params)
    cfg = load_section(p, "rubrics", rubrics.RubricsConfig)
    teacher = roles.teacher(p)
    train = read_jsonl(prepared / "train.jsonl")
    ids, vectors = embeddings.load(emb_dir / "train.npz")
    index = dict(zip(ids, vectors))
    train_vecs = np.stack([index[r["id"]] for r in train])
    unsorted: list[str] = []
    if cfg.mode == "cluster":
        cats = rubrics.categories_by_cluster(train, train_vecs, cfg, teacher)
    else:
        cats, unsorted = rubrics.categories_by_llm(train, cfg, teacher)
    assignments, counts = [], {}
    for npz in sorted(emb_dir.glob("*.npz")):
        set_ids, vecs = embeddings.load(npz)
        choice, scores = rubrics.assign(vecs, cats, index)
        for i, rid in enumerate(set_ids):
            member = next((c for c, cat in enumerate(cats) if rid in cat["members"]), None)
            cat = member if member is not None else int(choice[i])
            if member is None:
                counts[cat] = counts.get(cat, 0) + 1
            assignments.append({"id": rid, "set": npz.stem, "category": cat, "member": member is not None,
                                "scores": [round(float(s), 4) for s in scores[i]]})
    by_id = {r["id"]: r for r in train}
    write_json(out / "categories.json", [{"id": i, **c} for i, c in enumerate(cats)])
    write_jsonl(out / "assignments.jsonl", assignments)
    (out / "summary.md").write_text(rubrics.summary_markdown(cats, by_id, counts), encoding="utf-8")
    write_json(out / "calls.json", {**teacher.stats.as_dict(), "unsorted_by_teacher": len(unsorted),
                                    "failed_categories": sum(not c["ok"] for c in cats)})
    click.echo(f"{len(cats)} categories; teacher {teacher.stats.as_dict()}; {len(unsorted)} assigned by embedding")


if __name__ == "__main__":
    main()
