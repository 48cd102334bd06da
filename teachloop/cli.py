"""`teachloop` command line: bring CITING rounds up to date, declare more rounds, and answer with a rubric.

    teachloop round 3            # dvc repro of round 3's last stage (rounds 1-2 reused if current)
    teachloop set-rounds 5       # declare rounds 1..5 in params.yaml (comments kept)
    teachloop times              # wall seconds per stage run (from the run log, outside DVC)
    teachloop plan               # LLM requests, tokens and cost per stage of the current params, before a run
    teachloop answer -i "Explain tides." --adapter ADAPTER_DIR --revisions 2   # e.g. the last round's adapter
    teachloop compare            # leaderboard of the workspace and each dvc experiment, params that differ
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click

from .config import ConfigError, read_params


def declared_rounds(params: dict) -> list[int]:
    return sorted(int(k) for k in params.get("citing", {}).get("rounds", {}))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Teacher-in-the-loop tuning of a small student LLM (CITING, Tuna, RRHF, RAFT, DPO) on DVC."""


@main.command("round")
@click.argument("n", type=int)
@click.option("--params", default="params.yaml", show_default=True)
def round_(n: int, params: str) -> None:
    """Bring CITING rounds 1..N up to date with `dvc repro` and say where their artifacts are."""
    rounds = declared_rounds(read_params(params))
    if n < 1:
        raise click.UsageError("N must be >= 1")
    if n not in rounds:
        raise click.ClickException(
            f"params.yaml declares CITING rounds {rounds}, not round {n}. Declare rounds 1..{n} with "
            f"`make rounds R={n}` (or `teachloop set-rounds {n}`), then run `make round N={n}` again."
        )
    code = subprocess.call(["dvc", "repro", f"citing_train@{n}"])
    if code:
        sys.exit(code)
    click.echo(f"\nCITING rounds 1..{n} are up to date:")
    lock = _load_yaml("dvc.lock").get("stages", {})
    for r in range(1, n + 1):
        outs = [o["path"] for stage in ("citing_answer", "citing_revise", "citing_train")
                for o in lock.get(f"{stage}@{r}", {}).get("outs", [])]
        click.echo(f"  round {r}: {', '.join(outs)}")


def _load_yaml(path: str) -> dict:
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _stage_out(stage: str, key: str = "", dvc_yaml: str = "dvc.yaml") -> str:
    """A stage's first declared output, read from dvc.yaml (the one place output paths are named)."""
    spec = _load_yaml(dvc_yaml)["stages"][stage]
    out = (spec.get("do", spec))["outs"][0]
    return str(next(iter(out)) if isinstance(out, dict) else out).replace("${key}", key)


@main.command("set-rounds")
@click.argument("r", type=int)
@click.option("--params", default="params.yaml", show_default=True)
def set_rounds(r: int, params: str) -> None:
    """Declare CITING rounds 1..R in params.yaml (round k continues round k-1's adapter; round 1 is kept)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    if r < 1:
        raise click.UsageError("R must be >= 1")
    yaml = YAML()  # round-trip mode: comments, quotes and flow style survive the edit
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    path = Path(params)
    dvc_yaml = str(path.parent / "dvc.yaml") if (path.parent / "dvc.yaml").exists() else "dvc.yaml"
    doc = yaml.load(path)
    rounds = doc["citing"]["rounds"]
    if "1" not in rounds:
        raise click.ClickException(f"{path}: citing.rounds has no round 1 to extend (it names the adapter "
                                   f"round 1 continues, e.g. the sft stage's)")
    for key in list(rounds):
        if int(key) > r:
            del rounds[key]
    for k in range(1, r + 1):
        if str(k) not in rounds:
            entry = CommentedMap(prev=_stage_out("citing_train", str(k - 1), dvc_yaml))
            entry.fa.set_flow_style()
            rounds[DoubleQuotedScalarString(str(k))] = entry
    yaml.dump(doc, path)
    click.echo(f"declared CITING rounds 1..{r} in {path}; add citing_r{r} to evaluate.models and evaluate.comparisons to judge it")


@main.command()
@click.option("--log", "log_path", default=None, help="Run log (default: .cache/runlog.jsonl or $TEACHLOOP_RUNLOG).")
@click.option("--since", default="", help="Only stage runs finished at or after this local time (YYYY-MM-DDTHH:MM:SS).")
def times(log_path: str | None, since: str) -> None:
    """Where the time went: wall seconds per stage run, from the run log (kept outside DVC outs)."""
    from . import runlog

    rows = [r for r in runlog.read(log_path) if r["finished"] >= since]
    if not rows:
        raise click.ClickException(f"no run log at {log_path or runlog.path()}: run some stages first")
    total = 0.0
    for row in rows:
        llm = row.get("llm", {})
        cached = f"  (LLM: {llm.get('calls', 0)} calls, {llm.get('hits', 0)} from cache)" if llm else ""
        click.echo(f"{row['finished']}  {row['stage']:<32} {row['seconds']:>8.1f} s{cached}")
        total += row["seconds"]
    click.echo(f"{'total':<53} {total:>8.1f} s over {len(rows)} stage runs")


@main.command()
@click.option("--params", default="params.yaml", show_default=True)
@click.option("--dvc-yaml", default="dvc.yaml", show_default=True, help="The pipeline whose stages are planned.")
@click.option("--prepared", default=None, type=click.Path(exists=True, file_okay=False),
              help="Read sizes from this prepared dir (default: prepare the data in memory from params).")
@click.option("--tokenizer", default=None,
              help="tokenizer.json to count tokens with (default: the base stage's HF twin's, if built; "
                   "'' or absent: tokens are estimated as chars/4).")
@click.option("--against", default=None, type=click.Path(exists=True, file_okay=False),
              help="A finished run's counts dir: show its first-attempt requests and fail on any mismatch.")
def plan(params, dvc_yaml, prepared, tokenizer, against) -> None:
    """Before a run: per LLM stage, the requests, server calls, prompt/completion tokens and cost (price_per_mtok)."""
    from . import plan as planning

    if tokenizer is None:
        import re

        hf = re.search(r"--hf\s+(\S+)", str(_load_yaml(dvc_yaml)["stages"]["base"]["cmd"]))
        tokenizer = str(Path(hf.group(1)) / "tokenizer.json") if hf else ""
    tokens = planning.Tokens.load(tokenizer)
    try:
        rows = planning.plan(read_params(params), dvc_yaml, prepared, tokens)
    except ConfigError as e:  # params that a run would fail on: said before it, without a traceback
        raise click.ClickException(str(e)) from e
    actual = None
    if against:
        actual = {}
        for r in rows:
            path = Path(against) / Path(r.counts).name
            actual[r.stage] = planning.first_attempts(json.loads(path.read_text())) if path.exists() else None
    click.echo(planning.table(rows, tokens.how, actual), nl=False)
    if actual is not None:
        wrong = [f"{r.stage}: planned {r.requests}, counted {actual[r.stage]}" for r in rows
                 if actual[r.stage] is not None and actual[r.stage] != r.requests]
        missing = [r.stage for r in rows if actual[r.stage] is None]
        if missing:
            click.echo(f"no counts file in {against} for: {', '.join(missing)}", err=True)
        if wrong:
            raise click.ClickException("the plan differs from the finished run: " + "; ".join(wrong))


def _read_instructions(instructions: tuple[str, ...], file: str | None) -> list[dict]:
    rows = [{"id": f"cli-{i}", "instruction": t, "input": ""} for i, t in enumerate(instructions)]
    if file:
        from .data import DataError, load_records

        try:
            if file.endswith((".json", ".jsonl")):
                # load_records reads bytes itself: a BOM, a bad encoding or a wrapper get its clear messages
                recs, rejected = load_records([file])
                if rejected:
                    click.echo(f"skipped {len(rejected)} bad rows of {file}: {rejected[:3]}", err=True)
                rows += recs
            else:
                text = Path(file).read_bytes().decode("utf-8-sig")
                rows += [{"id": f"line-{i}", "instruction": t.strip(), "input": ""}
                         for i, t in enumerate(text.splitlines(), 1) if t.strip()]
        except (DataError, UnicodeDecodeError) as e:
            raise click.UsageError(f"{file}: {e}") from e
    if not rows:
        raise click.UsageError("give at least one --instruction or a --file")
    return rows


@main.command()
@click.option("-i", "--instruction", "instructions", multiple=True, help="An instruction to answer (repeatable).")
@click.option("-f", "--file", type=click.Path(exists=True, dir_okay=False),
              help="Instructions: a .txt file (one per line), or Alpaca JSON / JSONL.")
@click.option("--adapter", required=True, type=click.Path(exists=True),
              help="Trained student adapter dir (PEFT dir with adapter.gguf).")
@click.option("--rubrics", default=None, type=click.Path(exists=True),
              help="Rubric clusters dir (default: the rubrics stage's output in dvc.yaml).")
@click.option("--embeddings", default=None, type=click.Path(exists=True),
              help="Embeddings dir with train.npz (default: the embed stage's output in dvc.yaml).")
@click.option("--revisions", default=1, show_default=True, type=int,
              help="Rubric-guided self-revisions after the first draft (0 = draft only).")
@click.option("--params", default="params.yaml", show_default=True, help="Params (student.llm, student.decode, embed).")
def answer(instructions, file, adapter, rubrics, embeddings, revisions, params) -> None:
    """Answer instructions as CITING's student does: retrieve a rubric by embedding, draft, then revise.

    Prints one JSON object per instruction with the category, rubric, drafts and final answer.
    """
    from . import embeddings as emb
    from . import roles
    from .config import load_section
    from .data import read_json
    from .methods.citing import answer_with_rubric
    from .rubrics import assign

    p = read_params(params)
    rubrics = rubrics or _stage_out("rubrics")
    embeddings = embeddings or _stage_out("embed")
    rows = _read_instructions(instructions, file)
    cats = read_json(Path(rubrics) / "categories.json")
    ids, vecs = emb.load(Path(embeddings) / "train.npz")
    encoder = emb.load_encoder(load_section(p, "embed", emb.EmbedConfig).model)
    choice, _ = assign(emb.embed(encoder, [emb.text_of(r) for r in rows]), cats, dict(zip(ids, vecs)))
    student, decode = roles.student_llm(p, adapter), roles.decode(p)
    for row, c in zip(rows, choice):
        cat = cats[int(c)]
        got = answer_with_rubric(student, row, cat["rubric"], decode, revisions)
        click.echo(json.dumps({"instruction": row["instruction"], "category": cat["name"], "rubric": cat["rubric"],
                               **got}, ensure_ascii=False))


@main.command()
@click.option("--json-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Read this `dvc exp show --json` output instead of running it.")
def compare(json_file: str | None) -> None:
    """Leaderboard of the workspace, its commit and every `dvc exp` experiment, with the params that differ."""
    from . import compare as comparing

    if json_file:
        doc = json.loads(Path(json_file).read_text(encoding="utf-8"))
    else:
        proc = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
        if proc.returncode:
            raise click.ClickException(f"dvc exp show --json failed: {proc.stderr.strip()[-2000:]}")
        doc = json.loads(proc.stdout)
    click.echo(comparing.text(comparing.runs(doc)), nl=False)
