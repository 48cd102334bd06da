"""The README stays a five-minute read whose links stay inside the repository (depth lives in docs/)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_is_short_and_links_stay_in_the_repository():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 220
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets, "the README links its docs"
    outside = [t for t in targets if t.startswith(("../", "/")) or "://" in t or "/../" in t]
    assert not outside, f"links leaving the repository: {outside}"
    assert all(t.startswith(("docs/", "#")) or (ROOT / t).exists() for t in targets), targets
