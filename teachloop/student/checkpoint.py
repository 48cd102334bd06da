"""Checkpoints of a training run, kept outside DVC's outputs, so that a killed training stage resumes where it
stopped and ends at the adapter an uninterrupted run would have written.

A checkpoint holds what the next steps depend on: the trainable (LoRA) weights, AdamW's moments, the torch RNG
(LoRA dropout) and the per-step metrics logged so far (replayed into the dvclive dir, whose files DVC removed with
the stage's outputs). The step order and the learning rate are pure functions of the step number and the seed, so
they need no state. Its directory is named by a hash of the run's inputs, as the LLM call cache is: a checkpoint of
other data, settings, base model or starting adapter is never picked up, and an edited params file starts afresh
(the key is the call cache's `request_key` of those inputs).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from ..llm.cache import request_key

DEFAULT_DIR = ".cache/checkpoints"
STATE = "state.pt"
# Settings that change when and where a run saves, not what it computes.
NOT_KEYED = ("save_every",)


def fingerprint(path: str | Path | None) -> list:
    """Each file of a model dir: name, size, and a hash of its first and last MiB.

    Hashing whole multi-GB weight files would add seconds to every stage start; a different model or conversion
    changes a size, a safetensors header (first MiB) or the last tensors' bytes.
    """
    if not path:
        return []
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    out = []
    for f in files:
        size = f.stat().st_size
        digest = hashlib.sha256()
        with f.open("rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                digest.update(fh.read())
        out.append([str(f.relative_to(path)) if path.is_dir() else f.name, size, digest.hexdigest()])
    return out


class Checkpoints:
    """Save, load and clear the checkpoint of one training run (one directory under `root`)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    @classmethod
    def for_run(cls, base_dir, init_adapter, units: list, cfg, desc: str, root: str | Path | None = None) -> "Checkpoints":
        inputs = {"base": fingerprint(base_dir), "init": fingerprint(init_adapter), "units": units, "desc": desc,
                  "train": {k: v for k, v in asdict(cfg).items() if k not in NOT_KEYED}}
        key = request_key(inputs)[:24]
        return cls(Path(root or os.environ.get("TEACHLOOP_CHECKPOINTS", DEFAULT_DIR)) / key)

    def load(self) -> dict | None:
        path = self.dir / STATE
        return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None

    def save(self, state: dict) -> None:
        """Write atomically: a run killed while saving leaves the previous checkpoint intact."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / (STATE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.dir / STATE)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, weights: dict[str, torch.Tensor]) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(weights):
        raise ValueError("checkpoint: its trainable parameters are not the model's; delete the checkpoint dir")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device))


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
