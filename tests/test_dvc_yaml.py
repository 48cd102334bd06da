"""dvc.yaml is the one place an output path is named: no stage script or library module spells one out."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def declared_outs() -> list[str]:
    """Every output path of every stage (outs, metrics, plots), `${...}` templates included."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    paths = []
    for spec in stages.values():
        spec = spec.get("do", spec)
        for kind in ("outs", "metrics", "plots"):
            for out in spec.get(kind, []):
                paths.append(next(iter(out)) if isinstance(out, dict) else out)
    return paths


def needles(path: str) -> list[str]:
    """What would betray the path in code: the path itself (templates as regex) and a file's own name."""
    pattern = re.escape(path)
    for tmpl in re.findall(r"\\\$\\\{[^}]*\\\}", pattern):
        pattern = pattern.replace(tmpl, r"[^/\s\"']+")
    out = [pattern]
    name = Path(path).name
    if "." in name and "$" not in name:  # a file name such as winrates.json; a dir name alone says too little
        out.append(r"\b" + re.escape(name) + r"\b")
    return out


def test_no_output_path_is_named_outside_dvc_yaml():
    sources = sorted(p for d in ("stages", "teachloop") for p in (ROOT / d).rglob("*.py"))
    assert sources
    found = []
    for out in declared_outs():
        for needle in needles(out):
            for src in sources:
                for n, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1):
                    if re.search(needle, line):
                        found.append(f"{src.relative_to(ROOT)}:{n}: {out}: {line.strip()}")
    assert not found, "output paths named in code (pass them from dvc.yaml instead):\n" + "\n".join(found)


def test_every_stage_lists_dotted_params_or_whole_sections_it_reads_fully():
    """LLM sections are never declared whole: their runtime keys (threads, timeouts) must not re-run stages."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, spec in stages.items():
        params = spec.get("do", spec).get("params", [])
        whole = [p for p in params if isinstance(p, str) and p in ("teacher", "student.llm", "judge.llm", "judge")]
        assert not whole, f"{name} declares whole LLM sections {whole}; list the dotted keys that change replies"
