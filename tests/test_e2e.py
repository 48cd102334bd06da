"""End-to-end smoke run of the whole DVC pipeline on a tiny profile, with the real packaged model as student,
teacher and judge: every stage runs, a second `dvc repro` does nothing, a second project from empty caches ends
with the same dvc.lock byte for byte, a judge-only change re-runs only judging and the report, and a runtime-only
change re-runs nothing that computes; under git, a `dvc exp run` shows in `teachloop compare` and in the README's
`dvc exp show` command within 200 columns."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

TINY = {  # dotted key -> value; everything small enough for minutes on 2 cores
    "sft.max_examples": 6, "sft.train.max_len": 96,
    "rubrics.k": 3, "rubrics.max_tokens": 96,
    "citing.rounds": {"1": {"prev": "models/sft"}, "2": {"prev": "models/citing/1"}},
    "citing.round.sample_size": 3, "citing.round.revise_max_tokens": 24, "citing.train.max_len": 128,
    "student.decode.max_tokens": 20,
    "candidates.sample_size": 2, "candidates.n": 2, "candidates.max_tokens": 16, "candidates.max_resamples": 1,
    "contextual.max_tokens": 24, "tuna.mix_reference": 1, "method_train.max_len": 96,
    "reward.train.max_len": 96,
    "rlhf.prompts": 1, "rlhf.samples": 2, "rlhf.iterations": 1, "rlhf.max_new_tokens": 8,
    "rlhf.train.max_len": 96, "rlhf.train.batch_size": 2,
    "answer.max_per_set": 1, "reference.max_per_set": 1,
    "evaluate.models": {"base": {"adapter": "models/base/hf", "mode": "plain"},
                        "sft": {"adapter": "models/sft", "mode": "plain"},
                        "citing_r2": {"adapter": "models/citing/2", "mode": "citing"},
                        "dpo": {"adapter": "models/dpo", "mode": "plain"},
                        "rlhf": {"adapter": "models/rlhf", "mode": "plain"}},
    "evaluate.comparisons": {"citing_r2_vs_sft": {"a": "citing_r2", "b": "sft"},
                             "citing_r2_vs_dpo": {"a": "citing_r2", "b": "dpo"}},
    "report.n_boot": 50,
}


# The README's `dvc exp show` command: `dvc exp show --drop '.*' --keep "$EXP_SHOW_KEEP"`.
EXP_SHOW_KEEP = r"Experiment|answer\.citing_revisions|citing_r.*\.win_vs_sft|sft\.ref_loglik$"


def set_dotted(doc: dict, key: str, value) -> None:
    *path, last = key.split(".")
    for part in path:
        doc = doc[part]
    doc[last] = value


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def make_project(root: Path, base_dir: Path, params: dict) -> tuple[Path, dict]:
    """A fresh project dir (sources, seed data, params, the base model) with an empty DVC cache and call cache."""
    proj = root / "proj"
    proj.mkdir(parents=True)
    for name in ("stages", "teachloop", "dvc.yaml", "params.defaults.yaml"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, proj / name)
    shutil.copytree(ROOT / "data" / "seed", proj / "data" / "seed")
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The 80-second GGUF -> HF conversion is tested by the session fixture; reuse its output and record it.
    shutil.copytree(base_dir, proj / "models" / "base", copy_function=os.link)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "TEACHLOOP_CACHE": str(root / "llm-cache"), "TEACHLOOP_RUNLOG": str(root / "runlog.jsonl"),
           "HF_HUB_OFFLINE": "1"}
    return proj, env


def leaves(tree) -> list:
    """The numbers of a nested metrics dict (the headline nests per model; the reward model's file is flat)."""
    return [v for x in tree.values() for v in leaves(x)] if isinstance(tree, dict) else [tree]


def repro(proj: Path, env: dict) -> None:
    dvc = [str(Path(sys.executable).parent / "dvc")]
    run(dvc + ["init", "--no-scm", "-q"], proj, env)
    run(dvc + ["config", "core.analytics", "false"], proj, env)
    run(dvc + ["commit", "-f", "base"], proj, env)
    run(dvc + ["repro"], proj, env)


def test_tiny_pipeline_end_to_end_twice_gives_the_same_bytes(tmp_path, base_dir):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in TINY.items():
        set_dotted(params, key, value)
    proj, env = make_project(tmp_path / "first", base_dir, params)
    repro(proj, env)
    dvc = [str(Path(sys.executable).parent / "dvc")]

    for path in ("data/rubrics/categories.json", "data/rounds/2/revisions.jsonl", "models/citing/2/adapter.gguf",
                 "models/citing/2/adapter_model.safetensors", "models/tuna/adapter.gguf", "models/raft/adapter.gguf",
                 "models/rrhf/adapter.gguf", "models/tuna_c/adapter.gguf", "data/judgements/citing_r2_vs_dpo/verdicts.jsonl",
                 "reports/report.md", "reports/leaderboard.csv", "reports/details/settings.md", "plots/forest.png",
                 "plots/citing_rounds.png", "plots/loss.png",
                 "metrics/counts/citing_revise_2.json", "data/loglik/base.jsonl", "models/reward/reward_head.safetensors",
                 "models/rlhf/adapter.gguf", "data/answers/rlhf/test.jsonl", "data/loglik/rlhf.jsonl"):
        assert (proj / path).exists() and (proj / path).stat().st_size > 0, path
    metrics = json.loads((proj / "reports" / "winrates.json").read_text())
    assert set(metrics) >= {"citing_r2_vs_sft", "citing_r2_vs_dpo"}
    headline = json.loads((proj / "metrics" / "headline.json").read_text())  # the one DVC metric: per model
    assert set(headline) == {"base", "sft", "citing_r2", "dpo", "rlhf"} and "ref_loglik" in headline["base"]
    assert set(json.loads((proj / "metrics" / "reward.json").read_text())) == {"heldout_accuracy", "heldout_pairs"}
    assert json.loads((proj / "models" / "rlhf" / "train_summary.json").read_text())["steps"] == 2
    shown = json.loads(run(dvc + ["metrics", "show", "--json"], proj, env))
    numbers = [v for rev in shown.values() for f in rev["data"].values() for v in leaves(f["data"])]
    assert 0 < len(numbers) <= 3 * len(headline) + 2  # + the reward model's two; <= 40 with the default's 12 models
    lines = (proj / "reports" / "report.md").read_text().splitlines()
    first_table = next(i for i, line in enumerate(lines) if line.startswith("|"))
    assert first_table < 15 and len(lines) <= 150
    board = (proj / "reports" / "leaderboard.md").read_text().splitlines()[2:]
    assert len(board) == 5 and all(line in lines for line in board)  # the report's first table is the leaderboard
    findings = json.loads((proj / "reports" / "findings.json").read_text())
    assert {"citing_r2_vs_sft", "dpo_vs_base", "dpo_vs_sft", "rlhf_vs_sft"} <= set(findings["pairs"])
    assert "llm_judge_audit" in findings["pairs"]["citing_r2_vs_sft"]
    revisions = [json.loads(line) for line in (proj / "data/rounds/1/revisions.jsonl").read_text().splitlines()]
    assert len(revisions) == 3 and all({"id", "category", "rubric_id", "answer", "raw"} <= set(r) for r in revisions)
    stages_timed = {row["stage"] for row in map(json.loads, (tmp_path / "first" / "runlog.jsonl").read_text().splitlines())}
    assert {"rubrics", "citing_revise@2", "judge@citing_r2_vs_dpo"} <= stages_timed  # timings live outside DVC

    status = run(dvc + ["status"], proj, env)
    assert "up to date" in status, status

    # The same params from an empty DVC cache and an empty call cache: every output hash is the same.
    second, env2 = make_project(tmp_path / "second", base_dir, params)
    repro(second, env2)
    assert (second / "dvc.lock").read_text() == (proj / "dvc.lock").read_text()

    params["judge"]["tie_margin"] = 0.2
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dry = run(dvc + ["repro", "--dry"], proj, env)
    ran = {line.split("'")[1] for line in dry.splitlines() if line.startswith("Running stage")}
    judges = {"judge@citing_r2_vs_sft", "judge@citing_r2_vs_dpo"}
    assert judges <= ran <= judges | {"report"}, dry  # no training, no teacher stage

    # A runtime-only key (llama.cpp threads) changes no output: nothing but the report (which reprints params).
    params["judge"]["tie_margin"] = 0.05
    params["teacher"]["n_threads"] = 1
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dry = run(dvc + ["repro", "--dry"], proj, env)
    ran = {line.split("'")[1] for line in dry.splitlines() if line.startswith("Running stage")}
    assert ran <= {"report"}, dry

    # Experiments: the same project under git, one real `dvc exp run` of a cheap change (CITING answers without
    # the inference-time revision: the CITING answer, its judges and the report re-run), then `teachloop compare`
    # and the README's `dvc exp show` command in a 200-column terminal.
    params["teacher"]["n_threads"] = 2
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(dvc + ["config", "--unset", "core.no_scm"], proj, env)
    (proj / ".gitignore").write_text("/models/\n/data/*\n!/data/seed/\n/.dvc/cache/\n/.dvc/tmp/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "smoke run"]):
        run(git + cmd, proj, env)
    run(dvc + ["exp", "run", "-q", "-n", "no-revision", "-S", "answer.citing_revisions=0"], proj, env)
    out = run([sys.executable, "-c", "from teachloop.cli import main; main()", "compare"], proj, env)
    assert "workspace:" in out and "no-revision (" in out, out
    assert "answer.citing_revisions" in out.split("params that differ:")[1], out
    first = out.split("\n\n")[0].splitlines()
    assert [line.split()[1] for line in first[2:]] == [r["model"] for r in csv.DictReader(
        (proj / "reports" / "leaderboard.csv").read_text().splitlines())]  # sorted as the leaderboard
    table = run(dvc + ["exp", "show", "--no-pager", "--drop", ".*", "--keep", EXP_SHOW_KEEP], proj,
                {**env, "COLUMNS": "200"})
    assert "citing_r2.win_vs_sft" in table and "answer.citing_revisions" in table and "…" not in table, table
    assert max(len(line) for line in table.splitlines()) <= 200
