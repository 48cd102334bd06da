"""teachloop: teacher-in-the-loop instruction tuning of a small student LLM (CITING, Tuna, RRHF, RAFT, DPO).

The library is pure and importable; DVC stages in `stages/` call it. See README.md for the architecture.
"""
__version__ = "0.1.0"
