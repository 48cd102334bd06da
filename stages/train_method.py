"""Stage `train@METHOD`: LoRA-train a ranked-data method (Tuna_p / Tuna_c / Tuna, RRHF, RAFT, DPO).

    python stages/train_method.py --name tuna_p --prepared data/prepared --base models/base \
        --out models/tuna_p --log metrics/train/tuna_p.tsv
`methods.<name>` in params says which loss, which ranked data and which adapter to continue; the loss's own
section (`tuna`, `rrhf`, `raft`, `dpo`) holds its hyper-parameters; `method_train` the shared training settings.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import click

from teachloop.config import build, load_section, one_of, read_params
from teachloop.data import read_jsonl, write_json
from teachloop.methods import trainers, units
from teachloop.student.train import TrainConfig, train_adapter


@dataclass
class MethodEntry:
    loss: str  # tuna | rrhf | raft | dpo
    data: str  # ranked candidates (.jsonl from a ranking stage) or, for dpo, CITING revisions
    init: str  # adapter to continue from
    train: dict = field(default_factory=dict)  # overrides of method_train for this method

    def validate(self, where: str) -> None:
        one_of(self.loss, ("tuna", "rrhf", "raft", "dpo"), f"{where}.loss")


@dataclass
class TunaSection:
    mix_reference: int = 8  # training records added as MLE-only units (Tuna mixes in original data to regularise)
    seed: int = 9
    loss: trainers.TunaConfig = field(default_factory=trainers.TunaConfig)


def units_and_loss(p: dict, entry: MethodEntry, rows: list[dict], prepared: Path, tcfg: TrainConfig):
    """(training units, counts, make_loss, before) for the entry's loss."""
    if entry.loss == "tuna":
        cfg = load_section(p, "tuna", TunaSection)
        extra = random.Random(cfg.seed).sample(read_jsonl(prepared / "train.jsonl"), cfg.mix_reference)
        got, counts = units.tuna_units(rows, extra_records=extra)
        return got, counts, lambda tok: trainers.tuna_loss_fn(tok, cfg.loss, tcfg.max_len), None
    if entry.loss == "rrhf":
        cfg = load_section(p, "rrhf", trainers.RRHFConfig)
        got, counts = units.rrhf_units(rows, reward=cfg.reward)
        return got, counts, lambda tok: trainers.rrhf_loss_fn(tok, cfg, tcfg.max_len), None
    if entry.loss == "raft":
        got, counts = units.raft_units(rows, load_section(p, "raft", units.RaftConfig))
        return got, counts, lambda tok: trainers.sft_loss_fn(tok, tcfg.max_len), None
    cfg = load_section(p, "dpo", trainers.DPOConfig)
    from_revisions = bool(rows) and "revision" in rows[0]
    got, counts = units.dpo_units_from_revisions(rows) if from_revisions else units.dpo_units(rows)
    before = lambda model, tok, us: trainers.add_reference_logprobs(model, tok, us, tcfg.max_len)  # noqa: E731
    return got, counts, lambda tok: trainers.dpo_loss_fn(tok, cfg, tcfg.max_len), before


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--name", required=True, help="Method name: a key of methods in params.yaml.")
@click.option("--prepared", required=True, type=click.Path(exists=True, path_type=Path), help="data/prepared")
@click.option("--base", "base_dir", required=True, type=click.Path(exists=True, path_type=Path), help="models/base")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Adapter output dir.")
@click.option("--log", "log_path", required=True, type=click.Path(path_type=Path), help="Per-step loss TSV.")
def main(params: str, name: str, prepared: Path, base_dir: Path, out: Path, log_path: Path) -> None:
    """Build the method's units from its ranked data and train its LoRA adapter."""
    p = read_params(params)
    entry = load_section(p, f"methods.{name}", MethodEntry)
    tcfg = build(TrainConfig, {**p["method_train"], **entry.train}, f"method_train + methods.{name}.train")
    got, counts, make_loss, before = units_and_loss(p, entry, read_jsonl(entry.data), prepared, tcfg)
    if not got:
        raise click.ClickException(f"{name}: no usable training units from {entry.data} ({counts}); "
                                   f"check the ranking stage's failures")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    summary = train_adapter(base_dir / "hf", got, make_loss, tcfg, out, init_adapter=entry.init, log_path=log_path,
                            desc=name, before=before)
    write_json(out / "train_summary.json", {**summary, "data": entry.data, "loss": entry.loss, **counts})
    click.echo(f"{name}: {counts}; {summary['steps']} steps in {summary['seconds']} s")


if __name__ == "__main__":
    main()
