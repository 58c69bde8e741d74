"""Scoring: a stack and a task → predictions, and two sides' predictions → a verdict.

- ``engine.py``: batched, batch-invariant log-likelihoods (packed choice trees) and greedy generation;
- ``predictions.py``: one stack's :class:`Prediction` per instance, per task kind, through the result cache;
- ``baseline.py``: baseline snapshots, an old stack's stored predictions that stand in for it (docs/baseline.md);
- ``evaluate.py``: old side (stack or baseline snapshot) vs new stack → flip metrics, margins and the gate.
"""
