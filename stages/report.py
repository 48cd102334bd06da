"""Stage `report`: win rates with bootstrap CIs, plots and the markdown report from every comparison's verdicts.

    python stages/report.py --judgements DIR --counts-dir DIR --logs-dir DIR --rubric-summary MD \
        --metrics-out JSON --rounds-plot PNG --criteria-plot PNG --loss-plot PNG --report-out MD   (paths: dvc.yaml)
Reads JUDGEMENTS/<A_vs_B>/verdicts.jsonl, every stage's counts COUNTS_DIR/<stage>.json and every training log
under LOGS_DIR, so new rounds and methods appear without new options; dvc.yaml declares all three dirs as deps.
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import report
from teachloop.config import load_section, read_params, run_stage
from teachloop.data import read_json


def describe_llm(cfg: dict | None, base: str = "") -> str:
    """A one-line name for an llm params section (only names: secrets never live in params)."""
    if not cfg:
        return "unspecified"
    if cfg.get("backend") == "openai":
        return f"{cfg.get('model', '?')} via an OpenAI-compatible server"
    gguf = cfg.get("gguf", "")
    # The base stage assembles its GGUF from params base.gguf: name the real model behind a packaged default.
    text = f"{gguf} = {base}" if base.startswith("package:") else gguf
    return f"{text} (llama.cpp)" + (" + LoRA" if cfg.get("lora") else "")


def read_counts(counts_dir: Path | None) -> list[dict]:
    """One row per stage counts file, named by its file name (dvc.yaml names each file)."""
    if not counts_dir or not counts_dir.exists():
        return []
    return [{"stage": path.stem, **read_json(path)} for path in sorted(counts_dir.glob("*.json"))]


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file (sections: report, judge).")
@click.option("--judgements", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dir with one <A_vs_B>/ subdir per comparison.")
@click.option("--counts-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Dir of per-stage counts JSON files (LLM requests, re-asks, failures, skips).")
@click.option("--logs-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Dir of training logs, one per training stage (dvclive dirs).")
@click.option("--rubric-summary", default=None, help="Markdown rubric summary (may be missing).")
@click.option("--metrics-out", required=True, type=click.Path(path_type=Path), help="Win-rate metrics JSON to write.")
@click.option("--rounds-plot", required=True, type=click.Path(path_type=Path), help="PNG: CITING vs SFT by round.")
@click.option("--criteria-plot", required=True, type=click.Path(path_type=Path), help="PNG: win rate per criterion.")
@click.option("--loss-plot", required=True, type=click.Path(path_type=Path), help="PNG: training loss curves.")
@click.option("--report-out", required=True, type=click.Path(path_type=Path), help="Markdown report to write.")
def main(params: str, judgements: Path, counts_dir: Path | None, logs_dir: Path | None, rubric_summary: str | None,
         metrics_out: Path, rounds_plot: Path, criteria_plot: Path, loss_plot: Path, report_out: Path) -> None:
    """Summarise every comparison under JUDGEMENTS and write metrics, plots and the report."""
    p = read_params(params)
    cfg = load_section(p, "report", report.ReportConfig)
    try:
        by_comparison = report.load_judgements(judgements)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from e
    base = str(p.get("base", {}).get("gguf", ""))
    models = (cfg.judge_model or describe_llm(p.get("judge", {}).get("llm"), base),
              cfg.teacher_model or describe_llm(p.get("teacher"), base),
              cfg.student_model or describe_llm(p.get("student", {}).get("llm"), base))
    plots = {"rounds": rounds_plot, "criteria": criteria_plot, "loss": loss_plot}
    summaries = report.build_report(by_comparison, cfg, metrics_out, plots, report_out,
                                    logs=report.find_loss_logs(logs_dir), rubric_summary=rubric_summary, params=p,
                                    calls=read_counts(counts_dir), models=models)
    for name in report.sort_comparisons(summaries):
        s = summaries[name]
        click.echo(f"{name}: win {s['win_rate']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] "
                   f"tie {s['tie_rate']:.3f} position bias {s['position_bias_rate']:.3f}")
    click.echo(f"wrote {metrics_out}, {', '.join(map(str, plots.values()))}, {report_out}")


if __name__ == "__main__":
    run_stage(main)
