"""Shared fixtures: the real packaged model (built once per session, reused across runs) and a tmp call cache."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Built once and kept outside DVC outs so repeated test runs skip the 80-second GGUF -> HF conversion.
TEST_BASE = ROOT / ".cache" / "test-base"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _build_base() -> Path:
    """models/base for tests: reuse the pipeline's if it is complete, else build one with the real stage script."""
    for candidate in (ROOT / "models" / "base", TEST_BASE):
        if (candidate / "manifest.json").exists() and (candidate / "hf" / "model.safetensors").exists():
            return candidate
    TEST_BASE.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(ROOT / "stages" / "base.py"), "--gguf", str(TEST_BASE / "model.gguf"),
                    "--hf", str(TEST_BASE / "hf"), "--manifest", str(TEST_BASE / "manifest.json")],
                   cwd=ROOT, check=True)
    return TEST_BASE


@pytest.fixture(scope="session")
def base_dir() -> Path:
    """Dir with model.gguf (llama.cpp) and hf/ (transformers) of the packaged gemma-3-270m."""
    return _build_base()


@pytest.fixture(scope="session")
def base_model_dir(base_dir) -> Path:
    """The HF model dir of the packaged base model."""
    return base_dir / "hf"


@pytest.fixture(scope="session")
def base_gguf(base_dir) -> Path:
    return base_dir / "model.gguf"


@pytest.fixture(scope="module")
def adapter(base_model_dir, tmp_path_factory) -> Path:
    """A LoRA with small random B (so it changes the student's answers), saved as the stages save one; no training."""
    import torch

    from teachloop.student.model import LoraConfig, load_student, save_adapter

    torch.manual_seed(0)
    model = load_student(base_model_dir, lora=LoraConfig(r=4, alpha=8, dropout=0.0), trainable=False)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    out = tmp_path_factory.mktemp("adapter") / "sft"
    save_adapter(model, out)
    return out
