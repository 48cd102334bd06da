"""`teachloop compare` on `dvc exp show --json` output in DVC's layout (the real run is in tests/test_e2e.py)."""
from __future__ import annotations

import json

from click.testing import CliRunner

from teachloop import compare
from teachloop.cli import main


def revision(rev: str, name: str | None, tie_margin: float, loglik: dict[str, float], exps=None) -> dict:
    params = {"report": {"primary": "ref_loglik", "headline_opponent": "sft"}, "judge": {"tie_margin": tie_margin},
              "evaluate": {"models": {m: {"adapter": f"models/{m}"} for m in loglik}}}
    metrics = {m: {"ref_loglik": v, **({"ref_loglik_vs_sft": v - loglik["sft"]} if m != "sft" else {})}
               for m, v in loglik.items()}
    return {"rev": rev, "name": name, "error": None, "experiments": exps,
            "data": {"rev": rev, "params": {"params.yaml": {"data": params}},
                     "metrics": {"metrics/headline.json": {"data": metrics}}}}


def doc() -> list[dict]:
    exp = revision("b2d0cd0aaaa", "wide-margin", 0.2, {"base": -2.4, "sft": -2.0, "citing_r1": -1.9})
    return [revision("workspace", None, 0.05, {"base": -2.4, "sft": -2.0, "citing_r1": -2.2}),
            revision("0123456789", "main", 0.05, {"base": -2.4, "sft": -2.0, "citing_r1": -2.2},
                     exps=[{"revs": [exp], "name": "wide-margin", "executor": None}])]


def test_runs_and_text_sort_each_run_and_show_the_params_that_differ(tmp_path):
    runs = compare.runs(doc())
    assert list(runs) == ["workspace", "main", "wide-margin (b2d0cd0)"]
    params, board = runs["wide-margin (b2d0cd0)"]
    assert params["judge.tie_margin"] == 0.2 and board["citing_r1"]["ref_loglik_vs_sft"] == -1.9 - -2.0
    out = compare.text(runs)
    blocks = out.split("\n\n")
    assert [line.split()[1] for line in blocks[0].splitlines()[2:]] == ["sft", "citing_r1", "base"]
    assert [line.split()[1] for line in blocks[2].splitlines()[2:]] == ["citing_r1", "sft", "base"]
    assert "params that differ:" in out and "judge.tie_margin  0.05" in out and "report.primary" not in out
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(doc()))
    result = CliRunner().invoke(main, ["compare", "--json-file", str(path)])
    assert result.exit_code == 0 and result.output == out


def test_a_run_without_metrics_says_so():
    only = revision("workspace", None, 0.05, {"sft": -2.0})
    only["data"]["metrics"] = {}
    assert "(no headline metrics yet)" in compare.text(compare.runs([only]))
