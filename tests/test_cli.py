"""`teachloop round` refuses undeclared rounds with a how-to; `set-rounds` edits params.yaml keeping comments."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from click.testing import CliRunner

from teachloop.cli import main

PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"


def test_round_beyond_the_declared_ones_says_how_to_extend(tmp_path):
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    result = CliRunner().invoke(main, ["round", "9", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 1
    assert "not round 9" in result.output and "make rounds R=9" in result.output


def test_set_rounds_adds_and_removes_rounds_and_keeps_the_rest(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(PARAMS, path)
    before = PARAMS.read_text()
    assert CliRunner().invoke(main, ["set-rounds", "5", "--params", str(path)]).exit_code == 0
    rounds = yaml.safe_load(path.read_text())["citing"]["rounds"]
    assert rounds["4"] == {"prev": "models/citing/3"} and rounds["5"] == {"prev": "models/citing/4"}
    assert CliRunner().invoke(main, ["set-rounds", "3", "--params", str(path)]).exit_code == 0
    assert path.read_text() == before  # comments, quoting and layout survive a round trip
