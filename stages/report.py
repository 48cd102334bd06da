"""Stage `report`: the leaderboard, its verdict, plots and detail pages, from every model's measures and verdicts.

    python stages/report.py --prepared DIR --answers DIR --loglik DIR --judgements DIR --rubrics DIR \
        --counts-dir DIR --logs-dir DIR --defaults YAML --headline-out JSON --findings-out JSON --metrics-out JSON \
        --leaderboard-csv CSV --leaderboard-md MD --forest-plot PNG --rounds-plot PNG --loss-plot PNG \
        --details-dir DIR --report-out MD   (paths: dvc.yaml)
Reads every model's answers ANSWERS/<model>/<eval_set>.jsonl and reference log-likelihoods LOGLIK/<model>.jsonl,
JUDGEMENTS/<A_vs_B>/verdicts.jsonl, every stage's counts COUNTS_DIR/<stage>.json and every training log under
LOGS_DIR, so new rounds and methods appear without new options; dvc.yaml declares each dir as a dep.
The headline JSON (a DVC metric: <= 3 numbers per model) is what `dvc metrics show` and `dvc exp show` list; the
findings JSON holds every reference-grounded number the leaderboard and detail pages print, and the win-rate JSON
the LLM judge's tables. The settings page compares params with DEFAULTS, a declared dependency (not git's HEAD).
"""
from __future__ import annotations

from pathlib import Path

import click

from teachloop import findings, plots, report
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


def loss_types(params: dict, logs: dict[str, str]) -> dict[str, str]:
    """{training log name: its loss}: a ranked-data method's `methods.<name>.loss`; SFT and CITING's rounds
    train with the SFT loss (CITING on its revisions); any other stage (the reward model, rlhf) has a loss of its
    own, so a panel of its own."""
    methods = params.get("methods", {})

    def loss(name: str) -> str:
        if name in methods:
            return methods[name]["loss"]
        return "sft" if name == "sft" or name.startswith("citing_") else name

    return {name: loss(name) for name in logs}


Dir = click.Path(exists=True, file_okay=False, path_type=Path)
Out = click.Path(path_type=Path)


@click.command()
@click.option("--params", default="params.yaml", show_default=True,
              help="Params file (sections: report, judge, embed, evaluate, citing, methods).")
@click.option("--defaults", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The committed default params, which the settings page compares --params with.")
@click.option("--prepared", required=True, type=Dir, help="The prepare stage's output dir (reference answers).")
@click.option("--answers", "answers_dir", required=True, type=Dir, help="Dir with one <model>/ subdir of answers.")
@click.option("--loglik", "loglik_dir", required=True, type=Dir, help="Dir with one <model>.jsonl of log-likelihoods.")
@click.option("--judgements", required=True, type=Dir, help="Dir with one <A_vs_B>/ subdir per comparison.")
@click.option("--rubrics", "rubric_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The rubrics stage's output dir (categories.json; may be missing).")
@click.option("--counts-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Dir of per-stage counts JSON files (LLM requests, re-asks, failures, skips).")
@click.option("--logs-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Dir of training logs, one per training stage (dvclive dirs).")
@click.option("--reward-metrics", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The reward stage's metrics JSON (held-out pairwise accuracy), reported under the verdict.")
@click.option("--headline-out", required=True, type=Out, help="Headline metrics JSON (per model, for DVC).")
@click.option("--findings-out", required=True, type=Out, help="JSON of every reference-grounded number.")
@click.option("--metrics-out", required=True, type=Out, help="The LLM judge's win-rate JSON.")
@click.option("--leaderboard-csv", required=True, type=Out, help="The leaderboard as CSV.")
@click.option("--leaderboard-md", required=True, type=Out, help="The leaderboard as a markdown table.")
@click.option("--forest-plot", required=True, type=Out, help="PNG: paired differences from the baseline.")
@click.option("--rounds-plot", required=True, type=Out, help="PNG: CITING's rounds on the primary measure.")
@click.option("--loss-plot", required=True, type=Out, help="PNG: training losses, one panel per loss type.")
@click.option("--details-dir", required=True, type=Out, help="Dir of the detail pages the report links.")
@click.option("--report-out", required=True, type=Out, help="Markdown report to write.")
def main(params: str, defaults: Path | None, prepared: Path, answers_dir: Path, loglik_dir: Path, judgements: Path,
         rubric_dir: Path | None, counts_dir: Path | None, logs_dir: Path | None, reward_metrics: Path | None,
         headline_out: Path,
         findings_out: Path, metrics_out: Path, leaderboard_csv: Path, leaderboard_md: Path, forest_plot: Path,
         rounds_plot: Path, loss_plot: Path, details_dir: Path, report_out: Path) -> None:
    """Measure every model against the references, rank them, write metrics, plots, the report and its details."""
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
    order = [m for m in p.get("evaluate", {}).get("models", {}) if m in answers or m in loglik]
    rank = lambda m: (order.index(m) if m in order else len(order), m)  # noqa: E731
    answers, loglik = ({m: d[m] for m in sorted(d, key=rank)} for d in (answers, loglik))
    for name in cfg.versus + [cfg.headline_opponent]:
        if name not in answers:
            raise ConfigError(f"report.versus / headline_opponent: no answers for model {name!r}; "
                              f"evaluate.models has {sorted(answers)}")
    names = report.Names(cfg)
    found = findings.compute(
        answers, reference_index(eval_records(prepared)), loglik, by_comparison,
        p.get("evaluate", {}).get("comparisons", {}), cfg.versus, load_encoder(p.get("embed", {}).get("model") or PACKAGED),
        cfg.n_boot, cfg.seed, cfg.ci, cfg.rouge_margin, cfg.cosine_margin, 0,  # reference judge: every answered item
        names=names, set_names=names.eval_set)
    write_json(findings_out, report.json_safe(found))
    categories = read_json(rubric_dir / "categories.json") if rubric_dir and (rubric_dir / "categories.json").exists() \
        else []
    logs = plots.find_loss_logs(logs_dir)
    outs = {"report": report_out, "details": details_dir, "csv": leaderboard_csv, "md": leaderboard_md,
            "headline": headline_out, "winrates": metrics_out, "forest": forest_plot, "rounds": rounds_plot,
            "loss": loss_plot}
    report.build_report(by_comparison, found, cfg, outs, order, logs=logs, loss_of=loss_types(p, logs),
                                categories=categories, params=p, defaults=read_params(defaults) if defaults else None,
                                calls=read_counts(counts_dir), models=models,
                                reward=read_json(reward_metrics) if reward_metrics else None)
    click.echo(leaderboard_md.read_text(encoding="utf-8"))
    click.echo(f"wrote {report_out}, {details_dir}/, {leaderboard_csv}, {forest_plot}, {rounds_plot}, {loss_plot}")


if __name__ == "__main__":
    run_stage(main)
