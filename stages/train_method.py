"""Stage `train@METHOD`: LoRA-train a ranked-data method (Tuna_p / Tuna_c / Tuna, RRHF, RAFT, DPO).

    python stages/train_method.py --name NAME --prepared DIR --base HF_DIR --out ADAPTER_DIR --live DIR
(dvc.yaml's train@NAME stages give the real paths)
`methods.<name>` in params says which loss, which ranked data and which adapter to continue; the loss's own
section (`tuna`, `rrhf`, `raft`, `dpo`) holds its hyper-parameters; `method_train` the shared training settings.
Adding a method = a module in teachloop/methods/ with Config, build_units, make_loss (optionally before), one
entry in METHODS, and its params section.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from teachloop import runlog
from teachloop.config import build, load_section, one_of, read_params, run_stage
from teachloop.data import read_jsonl, split_path, write_json
from teachloop.methods import dpo, raft, rrhf, tuna
from teachloop.student.train import TrainConfig, train_adapter

METHODS = {"tuna": tuna, "rrhf": rrhf, "raft": raft, "dpo": dpo}


@dataclass
class MethodEntry:
    loss: str  # tuna | rrhf | raft | dpo: the module, and the params section holding its settings
    data: str  # ranked candidates (.jsonl from a ranking stage) or, for dpo, CITING revisions
    init: str  # adapter to continue from
    train: dict = field(default_factory=dict)  # overrides of method_train for this method

    def validate(self, where: str) -> None:
        one_of(self.loss, tuple(METHODS), f"{where}.loss")


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--name", required=True, help="Method name: a key of methods in params.yaml.")
@click.option("--prepared", required=True, type=click.Path(exists=True, path_type=Path), help="The prepare stage's output dir.")
@click.option("--base", "base_dir", required=True, type=click.Path(exists=True, path_type=Path), help="The base model's HF dir (weights + tokenizer).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Adapter output dir.")
@click.option("--live", "live_dir", required=True, type=click.Path(path_type=Path),
              help="dvclive dir for the per-step training metrics.")
def main(params: str, name: str, prepared: Path, base_dir: Path, out: Path, live_dir: Path) -> None:
    """Build the method's units from its ranked data and train its LoRA adapter."""
    p = read_params(params)
    entry = load_section(p, f"methods.{name}", MethodEntry)
    method = METHODS[entry.loss]
    tcfg = build(TrainConfig, {**p["method_train"], **entry.train}, f"method_train + methods.{name}.train")
    cfg = load_section(p, entry.loss, method.Config)
    units, counts = method.build_units(read_jsonl(entry.data), cfg, read_jsonl(split_path(prepared, "train")))
    if not units:
        raise click.ClickException(f"{name}: no usable training units from {entry.data} ({counts}); "
                                   f"check the ranking stage's failures")
    before = getattr(method, "before", None)
    with runlog.timed(f"train@{name}") as times:
        summary = train_adapter(
            base_dir, units, lambda tok: method.make_loss(tok, cfg, tcfg.max_len, tcfg.row_tokens), tcfg, out,
            init_adapter=entry.init, live_dir=live_dir, desc=name,
            before=before and (lambda model, tok, us, scope: before(model, tok, us, tcfg.max_len, tcfg.row_tokens,
                                                                    scope)),
            lora_key=f"method_train.lora (or methods.{name}.train.lora)", times=times)
    write_json(out / "train_summary.json", {**summary, "data": entry.data, "loss": entry.loss, **counts})
    click.echo(f"{name}: {counts}; {summary['steps']} steps")


if __name__ == "__main__":
    run_stage(main)
