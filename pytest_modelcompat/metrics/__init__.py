"""Metrics: how an instance and a run are measured, as pure functions (no torch).

- ``similarity.py``: similarity of a generated text to its target (ROUGE-1 by default), a registry;
- ``flips.py``: per-instance quadrants and the flip metrics of a run (docs/metrics.md);
- ``intervals.py``: Wilson intervals, the exact McNemar test, paired bootstrap intervals;
- ``margins.py``: decision margins and unstable flips (docs/margins.md);
- ``gate.py``: gate keys → checks of those metrics against thresholds.
"""
