"""Stage `report`: win rates with bootstrap CIs, plots and the markdown report from every comparison's verdicts.

    python stages/report.py --judgements data/judgements --metrics-out metrics/winrates.json --plots-dir plots \
        --report-out reports/report.md --rubric-summary data/rubrics/summary.md \
        --logs-dir metrics/train --calls-dir data
Reads JUDGEMENTS/<A_vs_B>/verdicts.jsonl, every loss log LOGS_DIR/*.tsv and every *calls.json under CALLS_DIR
(so new rounds and methods appear without new options), and writes
METRICS_OUT, PLOTS_DIR/{citing_rounds,criteria,loss}.png and REPORT_OUT.
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import report
from teachloop.config import load_section, read_params
from teachloop.data import read_json


def named_paths(values: tuple[str, ...], option: str) -> dict[str, str]:
    """{name: path} from repeated NAME=PATH options."""
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"expected NAME=PATH, got {v!r}", param_hint=option)
        out[name] = path
    return out


def describe_llm(cfg: dict | None, base: str = "") -> str:
    """A one-line name for an llm params section (only names: secrets never live in params)."""
    if not cfg:
        return "unspecified"
    if cfg.get("backend") == "openai":
        return f"{cfg.get('model', '?')} via an OpenAI-compatible server"
    gguf = cfg.get("gguf", "")
    # The base stage assembles models/base/model.gguf from params base.gguf: name the real model behind it.
    text = f"{gguf} = {base}" if base and Path(gguf).parent == Path("models/base") else gguf
    return f"{text} (llama.cpp)" + (" + LoRA" if cfg.get("lora") else "")


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file (sections: report, judge).")
@click.option("--judgements", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dir with one <A_vs_B>/ subdir per comparison (data/judgements).")
@click.option("--metrics-out", required=True, type=click.Path(path_type=Path), help="metrics/winrates.json")
@click.option("--plots-dir", required=True, type=click.Path(path_type=Path), help="plots/")
@click.option("--report-out", required=True, type=click.Path(path_type=Path), help="reports/report.md")
@click.option("--logs", multiple=True, help="Training loss log NAME=PATH (TSV with step, loss); repeatable.")
@click.option("--rubric-summary", default=None, help="Markdown rubric summary (may be missing).")
@click.option("--calls", multiple=True, help="Call counts NAME=PATH to a stage's calls.json; repeatable.")
@click.option("--logs-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also plot every NAME.tsv loss log in this dir.")
@click.option("--calls-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also count every *calls.json under this dir (judge calls are listed per comparison).")
def main(params: str, judgements: Path, metrics_out: Path, plots_dir: Path, report_out: Path,
         logs: tuple[str, ...], rubric_summary: str | None, calls: tuple[str, ...], logs_dir: Path | None,
         calls_dir: Path | None) -> None:
    """Summarise every comparison under JUDGEMENTS and write metrics, plots and the report."""
    p = read_params(params)
    cfg = load_section(p, "report", report.ReportConfig)
    try:
        by_comparison = report.load_judgements(judgements)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from e
    call_paths = named_paths(calls, "--calls")
    if calls_dir:
        for path in sorted(calls_dir.rglob("*calls.json")):
            if judgements not in path.parents:
                call_paths[str(path.relative_to(calls_dir).with_suffix(""))] = str(path)
    log_paths = named_paths(logs, "--logs")
    if logs_dir and logs_dir.exists():
        log_paths.update({path.stem: str(path) for path in sorted(logs_dir.glob("*.tsv"))})
    call_rows = []
    for name, path in call_paths.items():
        if not Path(path).exists():
            raise click.BadParameter(f"{path} not found", param_hint="--calls")
        call_rows.append({"stage": name, **read_json(path)})
    for name in report.sort_comparisons(by_comparison):
        if (judgements / name / "calls.json").exists():
            call_rows.append({"stage": f"judge {name}", **read_json(judgements / name / "calls.json")})
    base = str(p.get("base", {}).get("gguf", ""))
    models = (cfg.judge_model or describe_llm(p.get("judge", {}).get("llm"), base),
              cfg.teacher_model or describe_llm(p.get("teacher"), base),
              cfg.student_model or describe_llm(p.get("student", {}).get("llm"), base))
    summaries = report.build_report(by_comparison, cfg, metrics_out, plots_dir, report_out,
                                    logs=log_paths, rubric_summary=rubric_summary, params=p,
                                    calls=call_rows, models=models)
    for name in report.sort_comparisons(summaries):
        s = summaries[name]
        click.echo(f"{name}: win {s['win_rate']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] "
                   f"tie {s['tie_rate']:.3f} position bias {s['position_bias_rate']:.3f}")
    click.echo(f"wrote {metrics_out}, {plots_dir}/, {report_out}")


if __name__ == "__main__":
    main()
