"""CITING's rubric categories without a model: the paper's assignment rule on hand-made vectors, k-means on
well-separated blobs, and the llm mode's merge of categories across batches (fake teacher)."""
from __future__ import annotations

import re

import numpy as np

from teachloop.llm import LLM, CallCache
from teachloop.llm.fake import FakeBackend
from teachloop.rubrics import RubricsConfig, assign, categories_by_llm, kmeans


def test_assign_uses_mean_inner_product_not_nearest_member():
    index = {"east": np.array([1.0, 0.0]), "north": np.array([0.0, 1.0]), "mid": np.array([0.8, 0.6])}
    cats = [{"members": ["east", "north"]}, {"members": ["mid"]}, {"members": []}]
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    choice, scores = assign(queries, cats, index)
    # [1, 0]: its nearest member ("east", 1.0) is in category 0, but category 0's mean is (1 + 0) / 2 = .5 < .8
    # [0, 1]: .5 vs .6 -> category 1 again; [-1, 0]: -.5 vs -.8 -> category 0. An empty category never wins.
    np.testing.assert_allclose(scores[:, :2], [[0.5, 0.8], [0.5, 0.6], [-0.5, -0.8]])
    assert np.isneginf(scores[:, 2]).all()
    assert choice.tolist() == [1, 1, 0]


def blobs(seed: int = 0):
    """30 unit vectors in 3 tight, far-apart groups (shuffled), and each vector's true group."""
    rng = np.random.default_rng(seed)
    centres = np.eye(8)[:3]
    truth = rng.permutation(np.repeat([0, 1, 2], 10))
    x = centres[truth] + rng.normal(0, 0.05, (30, 8))
    return x / np.linalg.norm(x, axis=1, keepdims=True), truth


def test_kmeans_recovers_separated_blobs_deterministically():
    x, truth = blobs()
    labels = kmeans(x, 3, seed=11)
    # the same partition as the truth (label names aside), numbered by first appearance
    pairs = set(zip(labels.tolist(), truth.tolist()))
    assert len(pairs) == 3 and len({a for a, _ in pairs}) == 3 and len({b for _, b in pairs}) == 3
    assert labels[0] == 0 and sorted(set(labels.tolist())) == [0, 1, 2]
    assert np.array_equal(kmeans(x, 3, seed=11), labels)
    # more clusters asked for than rows: one per row
    assert sorted(kmeans(x[:4], 8, seed=1).tolist()) == [0, 1, 2, 3]


RECORDS = [{"id": "m0", "instruction": "Compute 2 + 3.", "input": ""},
           {"id": "p0", "instruction": "Write a poem about rain.", "input": ""},
           {"id": "m1", "instruction": "Compute 7 * 6.", "input": ""},
           {"id": "p1", "instruction": "Write a poem about snow.", "input": ""},
           {"id": "m2", "instruction": "Compute 9 - 4.", "input": ""},
           {"id": "x0", "instruction": "Translate 'chat' to English.", "input": ""}]


def sorting_teacher(prompt: str) -> str:
    """Sorts the prompt's numbered tasks: sums under 'Math'/'MATH', poems under 'Poems'/'poems', the rest nowhere.

    The name's case differs between the two batches (the first batch holds a "rain" poem), as a real teacher's may.
    """
    tasks = dict((int(n), text) for n, text in re.findall(r"^(\d+)\. (.*)$", prompt, re.M))
    first = any("rain" in t for t in tasks.values())
    math = [n for n, t in tasks.items() if t.startswith("Compute")]
    poems = [n for n, t in tasks.items() if t.startswith("Write a poem")]
    cats = [{"name": "Math" if first else "MATH", "members": math, "rubric": "1. Correct result. 2. Shows steps."},
            {"name": "Poems" if first else "poems", "members": poems, "rubric": "1. Vivid images. 2. Has rhythm."}]
    return str({"categories": [c for c in cats if c["members"]]}).replace("'", '"')


def test_llm_mode_merges_names_across_batches_and_reports_unsorted(tmp_path):
    backend = FakeBackend(sorting_teacher)
    cats, unsorted = categories_by_llm(RECORDS, RubricsConfig(mode="llm", batch_size=3, attempts=1),
                                       LLM(backend, CallCache(tmp_path)))
    assert backend.calls == 2
    by_name = {c["name"]: c for c in cats}
    assert sorted(by_name) == ["Math", "Poems"]  # "MATH" and "poems" joined the first batch's categories
    assert by_name["Math"]["members"] == ["m0", "m1", "m2"] and by_name["Poems"]["members"] == ["p0", "p1"]
    assert by_name["Math"]["rubric"].startswith("1. Correct result") and len(by_name["Math"]["raw"]) == 2
    assert unsorted == ["x0"]
