"""Stage `rubrics`: the teacher forms instruction categories with one rubric each; every instruction gets one.

    python stages/rubrics.py --prepared DIR --embeddings DIR --out DIR --counts JSON   (paths: dvc.yaml)
Writes OUT/categories.json (name, rubric, member ids, raw teacher replies), OUT/assignments.jsonl
(id, set, category, score per category), OUT/summary.md, and the teacher's counts to --counts.
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from teachloop import embeddings, roles, rubrics, runlog
from teachloop.config import load_section, read_params, run_stage
from teachloop.data import read_jsonl, split_path, write_json, write_jsonl
from teachloop.llm.client import counts_file


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--prepared", required=True, type=click.Path(exists=True, path_type=Path), help="The prepare stage's output dir.")
@click.option("--embeddings", "emb_dir", required=True, type=click.Path(exists=True, path_type=Path),
              help="The embed stage's output dir.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output dir.")
@click.option("--counts", "counts_path", required=True, type=click.Path(path_type=Path),
              help="Counts JSON to write (requests, re-asks, failures).")
def main(params: str, prepared: Path, emb_dir: Path, out: Path, counts_path: Path) -> None:
    """Categorise the training instructions and write rubrics (mode in rubrics.mode), then assign the rest."""
    p = read_params(params)
    cfg = load_section(p, "rubrics", rubrics.RubricsConfig)
    teacher = roles.teacher(p)
    train = read_jsonl(split_path(prepared, "train"))
    ids, vectors = embeddings.load(emb_dir / "train.npz")
    index = dict(zip(ids, vectors))
    train_vecs = np.stack([index[r["id"]] for r in train])
    unsorted: list[str] = []
    with runlog.timed("rubrics") as extra, counts_file(counts_path, teacher) as stage_counts:
        if cfg.mode == "cluster":
            cats = rubrics.categories_by_cluster(train, train_vecs, cfg, teacher)
        else:
            cats, unsorted = rubrics.categories_by_llm(train, cfg, teacher)
        extra["llm"] = teacher.stats.as_dict()
        stage_counts.update(unsorted_by_teacher=len(unsorted), failed_categories=sum(not c["ok"] for c in cats))
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
    click.echo(f"{len(cats)} categories; teacher {teacher.stats.as_dict()}; {len(unsorted)} assigned by embedding")


if __name__ == "__main__":
    run_stage(main)
