"""Stage `report`: reference-grounded findings, LLM-judge win rates with bootstrap CIs, plots and the report.

    python stages/report.py --prepared DIR --answers DIR --loglik DIR --judgements DIR --counts-dir DIR \
        --logs-dir DIR --rubric-summary MD --headline-out JSON --findings-out JSON --metrics-out JSON \
        --reference-plot PNG --rounds-plot PNG --criteria-plot PNG --loss-plot PNG --report-out MD   (paths: dvc.yaml)
Reads every model's answers ANSWERS/<model>/<eval_set>.jsonl and reference log-likelihoods LOGLIK/<model>.jsonl,
JUDGEMENTS/<A_vs_B>/verdicts.jsonl, every stage's counts COUNTS_DIR/<stage>.json and every training log under
LOGS_DIR, so new rounds and methods appear without new options; dvc.yaml declares each dir as a dep.
The headline JSON (a DVC metric: <= 9 numbers per model) is what `dvc exp show` lists; the findings JSON holds
every table of the report, and the metrics JSON the LLM judge's full win-rate tables.
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import findings, report
from teachloop.config import ConfigError, load_section, read_params, run_stage
from teachloop.data import eval_records, read_json, read_jsonl, write_json
from teachloop.reference import reference_index


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


def read_answers(answers_dir: Path) -> dict[str, list[dict]]:
    """{model: its answer rows over every eval set} from ANSWERS/<model>/<eval_set>.jsonl."""
    return {d.name: [row for f in sorted(d.glob("*.jsonl")) for row in read_jsonl(f)]
            for d in sorted(answers_dir.iterdir()) if d.is_dir()}


def read_loglik(loglik_dir: Path) -> dict[str, dict]:
    """{model: {(eval_set, id): mean token log-likelihood of the reference}} from LOGLIK/<model>.jsonl."""
    return {f.stem: {(r["eval_set"], r["id"]): r["loglik"] for r in read_jsonl(f)}
            for f in sorted(loglik_dir.glob("*.jsonl"))}


@click.command()
@click.option("--params", default="params.yaml", show_default=True,
              help="Params file (sections: report, judge, embed, evaluate; all are reprinted).")
@click.option("--prepared", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The prepare stage's output dir (reference answers).")
@click.option("--answers", "answers_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dir with one <model>/ subdir of answers per model.")
@click.option("--loglik", "loglik_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dir with one <model>.jsonl of reference log-likelihoods per model.")
@click.option("--headline-out", required=True, type=click.Path(path_type=Path),
              help="Headline metrics JSON to write (per model, for dvc exp show).")
@click.option("--findings-out", required=True, type=click.Path(path_type=Path),
              help="JSON of every reference-grounded table and the judge audit.")
@click.option("--reference-plot", required=True, type=click.Path(path_type=Path),
              help="PNG: reference measures per model.")
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
def main(params: str, prepared: Path, answers_dir: Path, loglik_dir: Path, headline_out: Path, findings_out: Path,
         reference_plot: Path, judgements: Path, counts_dir: Path | None, logs_dir: Path | None,
         rubric_summary: str | None, metrics_out: Path, rounds_plot: Path, criteria_plot: Path, loss_plot: Path,
         report_out: Path) -> None:
    """Measure every model against the references, summarise every comparison, write metrics, plots, report."""
    from teachloop.embeddings import PACKAGED, load_encoder  # torch-heavy: only when the stage runs

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
    answers, loglik = read_answers(answers_dir), read_loglik(loglik_dir)
    order = list(p.get("evaluate", {}).get("models", {}))  # tables list models as params do: base, SFT, rounds...
    rank = lambda m: (order.index(m) if m in order else len(order), m)  # noqa: E731
    answers, loglik = ({m: d[m] for m in sorted(d, key=rank)} for d in (answers, loglik))
    for name in cfg.versus + [cfg.headline_opponent]:
        if name not in answers:
            raise ConfigError(f"report.versus / headline_opponent: no answers for model {name!r}; "
                              f"evaluate.models has {sorted(answers)}")
    found = findings.compute(
        answers, reference_index(eval_records(prepared)), loglik, by_comparison,
        p.get("evaluate", {}).get("comparisons", {}), cfg.versus, load_encoder(p.get("embed", {}).get("model") or PACKAGED),
        cfg.n_boot, cfg.seed, cfg.ci, cfg.rouge_margin, cfg.cosine_margin, 0,  # reference judge: every answered item
        names=report.model_name, set_names=lambda e: report.SET_NAMES.get(e, e))
    write_json(findings_out, report.json_safe(found))
    write_json(headline_out, report.json_safe(findings.headline(found, cfg.headline_opponent)))
    plots = {"reference": reference_plot, "rounds": rounds_plot, "criteria": criteria_plot, "loss": loss_plot}
    summaries = report.build_report(by_comparison, cfg, metrics_out, plots, report_out,
                                    logs=report.find_loss_logs(logs_dir), rubric_summary=rubric_summary, params=p,
                                    calls=read_counts(counts_dir), models=models, found=found)
    for s in found["separated"]:
        click.echo(f"separated: {s['text']}")
    for name in report.sort_comparisons(summaries):
        s = summaries[name]
        click.echo(f"{name}: win {s['win_rate']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] "
                   f"tie {s['tie_rate']:.3f} position bias {s['position_bias_rate']:.3f}")
    click.echo(f"wrote {metrics_out}, {', '.join(map(str, plots.values()))}, {report_out}")


if __name__ == "__main__":
    run_stage(main)
